"""The TOML config file and ADBATCH_* typed as the options are, and `adbatch config --show`."""

from __future__ import annotations

import os
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from engine.cli.main import build_parser, main
from engine.cli.options import _records_on_terminal, config_from_args

EXAMPLES = str(Path(__file__).parent.parent / "examples" / "pageviews.jsonl")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param(
            "concurrency = 5.5\n",
            "concurrency: expected a whole number, got 5.5 (a float)",
            id="float-concurrency",
        ),
        pytest.param(
            "endpoint = 5\n", "endpoint: expected a string, got 5 (an integer)", id="int-endpoint"
        ),
        pytest.param(
            'ordered = "yes"\n', "ordered: expected true or false, got 'yes'", id="string-flag"
        ),
        pytest.param(
            'rate = "fast"\n',
            "rate: expected a rate such as 500, 500/s, 30000/m, 1k, 1.5k/s, got 'fast'",
            id="bad-rate",
        ),
        pytest.param(
            'timeout = "2 seconds"\n',
            "timeout: expected a duration such as 2, 2s, 500ms, 1m30s, 1h, got '2 seconds'",
            id="bad-duration",
        ),
        pytest.param(
            "max-line-bytes = [1]\n",
            "max-line-bytes: expected a size such as 1048576, 512k, 8MiB, got [1] (an array)",
            id="array-size",
        ),
        pytest.param(
            "concurency = 3\n",
            "unknown option 'concurency'; did you mean 'concurrency'?",
            id="near-miss",
        ),
        pytest.param(
            "max-line-byte = 3\n",
            "unknown option 'max-line-byte'; did you mean 'max-line-bytes'?",
            id="near-miss-dashed",
        ),
        pytest.param("colour = true\n", "unknown option 'colour'", id="unknown"),
        pytest.param(
            'http-client = "curl"\n',
            "http-client: expected one of http1, session, http2, got 'curl'",
            id="choice",
        ),
        pytest.param(
            "[adbatch]\nworkers = 0\n", "workers: expected at least 1, got 0", id="adbatch-table"
        ),
        pytest.param(
            'no-progress = "yes"\n',
            "no-progress: expected true or false, got 'yes'",
            id="no-progress-string",
        ),
        pytest.param(
            "no-progres = true\n",
            "unknown option 'no-progres'; did you mean 'no-progress'?",
            id="near-no-progress",
        ),
        pytest.param(
            "ordered = { a = 1 }\n",
            "ordered: expected true or false, got {'a': 1} (a table)",
            id="table-value",
        ),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_key(
    toml: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(toml)
    assert main(["run", "--mock", "--config", str(conf), EXAMPLES, "-o", "/dev/null"]) == 2
    err = capsys.readouterr().err
    assert err == f"adbatch: error: config file {conf}: {message}\n"


def test_config_values_take_the_option_grammar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rate = "10/s"` was a TypeError, `timeout = "2s"` refused: now as on the command line."""
    conf = tmp_path / "c.toml"
    out = tmp_path / "o.jsonl"
    conf.write_text(
        'rate = "1k/s"\ntimeout = "2s"\ngrace = "500ms"\nmax-response-bytes = "8MiB"\n'
        f'concurrency = "4"\nworkers = "auto"\nordered = true\noutput = "{out}"\n'
    )
    assert main(["run", "--mock", "--config", str(conf), EXAMPLES]) == 0
    assert len(out.read_bytes().splitlines()) == 40


def _show(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, tuple[str, str]]:
    assert main(["config", "--show", *argv]) == 0
    shown = {}
    for line in capsys.readouterr().out.splitlines():
        setting, _, source = line.partition(" # ")
        name, _, value = setting.partition(" = ")
        shown[name] = (value.strip(), source)
    return shown


def test_config_show_names_each_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('concurrency = 8\ntimeout = "1m"\nrate = 5\n')
    monkeypatch.setenv("ADBATCH_RATE", "30000/m")
    monkeypatch.setenv("ADBATCH_TOKEN", "tok-0123456789abcdef")
    shown = _show(["--config", str(conf), "--timeout", "500ms", "in.jsonl"], capsys)
    assert shown["timeout"] == ("0.5", "option --timeout")  # over the file's 1m
    assert shown["rate"] == ("500.0", "environment ADBATCH_RATE")  # over the file's 5
    assert shown["concurrency"] == ("8", f"file {conf}")
    assert shown["grace"] == ("10.0", "default")
    assert shown["inputs"] == ('["in.jsonl"]', "option INPUT")
    assert shown["token"] == ("[redacted]", "environment ADBATCH_TOKEN")


def test_config_show_never_shows_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("client-secret-4242\n")
    conf = tmp_path / "c.toml"
    conf.write_text('proxy = "http://me:proxy-pass-77@127.0.0.1:3128"\n')
    monkeypatch.setenv("ADBATCH_CLIENT_ID", "my-client")
    argv = ["--config", str(conf), "--client-secret-file", str(secret_file)]
    argv += ["--header", "X-Echo: client-secret-4242"]
    shown = _show(argv, capsys)
    assert shown["client_secret"] == ("[redacted]", "option --client-secret-file")
    assert shown["proxy"] == ('"http://[redacted]@127.0.0.1:3128"', f"file {conf}")
    assert shown["client_id"] == ('"my-client"', "environment ADBATCH_CLIENT_ID")
    text = repr(shown)
    for secret in ("client-secret-4242", "proxy-pass-77"):
        assert secret not in text


def test_config_show_hides_url_credentials_and_header_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADBATCH_TOKEN", "tok-0123456789abcdef")
    argv = ["--endpoint", "https://user:PASSW0RD@example.com/x?key=QSECRET&b"]
    argv += ["--header", "X-Api-Key: KEYSECRET"]
    shown = _show(argv, capsys)
    assert shown["endpoint"][0] == '"https://user:[redacted]@example.com/x?key=[redacted]&b"'
    assert shown["headers"][0] == '["X-Api-Key: [redacted]"]'
    for secret in ("PASSW0RD", "QSECRET", "KEYSECRET"):
        assert secret not in repr(shown)


def test_config_show_still_refuses_a_config_that_cannot_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ADBATCH_TOKEN", raising=False)
    assert main(["config", "--show", "--partner-id", "abc", "--mock"]) == 2
    captured = capsys.readouterr()
    assert 'partner_id = "abc"' in captured.out
    assert captured.err == "adbatch: error: --partner-id must be an integer, got 'abc'\n"


def test_config_needs_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 2
    assert capsys.readouterr().err == "adbatch: error: adbatch config needs --show\n"


@pytest.mark.parametrize("key", ["thresholds", "threshold"])
def test_thresholds_in_either_spelling(
    key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`thresholds = [...]` is documented; `threshold`, the option's own name, works too."""
    conf = tmp_path / "c.toml"
    conf.write_text(f'{key} = ["p50<3600s", "max<1ms"]\n')
    assert main(["run", "--mock", "--config", str(conf), EXAMPLES, "-o", "/dev/null"]) == 4
    err = capsys.readouterr().err
    assert "p50<3600s" in err  # both judged: the second fails
    assert "max<1ms" in err


def test_two_spellings_of_one_key_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('thresholds = ["p50<3600s"]\nthreshold = ["max<1ms"]\n')
    assert main(["run", "--mock", "--config", str(conf), EXAMPLES, "-o", "/dev/null"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"adbatch: error: config file {conf}: 'threshold' is given twice (by two spellings)\n"
    )


@pytest.mark.parametrize("spelling", ["no-progress", "no_progress"])
@pytest.mark.parametrize("value", [True, False])
def test_no_progress_in_a_config_file_turns_the_display_off(
    spelling: str, value: bool, tmp_path: Path
) -> None:
    """`no-progress = true` is the option --no-progress (the display is drawn only on a
    terminal: the terminal is a pty here, as a user's is)."""
    conf = tmp_path / "c.toml"
    conf.write_text(f"{spelling} = {str(value).lower()}\n")
    main_fd, tty_fd = os.openpty()
    try:
        args = build_parser().parse_args(["run", "--mock", "--config", str(conf), EXAMPLES])
        with open(tty_fd, "w", closefd=False) as tty, redirect_stderr(tty):
            config = config_from_args(args)
    finally:
        os.close(main_fd)
        os.close(tty_fd)
    assert config.progress is not value


def test_records_on_a_terminal_by_any_name_turn_the_display_off(tmp_path: Path) -> None:
    """The display draws on stderr's terminal; records sent to a terminal (`-o
    /dev/stdout` on one) would scroll it away: a terminal by any path counts, a file, a
    directory or a FIFO does not (and the FIFO's reader sees no end: it is not opened)."""
    main_fd, tty_fd = os.openpty()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert _records_on_terminal(f"/proc/self/fd/{tty_fd}")
        assert _records_on_terminal(os.ttyname(tty_fd))
        assert not _records_on_terminal(str(tmp_path / "out.jsonl"))
        assert not _records_on_terminal(str(tmp_path))
        assert not _records_on_terminal(os.devnull)
        assert not _records_on_terminal("s3://bucket/out.jsonl")
        assert not _records_on_terminal(str(fifo))
        os.write(os.open(fifo, os.O_WRONLY), b"x")  # the reader still reads what comes
        assert os.read(reader, 1) == b"x"
    finally:
        for fd in (main_fd, tty_fd, reader):
            os.close(fd)
