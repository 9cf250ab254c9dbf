"""Config-file and ADBATCH_* messages never show a secret (a URL's password or query
values, a header's value, a credential's: engine/core/shown.py), whatever the value's
type or shape: a wrong-typed `proxy = [URL]` used to be echoed whole, password and all."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli.config_file import _keys
from engine.cli.main import main
from engine.cli.options import ENV_VARS
from engine.core.shown import shown_given, shown_stored

EXAMPLES = str(Path(__file__).parent.parent / "examples" / "pageviews.jsonl")
#: Every secret below holds "ZZ", and nothing else any message writes does.
URL = "http://u:ZZPW@127.0.0.1:1/d?sig=ZZQ"


def _said(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


COMMANDS = {
    "run": ["run", "--mock", EXAMPLES, "-o", "/dev/null", "--config"],
    "config-show": ["config", "--show", "--config"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param(
            'proxy = ["http://u:ZZPW1@127.0.0.1:3128"]\n',
            "proxy: expected a string, got ['http://[redacted]@127.0.0.1:3128'] (an array)",
            id="proxy-array",
        ),
        pytest.param(
            f'endpoint = ["{URL}"]\n',
            "endpoint: expected a string, got "
            "['http://u:[redacted]@127.0.0.1:1/d?sig=[redacted]'] (an array)",
            id="endpoint-array",
        ),
        pytest.param(
            'token-url = {u = "http://u:ZZPW4@127.0.0.1/t"}\n',
            "token-url: expected a string, got {'u': 'http://u:[redacted]@127.0.0.1/t'} (a table)",
            id="token-url-table",
        ),
        pytest.param(
            '[storage-option]\naws_secret_access_key = ["ZZSECRET5"]\n',
            "storage-option: expected a string, a number or a boolean for "
            "'aws_secret_access_key', got [redacted] (an array)",
            id="storage-secret-array",
        ),
        pytest.param(
            '[storage-option]\nclient_kwargs = {password = ["ZZPW6"]}\n',
            "storage-option: expected a string, a number or a boolean for "
            "'client_kwargs.password', got [redacted] (an array)",
            id="storage-nested-table",
        ),
        pytest.param(
            'storage-option = ["aws_secret_access_key=ZZSECRET7", 1]\n',
            "storage-option: expected a string or an array of strings, got "
            "['aws_secret_access_key=[redacted]', 1] (an array)",
            id="storage-array-mixed",
        ),
        pytest.param(
            f'storage-option = ["{URL}"]\n',
            "storage-option: expected KEY=VALUE with KEY a name such as endpoint_url or "
            "client_kwargs.region_name, got [redacted]",
            id="storage-url-as-key",
        ),
        pytest.param(
            'header = ["X-Api-Key: ZZKEY8", 5]\n',
            "header: expected a string or an array of strings, got "
            "['X-Api-Key: [redacted]', 5] (an array)",
            id="header-array-mixed",
        ),
        pytest.param(
            'header = {X-Api-Key = "ZZKEY9"}\n',
            "header: expected a string or an array of strings, got "
            "{'X-Api-Key': '[redacted]'} (a table)",
            id="header-table",
        ),
        pytest.param(
            f'rate = "{URL}"\n',
            "rate: expected a rate such as 500, 500/s, 1k, got "
            "'http://u:[redacted]@127.0.0.1:1/d?sig=[redacted]'",
            id="bad-value-url",
        ),
        pytest.param(
            f'partner-id = "{URL}"\n',
            "partner-id: expected an integer, got "
            "'http://u:[redacted]@127.0.0.1:1/d?sig=[redacted]'",
            id="partner-id-url",
        ),
        pytest.param(
            f'thresholds = ["{URL}"]\n',
            "thresholds: expected METRIC OP VALUE such as p99<250ms, got "
            "['http://u:[redacted]@127.0.0.1:1/d?sig=[redacted]'] (an array)",
            id="threshold-url",
        ),
    ],
)
def test_a_config_file_message_hides_the_secret(
    toml: str,
    message: str,
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ADBATCH_TOKEN", "mock-token-0123456789")
    conf = tmp_path / "c.toml"
    conf.write_text(toml)
    code, out, err = _said([*COMMANDS[command], str(conf)], capsys)
    assert (code, out) == (2, "")
    assert err == f"adbatch: error: config file {conf}: {message}\n"
    assert "ZZ" not in err


#: A value of every TOML shape holding secrets, for every key a config file takes.
SHAPES = {
    "string": f'"{URL}"',
    "array": f'["{URL}"]',
    "array-mixed": f'["{URL}", 1]',
    "array-nested": f'[["{URL}"]]',
    "table": f'{{u = "{URL}", password = "ZZT"}}',
    "table-nested": f'{{a = {{token = "ZZT", u = ["{URL}"]}}, secret = 1.5}}',
}


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_no_config_key_shows_a_secret_in_any_shape(
    shape: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config --show` types, shows, then validates: each key, the secrets in each shape."""
    monkeypatch.setenv("ADBATCH_TOKEN", "mock-token-0123456789")
    conf = tmp_path / "c.toml"
    keys = [*_keys(True), *_keys(False), "storage-option"]
    leaks = []
    for key in dict.fromkeys(keys):
        conf.write_text(f"{key} = {SHAPES[shape]}\n")
        code, out, err = _said(["config", "--show", "--config", str(conf)], capsys)
        assert code in (0, 2), (key, err)
        assert "Traceback" not in err
        leaks += [(key, line) for line in (out + err).splitlines() if "ZZ" in line]
    assert leaks == []


