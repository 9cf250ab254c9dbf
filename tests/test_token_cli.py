"""Client credentials on the command line: options, environment, errors, exit codes."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from conftest import read_records

from engine.cli import main as cli
from engine.config import DEFAULT_TOKEN_URL, Config
from engine.mock import MockConfig, running_mock

ROOT = Path(__file__).resolve().parent.parent
EVENT = {
    "criteo-partner-id": 12345,
    "retailer-visitor-id": "rv-1",
    "event-type": "viewHome",
    "page-id": "viewHome_API_desktop",
}
ENV_NAMES = (
    "ADBATCH_TOKEN",
    "ADBATCH_CLIENT_ID",
    "ADBATCH_CLIENT_SECRET",
    "ADBATCH_TOKEN_URL",
    "ADBATCH_ENDPOINT",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def config_of(argv: list[str]) -> Config:
    args = cli.build_parser().parse_args(["run", *argv])
    return cli.config_from_args(args)


def test_client_credentials_from_options(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    config = config_of(
        ["--client-id", "cid", "--client-secret-file", str(secret), "--token-wait", "5"]
    )
    assert config.client_id == "cid"
    assert config.client_secret == "s3cr3t"
    assert config.token_url == DEFAULT_TOKEN_URL
    assert config.token_wait == 5.0
    assert config.dynamic_tokens
    assert "s3cr3t" not in repr(config)


def test_client_credentials_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADBATCH_CLIENT_ID", "env-id")
    monkeypatch.setenv("ADBATCH_CLIENT_SECRET", "env-secret")
    monkeypatch.setenv("ADBATCH_TOKEN_URL", "http://127.0.0.1:9/oauth2/token")
    config = config_of([])
    assert (config.client_id, config.client_secret) == ("env-id", "env-secret")
    assert config.token_url == "http://127.0.0.1:9/oauth2/token"


def test_secret_file_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADBATCH_CLIENT_SECRET", "env-secret")
    secret = tmp_path / "secret"
    secret.write_text("file-secret")
    config = config_of(["--client-id", "x", "--client-secret-file", str(secret)])
    assert config.client_secret == "file-secret"


@pytest.mark.parametrize("option", ["--client-secret", "--client-secret=", "--client-sec"])
def test_no_secret_on_argv(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [option + "s3cr3t"] if option.endswith("=") else [option, "s3cr3t"]
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--client-id", "c", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "s3cr3t" not in err
    if option.startswith("--client-secret"):
        assert "the client secret is not taken on the command line" in err
    else:  # no prefix matching: an unknown option, never taken as a file name
        assert "unknown option --client-sec" in err


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        pytest.param(
            ["--token", "t", "--client-id", "c"],
            {"ADBATCH_CLIENT_SECRET": "s"},
            "give a static token (--token, --token-file, ADBATCH_TOKEN) or client "
            "credentials (--client-id, ADBATCH_CLIENT_ID), not both",
            id="both-kinds",
        ),
        pytest.param(
            [],
            {"ADBATCH_TOKEN": "t", "ADBATCH_CLIENT_ID": "c", "ADBATCH_CLIENT_SECRET": "s"},
            "give a static token (--token, --token-file, ADBATCH_TOKEN) or client "
            "credentials (--client-id, ADBATCH_CLIENT_ID), not both",
            id="both-kinds-from-env",
        ),
        pytest.param(
            ["--client-id", "c"],
            {},
            "--client-id needs a client secret: --client-secret-file PATH or ADBATCH_CLIENT_SECRET",
            id="id-without-secret",
        ),
        pytest.param(
            [],
            {"ADBATCH_CLIENT_SECRET": "s"},
            "a client secret needs --client-id (or ADBATCH_CLIENT_ID)",
            id="secret-without-id",
        ),
        pytest.param(
            ["--client-id", "c", "--token-url", "ftp://x/token"],
            {"ADBATCH_CLIENT_SECRET": "s"},
            "--token-url must be an http(s) URL, got 'ftp://x/token'",
            id="bad-token-url",
        ),
        pytest.param(
            ["--client-id", "c", "--token-url", "https://auth.example.com:70000/token"],
            {"ADBATCH_CLIENT_SECRET": "s"},
            "--token-url: the port must be 1..65535, got 'https://auth.example.com:70000/token'",
            id="token-url-port",
        ),
        pytest.param(
            ["--client-id", "c", "--token-url", "http://auth.example.com/oauth2/token"],
            {"ADBATCH_CLIENT_SECRET": "s"},
            "refusing to send the client secret over plain http:// to auth.example.com; "
            "use https://, or --allow-insecure if you really mean it",
            id="secret-over-plain-http",
        ),
        pytest.param(
            [],
            {},
            "no token: give --token or ADBATCH_TOKEN, or --client-id with "
            "--client-secret-file or ADBATCH_CLIENT_SECRET, or use --mock to try "
            "adbatch on the embedded mock server",
            id="nothing",
        ),
    ],
)
def test_credential_usage_errors(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"adbatch: error: {message}\n"
    assert "s3cr3t" not in err


def test_token_wait_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--token", "t", "--token-wait", "0"])
    assert info.value.code == 2
    assert "--token-wait" in capsys.readouterr().err


def test_missing_secret_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert cli.main(["run", "--client-id", "c", "--client-secret-file", str(missing)]) == 2
    assert capsys.readouterr().err.startswith(
        f"adbatch: error: cannot read client secret file {missing}: "
    )


def test_secret_not_accepted_in_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "adbatch.toml"
    toml.write_text('client-id = "c"\nclient-secret = "s3cr3t"\n')
    assert cli.main(["run", "--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "keep the client secret out of config files" in err
    assert "s3cr3t" not in err


async def run_cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    full_env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.update(env or {})
    start = time.monotonic()
    proc = await anyio.run_process(
        [sys.executable, "-m", "engine", "run", "--no-progress", *argv],
        cwd=ROOT,
        env=full_env,
        check=False,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode is not None
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode(), elapsed


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["file", "env"])
async def test_wrong_secret_exits_3_fast_before_any_call(
    how: str, tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    secret = "wr0ng-s3cret-7f1e"
    events = write_jsonl([EVENT] * 5)
    out = tmp_path / "out.jsonl"
    async with running_mock() as mock:
        argv = [
            "--endpoint",
            mock.delivery_url,
            "--token-url",
            mock.token_url,
            "--client-id",
            "mock-client",
            "-o",
            str(out),
            str(events),
        ]
        env = {}
        if how == "file":
            (tmp_path / "secret").write_text(secret + "\n")
            argv += ["--client-secret-file", str(tmp_path / "secret")]
        else:
            env["ADBATCH_CLIENT_SECRET"] = secret
        code, stdout, stderr, elapsed = await run_cli(*argv, env=env)
        state = mock.state
    assert code == 3
    assert elapsed < 10  # interpreter start included; no retrying of refused credentials
    assert state.delivery_requests == 0
    assert state.token_requests == 1
    assert stderr == (
        f"adbatch: error: token endpoint {mock.token_url} refused the client credentials: "
        "HTTP 401 invalid_client (Client authentication failed)\n"
    )
    output = out.read_bytes() if out.exists() else b""
    for text in (stdout, stderr, output.decode()):
        assert secret not in text


@pytest.mark.slow
@pytest.mark.anyio
async def test_token_endpoint_down_exits_3_after_the_wait(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    events = write_jsonl([EVENT])
    async with running_mock(MockConfig(token_down=True)) as mock:
        code, _, stderr, _ = await run_cli(
            "--endpoint",
            mock.delivery_url,
            "--token-url",
            mock.token_url,
            "--client-id",
            "mock-client",
            "--token-wait",
            "0.5",
            "-o",
            str(tmp_path / "out.jsonl"),
            str(events),
            env={"ADBATCH_CLIENT_SECRET": "mock-secret"},
        )
        state = mock.state
    assert code == 3
    assert state.delivery_requests == 0
    assert state.token_requests >= 2
    assert stderr == (
        f"adbatch: error: token endpoint {mock.token_url} gave no token within 0.5s "
        "(--token-wait): HTTP 503 temporarily_unavailable\n"
    )


@pytest.mark.anyio
async def test_good_credentials_run_and_report_tokens(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    events = write_jsonl([EVENT] * 5)
    out = tmp_path / "out.jsonl"
    async with running_mock() as mock:
        code, stdout, stderr, _ = await run_cli(
            "--endpoint",
            mock.delivery_url,
            "--token-url",
            mock.token_url,
            "--client-id",
            "mock-client",
            "-o",
            str(out),
            str(events),
            env={"ADBATCH_CLIENT_SECRET": "mock-secret"},
        )
    assert code == 0, stderr
    assert stdout == ""
    assert "5 ok" in stderr
    assert "; tokens: 1 fetched (0 renewals), 0 failed, 0 calls waited" in stderr
    records = read_records(out)
    assert [r["status"] for r in records] == [200] * 5
    assert b"mock-secret" not in out.read_bytes()
