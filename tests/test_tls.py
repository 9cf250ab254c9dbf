"""TLS against real servers: nginx with a CA this test makes with `openssl`, and
`openssl s_server` for the handshake alerts nginx never sends.

- Each certificate failure (hostname mismatch, self-signed, unknown issuer, expired) and
  each handshake alert (no client certificate, one from a CA the server does not trust;
  after a TLS 1.3 handshake and during a TLS 1.2 one) is a `tls` record that names it
  on one line, for every client (http2: the same line as http1's, word for word).
- `--cacert` and `--client-cert`/`--client-key` work for delivery and token calls.
- A tls record stops the run at once (exit 3, one line suggesting --cacert), with and
  without --workers 2, --http2 too, for run and load; --resume with --cacert then sends
  the rest.
- A TLS file that cannot be used is exit 2, one line naming it.

nginx answers a missing client certificate with HTTP 400 ("No required SSL certificate
was sent"), after the handshake, never with an alert: that case is a 400 record.
nginx offers HTTP/2 (ALPN) on every listener: the http2 client's calls are HTTP/2.0 in
its log (`openssl s_server` speaks no HTTP/2; the alerts come before ALPN matters).
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import exactly_once, read_records
from nginx_tls import NginxTls, nginx, nginx_tls
from tls_pki import Pki, make_pki

from engine.cli.main import main
from engine.core.query import Request
from engine.net.tls import client_context
from engine.net.token_client import TokenClient
from engine.net.transport import open_transport

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing"),
    pytest.mark.slow,  # end to end: real servers and CLI runs, seconds in all (CI runs -m slow)
]

#: http2 when its extra is installed (else its cases are not collected; test_http2 says so).
HTTP2 = all(importlib.util.find_spec(m) is not None for m in ("httpx", "h2"))
CLIENTS = ("http1", "session", *(("http2",) if HTTP2 else ()))
NEEDS_HTTP2 = pytest.mark.skipif(not HTTP2, reason="httpx, h2 missing: pip install '.[http2]'")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxTls]:
    if nginx() is None:
        pytest.skip("nginx is not installed (.ci/run: apt-get install nginx)")
    with nginx_tls(pki, tmp_path_factory.mktemp("nginx")) as running:
        yield running


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=["tls1_3", "tls1_2"])
def s_server(request: pytest.FixtureRequest, pki: Pki) -> Iterator[str]:
    """`openssl s_server` wanting a client certificate from the test CA: it ends a
    handshake without one (or with a stranger's) with an alert. Its URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            "openssl",
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-www",
            "-quiet",
            "-cert",
            pki.good,
            "-key",
            pki.server_key,
            "-CAfile",
            pki.ca,
            "-Verify",
            "1",
            "-verify_return_error",
            f"-{request.param}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, "s_server died"
                assert time.monotonic() < deadline, "s_server does not listen"
                time.sleep(0.02)
        yield f"https://127.0.0.1:{port}/delivery/retailmedia"
    finally:
        proc.terminate()
        proc.wait(5)


async def _send(client: str, url: str, **tls: str | None) -> tuple[int | None, str, str | None]:
    """One call to `url`: (status, body or error, error_kind)."""
    # http2's context is its own (httpcore sets ALPN h2 on it), as open_run makes it.
    make = client_context.__wrapped__ if client == "http2" else client_context
    context = make(**{k: str(v) if v else None for k, v in tls.items()})
    async with open_transport(concurrency=1, timeout=5.0, client=client, tls=context) as t:
        resp = await t.send(Request(url, {}), None)
    return resp.status, resp.error or resp.body.decode(), resp.error_kind


# -- each failure, named ------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    ("name", "host", "start"),
    [
        pytest.param("expired", "127.0.0.1", "TLS: expired certificate at ", id="expired"),
        pytest.param("wrong_host", "127.0.0.1", "TLS: hostname mismatch: ", id="wrong-ip"),
        pytest.param("wrong_host", "localhost", "TLS: hostname mismatch: ", id="wrong-name"),
        pytest.param("self_signed", "127.0.0.1", "TLS: self-signed certificate at ", id="self"),
        pytest.param("other_ca", "127.0.0.1", "TLS: unknown issuer: ", id="unknown-issuer"),
    ],
)
async def test_each_certificate_failure_is_named(
    server: NginxTls, pki: Pki, client: str, name: str, host: str, start: str
) -> None:
    status, error, kind = await _send(client, server.url(name, host=host), cacert=str(pki.ca))
    assert (status, kind) == (None, "tls")
    assert error.startswith(start), error
    assert f"{host}:{server.ports[name]}" in error
    assert "\n" not in error
    if client != "http1":  # every client says it in the same words
        assert error == (await _send("http1", server.url(name, host=host), cacert=pki.ca))[1]