@pytest.mark.parametrize("value", [URL, "ftp://u:ZZPW@h/x?sig=ZZQ", "http://u:ZZPW@h\x01/?a=ZZQ"])
@pytest.mark.parametrize("command", ["run", "config-show"])
def test_no_variable_shows_a_secret(
    value: str,
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each ADBATCH_* (but the token's and the client id's) holding a URL with
    credentials: as the value of a wrong type or form, or one that runs."""
    argv = COMMANDS[command][:-1]
    monkeypatch.setenv("ADBATCH_TOKEN", "mock-token-0123456789")
    leaks = []
    for name, var in ENV_VARS.items():
        if name in ("token", "client_id"):
            continue  # the token is the run's; the client id is not a secret
        with monkeypatch.context() as env:
            env.setenv(var, value)
            code, out, err = _said(argv, capsys)
        assert code in (0, 2), (var, err)
        assert "Traceback" not in err
        leaks += [(var, line) for line in (out + err).splitlines() if "ZZ" in line]
    assert leaks == []


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        pytest.param("proxy", ["http://u:p@h:1"], ["http://[redacted]@h:1"], id="proxy"),
        pytest.param("proxy", ["u:p@h:x:y"], ["[redacted]"], id="proxy-unreadable"),
        pytest.param("endpoint", {"a": [URL]}, {"a": [URL.replace("ZZPW", "[redacted]")
                     .replace("ZZQ", "[redacted]")]}, id="endpoint-nested"),
        pytest.param("output", {"password": "p", "x": 1}, {"password": "[redacted]", "x": 1},
                     id="secret-named-entry"),
        pytest.param("token", [1], "[redacted]", id="token"),
        pytest.param("client_secret", {"a": 1}, "[redacted]", id="client-secret"),
        pytest.param("headers", ["A: b", "c"], ["A: [redacted]", "[redacted]"], id="headers"),
        pytest.param("storage_options", ["anon=true", "key=k", "k"],
                     ["anon=true", "key=[redacted]", "[redacted]"], id="storage-texts"),
        pytest.param("storage_options", {"c": {"region": ["x"], "sas": "y"}},
                     {"c": {"region": ["x"], "sas": "[redacted]"}}, id="storage-table"),
        pytest.param("rate", [1.5, True, "1k"], [1.5, True, "1k"], id="plain"),
    ],
)  # fmt: skip
def test_shown_given(name: str, value: object, shown: object) -> None:
    assert shown_given(name, value) == shown


def test_shown_stored_goes_by_the_dotted_key() -> None:
    assert shown_stored("client_kwargs.password", ["p"]) == "[redacted]"
    assert shown_stored("client_kwargs", {"aws_session_token": "t"}) == {
        "aws_session_token": "[redacted]"
    }
    assert shown_stored("endpoint_url", "https://u:p@h/") == "https://u:[redacted]@h/"
