"""The command line: help, usage errors, config file, --mock."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import read_records

from engine.cli.main import build_parser, config_from_args, main


def test_help_lists_options_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in (
        "--concurrency",
        "default: 64",
        "--rate",
        "--ordered",
        "--dry-run",
        "--mock",
        "https://d.us.criteo.com/delivery/retailmedia",
        "ADBATCH_TOKEN",
    ):
        assert text in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["run", "x.jsonl", "--endpoint", "http://127.0.0.1:1/d"], "no token", id="no-token"
        ),
        pytest.param(
            ["run", "--mock", "missing.jsonl"],
            "cannot read input missing.jsonl",
            id="missing-input",
        ),
        pytest.param(
            ["run", "--mock", "--partner-id", "abc", "-"],
            "--partner-id must be an integer",
            id="bad-partner",
        ),
        pytest.param(
            ["run", "--token", "t", "--endpoint", "ftp://x/y", "-"],
            "--endpoint must be an http(s) URL",
            id="bad-endpoint",
        ),
        *(
            pytest.param(
                [cmd, "--token", "t", "--endpoint", f"http://127.0.0.1:{port}/d", "-"],
                f"--endpoint: the port must be 1..65535, got 'http://127.0.0.1:{port}/d'",
                id=f"{cmd}-endpoint-port-{port}",
            )
            for cmd, port in [("run", 99999), ("run", 70000), ("load", 0), ("replay", 99999)]
        ),
        pytest.param(
            ["run", "--token", "t", "--proxy", "http://127.0.0.1:70000", "-"],
            "--proxy: the proxy URL has a bad port (127.0.0.1)",
            id="proxy-port",
        ),
        pytest.param(
            ["run", "--mock", "--config", "nope.toml"],
            "cannot read config file",
            id="missing-config",
        ),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ADBATCH_TOKEN", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert err.count("\n") == 0
    assert "Traceback" not in err


def test_bad_option_value_is_argparse_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--concurrency", "0", "--mock"])
    assert exc.value.code == 2
    assert "expected at least 1" in capsys.readouterr().err


def test_mock_run_over_the_examples_with_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    examples = Path(__file__).parent.parent / "examples"
    config = tmp_path / "adbatch.toml"
    config.write_text('concurrency = 4\nordered = true\noutput = "%s"\n' % (tmp_path / "o.jsonl"))
    assert (
        main(
            [
                "run",
                "--mock",
                "--config",
                str(config),
                str(examples / "pageviews.jsonl"),
                str(examples / "pageviews.csv"),
            ]
        )
        == 0
    )
    records = read_records(tmp_path / "o.jsonl")
    events = len((examples / "pageviews.jsonl").read_bytes().splitlines())
    assert len(records) == 2 * events
    assert [r["seq"] for r in records] == list(range(2 * events))
    assert all(r["status"] == 200 for r in records)
    assert f"{2 * events} events" in capsys.readouterr().err


def test_config_file_rejects_tokens_and_unknown_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('token = "abc"\n')
    assert main(["run", "--mock", "--config", str(config)]) == 2
    assert "keep the token out of config files" in capsys.readouterr().err
    config.write_text("concurency = 3\n")
    assert main(["run", "--mock", "--config", str(config)]) == 2
    assert "unknown option 'concurency'" in capsys.readouterr().err


def test_run_summary_file_holds_the_figures(tmp_path: Path) -> None:
    examples = Path(__file__).parent.parent / "examples"
    summary = tmp_path / "s.json"
    argv = [
        "run",
        "--mock",
        str(examples / "pageviews.jsonl"),
        "-o",
        str(tmp_path / "o.jsonl"),
        "--summary",
        str(summary),
    ]
    assert main(argv) == 0
    data = orjson.loads(summary.read_bytes())
    events = len((examples / "pageviews.jsonl").read_bytes().splitlines())
    assert data["exit_code"] == 0
    assert data["summary"]["events"] == data["summary"]["ok"] == events
    assert data["summary"]["latency_ms"]["p99"] is not None


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        pytest.param([], None, "http1", id="default"),
        pytest.param(["--http-client", "session"], None, "session", id="option"),
        pytest.param([], "session", "session", id="environment"),
        pytest.param(["--http-client", "http1"], "session", "http1", id="option-over-env"),
    ],
)
def test_http_client_choice(
    argv: list[str], env: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env is not None:
        monkeypatch.setenv("ADBATCH_HTTP_CLIENT", env)
    args = build_parser().parse_args(["run", "--dry-run", *argv, "x.jsonl"])
    assert config_from_args(args).http_client == expected


@pytest.mark.parametrize("client", ["http1", "session"])
def test_either_http_client_answers_every_event(client: str, tmp_path: Path) -> None:
    examples = Path(__file__).parent.parent / "examples"
    out = tmp_path / "o.jsonl"
    argv = ["run", "--mock", str(examples / "pageviews.jsonl"), "-o", str(out)]
    assert main([*argv, "--http-client", client]) == 0
    records = read_records(out)
    assert len(records) == len((examples / "pageviews.jsonl").read_bytes().splitlines())
    assert all(r["status"] == 200 and r["response"]["status"] == "OK" for r in records)


def test_unknown_http_client_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADBATCH_HTTP_CLIENT", "curl")
    assert main(["run", "--mock", "--dry-run", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "ADBATCH_HTTP_CLIENT: expected one of http1, session, http2, got 'curl'" in err
    assert err.count("\n") == 1
