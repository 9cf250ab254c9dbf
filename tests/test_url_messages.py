"""URLs in messages, where a user meets them on the command line.

- A URL that cannot be read (an unclosed `[`: urlsplit's and yarl's "Invalid IPv6 URL")
  is one line and exit 2, naming where it came from, wherever it is given: --endpoint,
  --token-url, --proxy, an input URL, ADBATCH_ENDPOINT, HTTPS_PROXY/HTTP_PROXY.
- A message never shows an endpoint's or a token URL's password or query values (the
  --endpoint and --token-url errors, the run's stops (unreachable, TLS) on stderr and in
  --summary), as `config --show` does not.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import one_line
from tls_pki import make_pki

from engine.cli.main import main

PASSWORD, QUERY_VALUE = "S3cretValue", "Q5ecretQuery"
EVENT = {"id": "a", "event-type": "viewHome", "page-id": "p", "retailer-visitor-id": "v"}
TOKEN = "static-test-token"
UNREADABLE = "is not a valid URL: its host cannot be read"


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("ADBATCH_TOKEN", "ADBATCH_ENDPOINT", "ADBATCH_CLIENT_ID", "ADBATCH_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    for name in ("https_proxy", "http_proxy", "all_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "events.jsonl"
    path.write_bytes(orjson.dumps({**EVENT, "criteo-partner-id": 1}) + b"\n")
    return path


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port bound but not listening: every connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _credentials(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A static token, or (with --client-id in `argv`) a client secret from the environment."""
    if "--client-id" in argv:
        monkeypatch.setenv("ADBATCH_CLIENT_SECRET", "client-secret")
        return []
    return ["--token", TOKEN]


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        pytest.param(["--endpoint", "http://u:p@[::1/x"], {}, "--endpoint", id="endpoint"),
        pytest.param(["--endpoint", "http://[x/x"], {}, "--endpoint", id="endpoint-x"),
        pytest.param(
            [], {"ADBATCH_ENDPOINT": "https://[::1/x"}, "--endpoint", id="adbatch-endpoint"
        ),
        pytest.param(["--proxy", "http://[::1"], {}, "--proxy", id="proxy"),
        pytest.param(
            ["--endpoint", "https://127.0.0.1:9/x"],
            {"HTTPS_PROXY": "http://[::1"},
            "HTTPS_PROXY",
            id="https-proxy-variable",
        ),
        pytest.param(
            ["--endpoint", "http://127.0.0.1:9/x"],
            {"HTTP_PROXY": "http://u:p@[::1:3128"},
            "HTTP_PROXY",
            id="http-proxy-variable",
        ),
        pytest.param(
            ["--client-id", "c", "--token-url", "http://[::1/token"],
            {},
            "--token-url",
            id="token-url",
        ),
        *(
            pytest.param(
                ["--endpoint", "http://127.0.0.1:9/x", f"{scheme}://[::1/in.jsonl"],
                {},
                f"input {scheme}://...",
                id=f"input-{scheme}",
            )
            for scheme in ("http", "file", "s3")
        ),
    ],
)
def test_an_unclosed_bracket_is_one_line_exit_2(
    argv: list[str],
    env: dict[str, str],
    named: str,
    events: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    token = _credentials(argv, monkeypatch)
    assert main(["run", *token, *argv, str(events), "-o", "-"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert one_line(err) == (
        f"adbatch: error: {named} {UNREADABLE} (a '[' must close with ']' around an IPv6 address)"
    )


def test_config_show_with_an_unreadable_endpoint(
    events: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADBATCH_ENDPOINT", f"http://u:{PASSWORD}@[::1/x")
    assert main(["config", "--show", "--token", TOKEN, str(events)]) == 2
    out, err = capsys.readouterr()
    assert 'endpoint = "[redacted]"' in out
    assert UNREADABLE in one_line(err)
    assert PASSWORD not in out + err


def test_config_show_with_a_password_that_ends_the_host_part(
    events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"https://u:pa#{PASSWORD}@h/d"
    # (it is no valid endpoint: its port reads as "pa", exit 2, the values shown anyway)
    assert main(["config", "--show", "--token", TOKEN, "--endpoint", endpoint, str(events)]) == 2
    out, err = capsys.readouterr()
    assert 'endpoint = "https://[redacted]@h/d"' in out
    assert "got 'https://[redacted]@h/d'" in one_line(err)
    assert PASSWORD not in out + err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--endpoint", f"http://u:{PASSWORD}@h:99999/x?k={QUERY_VALUE}"],
            "--endpoint: the port must be 1..65535, got "
            "'http://u:[redacted]@h:99999/x?k=[redacted]'",
            id="endpoint-port",
        ),
        pytest.param(
            ["--endpoint", f"ftp://u:{PASSWORD}@h/x?k={QUERY_VALUE}"],
            "--endpoint must be an http(s) URL, got 'ftp://u:[redacted]@h/x?k=[redacted]'",
            id="endpoint-scheme",
        ),
        pytest.param(
            ["--client-id", "c", "--token-url", f"https://u:{PASSWORD}@h:0/t?k={QUERY_VALUE}"],
            "--token-url: the port must be 1..65535, got 'https://u:[redacted]@h:0/t?k=[redacted]'",
            id="token-url-port",
        ),
        pytest.param(
            ["--client-id", "c", "--token-url", f"ftp://u:{PASSWORD}@h/t?k={QUERY_VALUE}"],
            "--token-url must be an http(s) URL, got 'ftp://u:[redacted]@h/t?k=[redacted]'",
            id="token-url-scheme",
        ),
        pytest.param(  # the query would follow the fragment and never be sent
            ["--endpoint", f"https://u:{PASSWORD}@h/d#{QUERY_VALUE}"],
            "--endpoint must not hold a '#' (a fragment: the query would follow it and "
            "never reach the server; write a '#' in a password as %23), got "
            "'https://u:[redacted]@h/d#[redacted]'",
            id="endpoint-fragment",
        ),
        # A password holding '#', '/' or '?' (not percent-encoded) ends the host part
        # early: what reads as its port is the password's start, the rest looks a path.
        *(
            pytest.param(
                ["--endpoint", f"https://u:pa{mark}{PASSWORD}@127.0.0.1/d?k={QUERY_VALUE}"],
                "--endpoint: the port must be 1..65535, got "
                "'https://[redacted]@127.0.0.1/d?k=[redacted]'",
                id=f"password-holding-{name}",
            )
            for mark, name in (("#", "hash"), ("/", "slash"), ("?", "question-mark"))
        ),
    ],
)
def test_url_errors_hide_the_password_and_query_values(
    argv: list[str],
    message: str,
    events: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = _credentials(argv, monkeypatch)
    assert main(["run", *token, *argv, str(events), "-o", "-"]) == 2
    out, err = capsys.readouterr()
    assert one_line(err) == f"adbatch: error: {message}"
    assert PASSWORD not in out + err
    assert QUERY_VALUE not in out + err


def test_the_unreachable_stop_hides_the_password_and_query_values(
    events: Path, refusing_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"http://u:{PASSWORD}@127.0.0.1:{refusing_port}/x?apikey={QUERY_VALUE}"
    summary = tmp_path / "summary.json"
    argv = ["run", "--token", TOKEN, "--endpoint", endpoint, "--retries", "0"]
    assert (
        main([*argv, str(events), "-o", str(tmp_path / "out.jsonl"), "--summary", str(summary)])
        == 3
    )
    shown = f"http://u:[redacted]@127.0.0.1:{refusing_port}/x?apikey=[redacted]"
    _stopped_saying(f"cannot reach the delivery endpoint {shown} (", capsys, summary)


def _stopped_saying(words: str, capsys: pytest.CaptureFixture[str], summary: Path) -> None:
    """The stop says `words` on stderr and in --summary, and no password or query value
    anywhere, with no traceback."""
    out, err = capsys.readouterr()
    assert words in err
    assert "Traceback" not in err
    written = summary.read_text()
    assert words in written
    for text in (out, err, written):
        assert PASSWORD not in text
        assert QUERY_VALUE not in text


@pytest.fixture
def untrusted_tls(tmp_path: Path) -> Iterator[int]:
    """A loopback TLS listener whose certificate no CA here trusts (the test CA's)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing")
    pki = make_pki(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.good, pki.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # the accept timed out: look at `done` again
                continue
            with conn:
                conn.settimeout(5)
                try:
                    context.wrap_socket(conn, server_side=True).close()
                except OSError:  # the client refuses the certificate: the point
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join()
        listener.close()


@pytest.mark.slow  # makes a PKI with openssl
def test_the_tls_stop_hides_the_password_and_query_values(
    events: Path, untrusted_tls: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"https://u:{PASSWORD}@127.0.0.1:{untrusted_tls}/x?apikey={QUERY_VALUE}"
    summary = tmp_path / "summary.json"
    argv = ["run", "--token", TOKEN, "--endpoint", endpoint, "-o", str(tmp_path / "out.jsonl")]
    assert main([*argv, "--summary", str(summary), str(events)]) == 3
    shown = f"https://u:[redacted]@127.0.0.1:{untrusted_tls}/x?apikey=[redacted]"
    _stopped_saying(f"(delivery endpoint {shown})", capsys, summary)