@pytest.mark.anyio
@pytest.mark.parametrize("client", CLIENTS)
async def test_the_system_store_does_not_know_the_test_ca(server: NginxTls, client: str) -> None:
    status, error, kind = await _send(client, server.url("good"))
    assert (status, kind) == (None, "tls")
    assert error.startswith("TLS: unknown issuer: "), error
    assert "--cacert" in error


@pytest.mark.anyio
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    ("cert", "alerts"),
    [
        pytest.param(None, ("certificate_required", "handshake_failure"), id="no-client-cert"),
        pytest.param("stranger", ("unknown_ca",), id="untrusted-client-cert"),
    ],
)
async def test_a_handshake_alert_is_named(
    s_server: str, pki: Pki, client: str, cert: str | None, alerts: tuple[str, ...]
) -> None:
    files = {}
    if cert is not None:
        files = {"client_cert": str(pki.stranger_cert), "client_key": str(pki.stranger_key)}
    status, error, kind = await _send(client, s_server, cacert=str(pki.ca), **files)
    assert (status, kind) == (None, "tls"), error
    assert error.startswith("TLS: handshake alert "), error
    assert any(f"alert {alert} " in error for alert in alerts), error
    hint = "--client-key" if cert is None else "refused the client certificate"
    assert hint in error
    if client != "http1":
        assert error == (await _send("http1", s_server, cacert=str(pki.ca), **files))[1]


# -- happy paths -----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("client", CLIENTS)
async def test_cacert_and_client_certificate(server: NginxTls, pki: Pki, client: str) -> None:
    protocol = "HTTP/2.0" if client == "http2" else "HTTP/1.1"
    good = server.url("good", f"/delivery/retailmedia?cacert={client}", host="localhost")
    status, body, _ = await _send(client, good, cacert=pki.ca)
    assert (status, body) == (200, '{"status":"OK","placements":[]}')
    assert server.called(uri=f"/delivery/retailmedia?cacert={client}", protocol=protocol)

    mutual = server.url("mutual")
    files = {"client_cert": pki.client_cert, "client_key": pki.client_key}
    mine = f"{mutual}?mutual={client}"
    status, body, _ = await _send(client, mine, cacert=pki.ca, **files)  # type: ignore[arg-type]
    assert status == 200, body
    assert server.logged("mutual GET /delivery/retailmedia")
    uri = f"/delivery/retailmedia?mutual={client}"
    assert server.called(uri=uri, protocol=protocol, client="CN=adbatch test")

    # nginx asks for the certificate after the handshake: a 400 answer, not an alert.
    status, body, kind = await _send(client, mutual, cacert=pki.ca)
    assert (status, kind) == (400, None)
    assert "No required SSL certificate was sent" in body


@pytest.mark.anyio
async def test_the_token_client_uses_the_same_context(server: NginxTls, pki: Pki) -> None:
    url = server.url("good", "/oauth2/token")
    trusted = client_context(cacert=str(pki.ca))
    async with TokenClient(
        url, client_id="c", client_secret="s3cr3t-client-value", tls=trusted
    ) as tokens:
        grant = await tokens.fetch()
    assert getattr(grant, "access_token", None) == "nginx-token", grant
    async with TokenClient(url, client_id="c", client_secret="s3cr3t-client-value") as tokens:
        failure = await tokens.fetch()
    assert getattr(failure, "kind", None) == "tls", failure
    assert getattr(failure, "message", "").startswith("TLS: unknown issuer: ")


