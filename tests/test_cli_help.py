"""The command line helps with typos: --version, no prefix matching, "did you mean"."""

from __future__ import annotations

import pytest

from engine.cli.main import main
from engine.version import __version__

COMMANDS = ["run", "merge", "mock", "load", "replay", "report"]


@pytest.mark.parametrize("argv", [[], *([c] for c in COMMANDS)], ids=["top", *COMMANDS])
def test_version_prints_the_version(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"adbatch {__version__}\n"


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        pytest.param(["run", "--rat", "5", "--mock", "x.jsonl"], "run", id="run"),
        pytest.param(["load", "--rat", "5", "--mock", "x.jsonl"], "load", id="load"),
        pytest.param(["replay", "--spee", "5", "--mock", "x.log"], "replay", id="replay"),
        pytest.param(["mock", "--por", "0"], "mock", id="mock"),
        pytest.param(["report", "--htm", "x.html", "out.jsonl"], "report", id="report"),
    ],
)
def test_no_prefix_matching(
    argv: list[str], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"adbatch {command}: error: unknown option {argv[1]}" in err


@pytest.mark.parametrize(
    ("argv", "named", "near"),
    [
        pytest.param(["run", "x.jsonl", "--tokn=S3cretValue"], "--tokn", "--token", id="tokn"),
        pytest.param(["run", "x.jsonl", "--TOKEN=S3cretValue"], "--TOKEN", "--token", id="TOKEN"),
        pytest.param(
            ["run", "x.jsonl", "--client-secretS3cretValue"],
            "--client-secret",
            None,
            id="secret-glued",
        ),
        pytest.param(
            ["config", "--show", "--tokne=S3cretValue"], "--tokne", "--token", id="config"
        ),
    ],
)
def test_a_mistyped_option_s_value_is_never_printed(
    argv: list[str], named: str, near: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--tokn=VALUE` is a mistyped --token: the error names the option, never the value
    (a secret)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "S3cretValue" not in err
    if named == "--client-secret":  # a value glued to it: its refusal, never the value
        assert "the client secret is not taken on the command line" in err
        return
    assert f"unknown option {named}" in err
    if near is not None:
        assert f"did you mean {near}?" in err


@pytest.mark.parametrize(
    ("argv", "usage", "suggestion"),
    [
        pytest.param(
            ["run", "--concurency", "5", "--mock", "x.jsonl"],
            "usage: adbatch run [OPTION ...] [INPUT ...]",
            "did you mean --concurrency?",
            id="run",
        ),
        pytest.param(
            ["load", "--mock", "x.jsonl", "--durration=3s"],
            "usage: adbatch load [OPTION ...] [INPUT ...]",
            "did you mean --duration?",
            id="load-with-equals",
        ),
        pytest.param(
            ["merge", "-o", "m.jsonl", "a", "--outptu"],
            "usage: adbatch merge [OPTION ...] PART [PART ...]",
            "did you mean --output?",
            id="merge",
        ),
        pytest.param(
            ["mock", "--latncy", "1"],
            "usage: adbatch mock [OPTION ...]",
            "did you mean --latency?",
            id="mock",
        ),
    ],
)
def test_unknown_option_gets_the_commands_usage_and_a_suggestion(
    argv: list[str], usage: str, suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == usage
    assert lines[1].endswith(suggestion)
    assert len(lines) == 2


def test_an_unknown_option_far_from_any_gets_no_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--zzzzzzzz", "--mock"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown option --zzzzzzzz" in err
    assert "did you mean" not in err


def test_client_secret_on_the_command_line_is_still_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Without prefix matching --client-secret is its own option, refused with its message
    # (never taken as --client-secret-file, never echoed).
    with pytest.raises(SystemExit) as exc:
        main(["run", "--client-id", "me", "--client-secret", "s3cr3t", "--mock"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "the client secret is not taken on the command line" in err
    assert "s3cr3t" not in err
