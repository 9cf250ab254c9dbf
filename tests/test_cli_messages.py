"""The command line's messages, where a user's typo meets them.

- A URL whose scheme is mistyped (`https//u:pw@h`, `u:pw@h`) is shown without what may be
  its password, in the --endpoint / --token-url errors and in `config --show`, as a
  well-formed URL is (core/urls.without_credentials).
- `config --show` without credentials shows the configuration and exits 0, with one note
  on stderr saying how to give them; what would stop a run is still exit 2.
- An ADBATCH_* variable adbatch does not read gets a warning naming the nearest one it
  reads, never its value.
- An option before the command (`adbatch --concurency 5`) names the command's option;
  `--client-secret` there is refused as after the command, and never suggested.
- The refusal of `--header 'Proxy-Authorization: ...'` reads as a sentence.
- `--mock` with an endpoint given (option, environment) warns that it is not used.
- `--dry-run`'s records show the endpoint without its password and query values, the
  event's own query as it would be sent.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from conftest import one_line

from engine.cli.common import say
from engine.cli.main import main
from engine.core.headers import parse_header
from engine.core.urls import credentials, without_credentials
from engine.errors import ConfigError

PASSWORD = "S3cretValue"
TOKEN = "static-test-token"
EVENT = {"id": "a", "event-type": "viewHome", "page-id": "p", "retailer-visitor-id": "v"}


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.upper().startswith("ADBATCH_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "events.jsonl"
    path.write_bytes(orjson.dumps({**EVENT, "criteo-partner-id": 1}) + b"\n")
    return path


# -- a mistyped scheme -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(f"https//gw:{PASSWORD}@h/d", "https//gw:[redacted]@h/d", id="no-colon"),
        pytest.param(f"https:/gw:{PASSWORD}@h/d", "https:/gw:[redacted]@h/d", id="one-slash"),
        pytest.param(f"https:///gw:{PASSWORD}@h/d", "https:///gw:[redacted]@h/d", id="3-slashes"),
        pytest.param(f"gw:{PASSWORD}@h/d", "gw:[redacted]@h/d", id="no-scheme"),
        pytest.param(f"{PASSWORD}@h/d", "[redacted]@h/d", id="no-user"),
        pytest.param(f"ab/{PASSWORD}@h/d", "[redacted]@h/d", id="no-user-a-slash"),
        pytest.param(f"https//gw:p/{PASSWORD}#x@h/d", "https//gw:[redacted]@h/d", id="slash"),
        pytest.param(f"https//gw:p@{PASSWORD}@h/d", "https//gw:[redacted]@h/d", id="at"),
        pytest.param(
            f"gw:{PASSWORD}@h:8080/d?k={PASSWORD}",
            "gw:[redacted]@h:8080/d?k=[redacted]",
            id="port-and-query",
        ),
        pytest.param("file:///tmp/a@b.jsonl", "file:///tmp/a@b.jsonl", id="file-path-kept"),
        pytest.param("https//h/d", "https//h/d", id="no-at-kept"),
    ],
)
def test_a_mistyped_scheme_hides_what_may_be_the_password(url: str, shown: str) -> None:
    assert without_credentials(url) == shown
    hidden = credentials(url)
    assert PASSWORD not in shown
    assert all(secret not in shown for secret in hidden)
    assert (any(PASSWORD in secret for secret in hidden)) == (PASSWORD in url)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        pytest.param(
            ["--endpoint", f"https//gw:{PASSWORD}@gw.example/d"],
            {},
            "--endpoint must be an http(s) URL, got 'https//gw:[redacted]@gw.example/d'",
            id="endpoint",
        ),
        pytest.param(
            [],
            {"ADBATCH_ENDPOINT": f"gw:{PASSWORD}@gw.example/d"},
            "--endpoint must be an http(s) URL, got 'gw:[redacted]@gw.example/d'",
            id="adbatch-endpoint",
        ),
        pytest.param(
            ["--client-id", "c", "--token-url", f"https//id:{PASSWORD}@auth.example/t"],
            {"ADBATCH_CLIENT_SECRET": "client-secret"},
            "--token-url must be an http(s) URL, got 'https//id:[redacted]@auth.example/t'",
            id="token-url",
        ),
    ],
)
def test_url_errors_hide_a_password_behind_a_mistyped_scheme(
    argv: list[str],
    env: dict[str, str],
    message: str,
    events: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    token = [] if "--client-id" in argv else ["--token", TOKEN]
    assert main(["run", *token, *argv, str(events), "-o", "-"]) == 2
    out, err = capsys.readouterr()
    assert one_line(err) == f"adbatch: error: {message}"
    assert PASSWORD not in out + err


def test_config_show_hides_a_password_behind_a_mistyped_scheme(
    events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"https//gw:{PASSWORD}@gw.example/d"
    assert main(["config", "--show", "--token", TOKEN, "--endpoint", endpoint]) == 2
    out, err = capsys.readouterr()
    assert 'endpoint = "https//gw:[redacted]@gw.example/d"' in out
    assert "got 'https//gw:[redacted]@gw.example/d'" in one_line(err)
    assert PASSWORD not in out + err


# -- config --show without credentials ---------------------------------------------------


def test_config_show_without_credentials_shows_them_missing_and_exits_0(
    events: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADBATCH_RATE", "1k/s")  # the example of its own --help
    assert main(["config", "--show", "--timeout", "2s"]) == 0
    out, err = capsys.readouterr()
    assert "rate = 1000.0" in out
    assert "token = (not set)" in out
    line = one_line(err)
    assert line.startswith("adbatch: note: no token set; a run needs one: give --token or ")
    assert "error" not in line


def test_config_show_with_credentials_says_nothing_more(
    events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "--show", "--token", TOKEN]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--endpoint", "ftp://h/d"], "--endpoint must be an http(s) URL", id="url"),
        pytest.param(
            ["--endpoint", "http://example.com/d", "--token", TOKEN],
            "refusing to send the bearer token over plain http://",
            id="plain-http",
        ),
        pytest.param(
            ["--client-id", "c"], "--client-id needs a client secret", id="client-id-alone"
        ),
    ],
)
def test_config_show_still_exits_2_on_what_would_stop_a_run(
    argv: list[str], message: str, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "--show", *argv]) == 2
    out, err = capsys.readouterr()
    assert "endpoint = " in out
    assert message in one_line(err)


def test_a_run_without_credentials_is_still_refused(
    events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(events), "--endpoint", "https://127.0.0.1:9/d"]) == 2
    assert one_line(capsys.readouterr().err).startswith("adbatch: error: no token: give ")


# -- unknown ADBATCH_* variables ---------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "near"),
    [
        pytest.param("ADBATCH_CONCURENCY", "did you mean ADBATCH_CONCURRENCY?", id="typo"),
        pytest.param("adbatch_token", "did you mean ADBATCH_TOKEN?", id="lower-case"),
        pytest.param("ADBATCH_WORKERS", "it reads ADBATCH_CLIENT_ID, ", id="none-near"),
    ],
)
@pytest.mark.parametrize("command", ["run", "config"])
def test_an_unknown_variable_is_named_with_the_nearest_one(
    var: str,
    near: str,
    command: str,
    events: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(var, PASSWORD)
    argv = ["run", "--dry-run", str(events), "-o", os.devnull] if command == "run" else []
    assert main(argv or ["config", "--show", "--token", TOKEN]) == 0
    out, err = capsys.readouterr()
    warning = f"adbatch: warning: {var} is not a variable adbatch reads (ignored); {near}"
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(warning)
    assert PASSWORD not in out + err


@pytest.mark.parametrize("given", ["option", "environment", "none"])
def test_mock_with_an_endpoint_given_says_it_is_not_used(
    given: str, events: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "https://delivery.example/d"
    argv = ["run", "--mock", "--dry-run", str(events), "-o", os.devnull]
    if given == "option":
        argv += ["--endpoint", url]
    elif given == "environment":
        monkeypatch.setenv("ADBATCH_ENDPOINT", url)
    assert main(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    source = {"option": "option --endpoint", "environment": "environment ADBATCH_ENDPOINT"}
    expected = "adbatch: warning: --mock sends every call to the embedded mock: the endpoint from "
    assert warnings == ([f"{expected}{source[given]} is not used"] if given in source else [])


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        pytest.param(
            f"http://gw:{PASSWORD}@127.0.0.1:9/d?apikey={PASSWORD}",
            "http://gw:[redacted]@127.0.0.1:9/d?apikey=[redacted]&",
            id="password-and-query",
        ),
        pytest.param("http://127.0.0.1:9/d", "http://127.0.0.1:9/d?", id="plain"),
    ],
)
def test_dry_run_records_hide_the_endpoint_s_secrets(
    endpoint: str, shown: str, events: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--dry-run", "--token", TOKEN, "--endpoint", endpoint, str(events)]
    assert main(argv) == 0
    out = capfd.readouterr().out
    url = orjson.loads(out)["response"]["url"]
    assert url == shown + "criteo-partner-id=1&retailer-visitor-id=v&event-type=viewHome&page-id=p"
    assert PASSWORD not in out


# -- an option before the command --------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--concurency", "5"],
            "unknown option --concurency; options go after the command: "
            "did you mean adbatch run --concurrency?",
            id="typo",
        ),
        pytest.param(
            ["--concurrency", "5", "run", "x.jsonl"],
            "--concurrency goes after the command: adbatch run --concurrency",
            id="known",
        ),
        pytest.param(
            ["--durration=3s", "load", "x.jsonl"],
            "unknown option --durration; options go after the command: "
            "did you mean adbatch load --duration?",
            id="command-given",
        ),
        pytest.param(
            [f"--tokn={PASSWORD}", "run"],
            "unknown option --tokn; options go after the command: "
            "did you mean adbatch run --token?",
            id="value-never-shown",
        ),
        pytest.param(
            [f"--client-secret={PASSWORD}", "run"],
            "the client secret is not taken on the command line; "
            "use --client-secret-file PATH or ADBATCH_CLIENT_SECRET",
            id="refused-secret",
        ),
        pytest.param(
            [f"--client-secre={PASSWORD}", "run"],
            "unknown option --client-secre; options go after the command: "
            "did you mean adbatch run --client-secret-file?",
            id="refused-secret-never-suggested",
        ),
        pytest.param(
            ["--zzzzzzzz"],
            "unknown option --zzzzzzzz; options go after the command "
            "(adbatch COMMAND --help lists them)",
            id="far-from-any",
        ),
    ],
)
def test_an_option_before_the_command_names_the_commands_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    usage = "usage: adbatch [OPTION ...] COMMAND ..."
    assert err.splitlines() == [usage, f"adbatch: error: {message}"]
    assert PASSWORD not in out + err


@pytest.mark.parametrize("typo", ["--client-secre", "--client_secret"])
def test_a_typo_of_the_refused_secret_option_suggests_the_file(
    typo: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the command too: --client-secret is hidden (it only says it is refused), so
    its typos are pointed to --client-secret-file."""
    with pytest.raises(SystemExit) as exc:
        main(["run", typo, PASSWORD, "events.jsonl"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"adbatch run: error: unknown option {typo}; did you mean --client-secret-file?"
    )
    assert PASSWORD not in err


@pytest.mark.parametrize(
    ("argv", "told"),
    [
        pytest.param(
            ["run", f"--token{PASSWORD}", "x.jsonl"],
            "adbatch run: error: unknown option --token...: write its value after a space "
            "or '=' (--token VALUE)",
            id="after-the-command",
        ),
        pytest.param(
            [f"--client-secret-file{PASSWORD}", "run"],
            "adbatch: error: unknown option --client-secret-file...: write its value after "
            "a space or '=' (--client-secret-file VALUE), after the command: "
            "adbatch run --client-secret-file",
            id="before-the-command",
        ),
        pytest.param(
            ["mock", f"--token{PASSWORD}"],
            "adbatch mock: error: unknown option --token... (adbatch mock takes no --token)",
            id="another-command-s-option",
        ),
        pytest.param(
            ["run", "--orderedX"],
            "adbatch run: error: unknown option --orderedX; did you mean --ordered?",
            id="a-flag-takes-no-value",
        ),
    ],
)
def test_a_value_glued_to_its_option_is_never_shown(
    argv: list[str], told: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--tokenSECRET` (the space forgotten) named the whole word, the secret with it."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == told
    assert PASSWORD not in err


@pytest.mark.parametrize(
    "name", ["--x\x1b]0;PWNED\x07\x1b[2J\nadbatch:FORGED", "--x\u202e\u2028y\tz"]
)
def test_an_unknown_option_s_name_cannot_forge_a_line(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["run", name])
    err = capsys.readouterr().err
    assert err.count("\n") == 2, err  # the usage line, the error line
    assert err.isascii(), err
    assert "\x1b" not in err
    assert "\t" not in err


def test_a_message_is_one_line_whatever_it_quotes(capsys: pytest.CaptureFixture[str]) -> None:
    """A path, a variable's name, a server's words: no line break, tab, separator or
    bidi control reaches the terminal raw (a token endpoint's error_description
    forged a second `adbatch:` line)."""
    say("cannot read input a\nadbatch: 40 events\u2028\u202e\tok")
    err = capsys.readouterr().err
    assert err == "adbatch: cannot read input a\\nadbatch: 40 events\\u2028\\u202e\\tok\n"


# -- a refused header --------------------------------------------------------------------


def test_the_proxy_authorization_refusal_reads_as_a_sentence() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_header("Proxy-Authorization: Basic x")
    assert str(raised.value) == (
        "--header Proxy-Authorization: this header is the proxy's (user:password@ in the "
        "proxy URL); it cannot be set"
    )


@pytest.mark.parametrize(
    ("word", "near"),
    [("--summary-file", "--summary"), ("--proxyy", "--proxy"), ("--timeouts", "--timeout")],
)
def test_a_typo_past_an_option_is_a_typo_not_a_glued_value(
    word: str, near: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["run", word, "x.jsonl"])
    told = f"adbatch run: error: unknown option {word}; did you mean {near}?"
    assert capsys.readouterr().err.splitlines()[-1] == told