# -- the CLI: a run stops at the first tls record; --resume with --cacert ends it --------


def _events(write_jsonl: Callable[..., Path], n: int) -> Path:
    rows = [
        {
            "id": f"e{i}",
            "timestamp": 1_764_331_200 + i,
            "criteo-partner-id": 12345,
            "retailer-visitor-id": f"v{i}",
            "event-type": "viewHome",
            "page-id": "viewHome_API_desktop",
        }
        for i in range(n)
    ]
    return write_jsonl(rows)


def _stopped(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("adbatch: stopped:")]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(["--http-client", "http1"], id="http1"),
        pytest.param(["--http-client", "session"], id="session"),
        pytest.param(["--workers", "2"], id="workers"),
        pytest.param(["--http2"], id="http2", marks=NEEDS_HTTP2),
        pytest.param(["--http2", "--workers", "2"], id="http2-workers", marks=NEEDS_HTTP2),
    ],
)
def test_a_run_stops_at_the_first_tls_failure_then_resume_with_cacert(
    server: NginxTls,
    pki: Pki,
    extra: list[str],
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out.jsonl"
    events = _events(write_jsonl, 300)
    argv = ["run", "--no-progress", "--token", "t", "-c", "2", *extra, "-o", str(out)]
    code = main([*argv, "--endpoint", server.url("other_ca"), "--cacert", str(pki.ca), str(events)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "Traceback" not in err
    [stopped] = _stopped(err)
    assert "TLS: unknown issuer: " in stopped, stopped
    assert "--cacert FILE" in stopped
    records = read_records(out)
    workers = 2 if "--workers" in extra else 1
    assert 1 <= len(records) <= 2 * workers, len(records)  # no more than were in flight
    assert {(r["error_kind"], r["attempts"]) for r in records} == {("tls", 1)}

    code = main(
        [*argv, "--endpoint", server.url("good"), "--cacert", str(pki.ca), "--resume", str(events)]
    )
    assert code == 0, capsys.readouterr().err
    records = read_records(out)
    exactly_once(records, 300)
    assert all(r["ok"] for r in records)
    if "--http2" in extra:
        assert server.called(listener="good", protocol="HTTP/2.0")


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(["load", "--rate", "200", "--duration", "5s"], id="load"),
        pytest.param(["replay", "--speed", "100"], id="replay"),
        pytest.param(
            ["load", "--rate", "200", "--duration", "5s", "--http2"],
            id="load-http2",
            marks=NEEDS_HTTP2,
        ),
    ],
)
def test_load_and_replay_stop_at_the_first_tls_failure(
    server: NginxTls,
    pki: Pki,
    mode: list[str],
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out.jsonl"
    argv = [mode[0], "--no-progress", "--token", "t", *mode[1:], "--cacert", str(pki.ca)]
    code = main(
        [*argv, "--endpoint", server.url("expired"), "-o", str(out), str(_events(write_jsonl, 100))]
    )
    err = capsys.readouterr().err
    assert code == 3, err
    [stopped] = _stopped(err)
    assert stopped.startswith("adbatch: stopped: TLS: expired certificate at "), stopped
    records = read_records(out)
    assert 1 <= len(records) < 100
    assert {r["error_kind"] for r in records} == {"tls"}


def test_dynamic_tokens_over_tls(
    server: NginxTls,
    pki: Pki,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ADBATCH_CLIENT_SECRET", "s3cret")
    out = tmp_path / "out.jsonl"
    argv = [
        "run",
        "--no-progress",
        "--client-id",
        "c",
        "-o",
        str(out),
        "--endpoint",
        server.url("good"),
        "--token-url",
        server.url("good", "/oauth2/token"),
        str(_events(write_jsonl, 5)),
    ]
    assert main([*argv, "--cacert", str(pki.ca)]) == 0, capsys.readouterr().err
    assert all(r["ok"] for r in read_records(out))

    assert main(argv) == 3  # the system store: the token endpoint's CA is unknown
    err = capsys.readouterr().err
    token_url = server.url("good", "/oauth2/token")
    assert f"adbatch: error: token endpoint {token_url}: TLS: unknown issuer: " in err, err
    assert "Traceback" not in err
    assert "s3cret" not in err


# -- files that cannot be used: exit 2, one line -----------------------------------------


@pytest.mark.parametrize(
    ("files", "message"),
    [
        pytest.param(
            {"--cacert": "missing.pem"}, "--cacert missing.pem: cannot read it", id="gone"
        ),
        pytest.param(
            {"--cacert": "junk.pem"}, "--cacert junk.pem: holds no PEM certificate", id="junk"
        ),
        pytest.param(
            {"--client-cert": "PKI/client.pem"},
            "--client-cert PKI/client.pem: holds no private key",
            id="no-key",
        ),
        pytest.param(
            {"--client-cert": "PKI/client.pem", "--client-key": "PKI/stranger.key"},
            "the key does not match the certificate",
            id="mismatch",
        ),
        pytest.param(
            {"--client-key": "PKI/client.key"}, "--client-key needs --client-cert", id="key-alone"
        ),
        pytest.param(
            {"--client-cert": "junk.pem", "--client-key": "PKI/client.key"},
            "--client-cert junk.pem: holds no PEM certificate",
            id="junk-cert",
        ),
    ],
)
def test_tls_files_that_cannot_be_used_are_exit_2(
    pki: Pki,
    files: dict[str, str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    (tmp_path / "events.jsonl").write_text("")
    argv = [a for k, v in files.items() for a in (k, v.replace("PKI", str(pki.dir)))]
    code = main(
        ["run", "--token", "t", "--endpoint", "https://127.0.0.1:1/d", *argv, "events.jsonl"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert message.replace("PKI", str(pki.dir)) in err


@pytest.mark.parametrize(
    "extra",
    [pytest.param([], id="http1"), pytest.param(["--http2"], id="http2", marks=NEEDS_HTTP2)],
)
def test_mutual_tls_from_the_command_line(
    server: NginxTls,
    pki: Pki,
    extra: list[str],
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out.jsonl"
    argv = [
        "run",
        *extra,
        "--no-progress",
        "--token",
        "t",
        "--endpoint",
        server.url("mutual"),
        "--cacert",
        str(pki.ca),
        "--client-cert",
        str(pki.client_cert),
        "--client-key",
        str(pki.client_key),
        str(_events(write_jsonl, 3)),
        "-o",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    assert [r["status"] for r in read_records(out)] == [200, 200, 200]
    assert server.logged("mutual GET /delivery/retailmedia?criteo-partner-id=12345")
    protocol = "HTTP/2.0" if extra else "HTTP/1.1"
    assert server.called(listener="mutual", protocol=protocol, client="CN=adbatch test")

    # the certificate and its key in one file
    both = tmp_path / "client-and-key.pem"
    both.write_bytes(pki.client_cert.read_bytes() + pki.client_key.read_bytes())
    argv = [*argv[: argv.index("--client-cert")], "--client-cert", str(both), *argv[-3:]]
    assert main(argv) == 0, capsys.readouterr().err
    assert [r["status"] for r in read_records(out)] == [200, 200, 200]


def test_tls_options_in_the_config_file(
    server: NginxTls,
    pki: Pki,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "adbatch.toml"
    config.write_text(
        f'cacert = "{pki.ca}"\nclient-cert = "{pki.client_cert}"\n'
        f'client_key = "{pki.client_key}"\nendpoint = "{server.url("mutual")}"\n'
    )
    out = tmp_path / "out.jsonl"
    code = main(
        [
            "run",
            "--no-progress",
            "--token",
            "t",
            "--config",
            str(config),
            "-o",
            str(out),
            str(_events(write_jsonl, 3)),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert [r["status"] for r in read_records(out)] == [200, 200, 200]

    # -o must not overwrite a file adbatch reads
    code = main(["run", "--token", "t", "--config", str(config), "-o", str(pki.client_key), "-"])
    assert code == 2
    assert "--client-key" in capsys.readouterr().err
