"""`--http2` around the call: through a proxy, with `--header`, and answers cut short.

- Proxies: Debian's tinyproxy (tests/test_proxy_net.py's, its outbound connections
  from 127.0.0.2) in front of nginx's HTTP/2 listeners (tests/nginx_tls.py, the test
  CA by --cacert). Its log shows one CONNECT per HTTP/2 connection, nginx's log shows
  HTTP/2.0 from 127.0.0.2 on one connection per process; credentials are sent and never
  shown, refused ones stop the run (exit 3, proxy records); NO_PROXY and --no-proxy send
  the calls direct; an unreachable proxy is connect records and a stop naming it; a
  certificate failure inside the tunnel is a tls record.
- `--header`: nginx logs what came (HTTP/2 lowercases names), an event's own
  user-agent, referer and ip win, non-ASCII values travel as UTF-8 (as http1 sends them).
- Answers cut short: a raw HTTP/2 server (the h2 library) closing the connection or
  resetting the stream before or after the headers, and nginx whose upstream dies
  mid-body: `disconnected` before an answer, `payload` after its start, as with http1;
  a run retries them (the records equal http1's).

Skips with the reason when nginx, tinyproxy, openssl, httpx or h2 is missing.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("httpx", reason="httpx not installed: pip install 'adbatch[http2]'")
pytest.importorskip("h2", reason="h2 not installed: pip install 'adbatch[http2]'")

import h2.config
import h2.connection
import h2.errors
import h2.events
from conftest import read_records
from nginx_tls import NginxTls, nginx, nginx_tls
from test_http2 import nginx_h2
from test_proxy_net import (
    PASSWORD,
    PROXY_SIDE,
    USER,
    _free_port,
    running_server,
    running_tinyproxy,
)
from tls_pki import Pki, make_pki, openssl

from engine.cli.main import main
from engine.core.proxies import Proxies, parse_proxy_url
from engine.core.query import Request
from engine.net.tls import client_context
from engine.net.transport import open_transport

pytestmark = [
    pytest.mark.skipif(openssl() is None, reason="openssl is not installed"),
    pytest.mark.slow,  # end to end: real servers and CLI runs, seconds in all (CI runs -m slow)
]
NEEDS_TINYPROXY = pytest.mark.skipif(
    subprocess.run(["which", "tinyproxy"], capture_output=True).returncode != 0,
    reason="tinyproxy is not installed",
)
_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxTls]:
    if nginx() is None:
        pytest.skip("nginx is not installed (.ci/run: apt-get install nginx)")
    with nginx_tls(pki, tmp_path_factory.mktemp("nginx")) as running:
        yield running


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def _events(write_jsonl: Callable[..., Path], n: int, **extra: object) -> Path:
    rows = [
        {
            "id": f"e{i}",
            "timestamp": 1_764_331_200 + i / 100,
            "criteo-partner-id": 12345,
            "retailer-visitor-id": f"v{i}",
            "event-type": "viewHome",
            "page-id": "viewHome_API_desktop",
            **extra,
        }
        for i in range(n)
    ]
    return write_jsonl(rows)


def _run(
    server_url: str, events: Path, out: Path, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, list[dict[str, Any]]]:
    """`adbatch run --http2` in this process: (exit code, stderr, records)."""
    argv = ["run", "--http2", "--no-progress", "--token", "t", "--endpoint", server_url]
    code = main([*argv, *args, "-o", str(out), str(events)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err, read_records(out) if out.exists() else []


def _new_calls(server: NginxTls, before: int, n: int) -> list[dict[str, Any]]:
    """The `n` calls nginx logs after the first `before` (it logs after answering)."""
    deadline = time.monotonic() + 5
    while len(calls := server.calls()) < before + n and time.monotonic() < deadline:
        time.sleep(0.01)
    return calls[before:]


# -- proxies ---------------------------------------------------------------------------


@NEEDS_TINYPROXY
@pytest.mark.parametrize("workers", ["1", "2"])
def test_through_tinyproxy_one_tunnel_per_process_with_credentials(
    server: NginxTls,
    pki: Pki,
    workers: str,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """200 calls, 64 in flight per process: one CONNECT each (the calls that come while
    it opens wait for it), every call HTTP/2.0 from tinyproxy's side on that one
    connection, the credentials nowhere in what the run shows."""
    port = server.ports["good"]
    before = len(server.calls())
    with running_tinyproxy(tmp_path, connect_port=port, basic_auth=True) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url(f"{USER}:{PASSWORD}@"))
        code, err, records = _run(
            server.url("good"), _events(write_jsonl, 200), tmp_path / "out.jsonl",
            "--cacert", str(pki.ca), "-c", "64", "--workers", workers, capsys=capsys,
        )  # fmt: skip
        carried = proxy.requests()
    assert code == 0, err
    assert len(records) == 200
    assert all(r["ok"] for r in records)
    assert carried == [f"CONNECT 127.0.0.1:{port}"] * int(workers)
    calls = _new_calls(server, before, 200)
    assert len(calls) == 200
    assert {(c["protocol"], c["remote"]) for c in calls} == {("HTTP/2.0", PROXY_SIDE)}
    assert len({c["connection"] for c in calls}) == int(workers)
    assert PASSWORD not in err
    assert USER not in err


@NEEDS_TINYPROXY
@pytest.mark.parametrize(
    ("credentials", "said"),
    [
        pytest.param(f"{USER}:wrong-{PASSWORD}@", "refused the credentials (HTTP 401", id="wrong"),
        pytest.param("", "asks for credentials (HTTP 407", id="none"),
    ],
)
def test_a_refusing_proxy_stops_the_run(
    server: NginxTls,
    pki: Pki,
    credentials: str,
    said: str,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = len(server.calls())
    with running_tinyproxy(tmp_path, connect_port=server.ports["good"], basic_auth=True) as p:
        monkeypatch.setenv("HTTPS_PROXY", p.url(credentials))
        code, err, records = _run(
            server.url("good"), _events(write_jsonl, 300), tmp_path / "out.jsonl",
            "--cacert", str(pki.ca), "-c", "4", capsys=capsys,
        )  # fmt: skip
    assert code == 3, err
    shown = "http://[redacted]@" if credentials else "http://"
    assert f"adbatch: stopped: proxy {shown}127.0.0.1:{p.port} {said}" in err, err
    assert 1 <= len(records) < 300
    assert {(r["error_kind"], r["status"], r["attempts"]) for r in records} == {("proxy", None, 1)}
    assert server.calls()[before:] == []
    assert PASSWORD not in err + str(records)


@NEEDS_TINYPROXY
def test_no_proxy_and_the_no_proxy_option_go_direct(
    server: NginxTls,
    pki: Pki,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = _events(write_jsonl, 10)
    out = tmp_path / "out.jsonl"
    with running_tinyproxy(tmp_path, connect_port=server.ports["good"]) as proxy:
        cases: list[tuple[dict[str, str], list[str]]] = [
            ({"HTTPS_PROXY": proxy.url(), "NO_PROXY": "127.0.0.1"}, []),
            ({"https_proxy": proxy.url(), "no_proxy": "localhost,127.0.0.0/8"}, []),
            ({"NO_PROXY": "127.0.0.1"}, ["--proxy", proxy.url()]),  # as curl -x: still applies
            ({"HTTPS_PROXY": "http://127.0.0.1:9"}, ["--no-proxy"]),  # a dead one, ignored
        ]
        for env, args in cases:
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            before = len(server.calls())
            code, err, records = _run(
                server.url("good"), events, out, "--cacert", str(pki.ca), *args, capsys=capsys
            )
            assert code == 0, (env, args, err)
            assert len(records) == 10
            calls = _new_calls(server, before, 10)
            assert {(c["protocol"], c["remote"]) for c in calls} == {("HTTP/2.0", "127.0.0.1")}
            for name in env:
                monkeypatch.delenv(name)
        assert proxy.requests() == []


@NEEDS_TINYPROXY
def test_a_certificate_failure_inside_the_tunnel_is_a_tls_record(
    server: NginxTls,
    pki: Pki,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = server.ports["expired"]
    with running_tinyproxy(tmp_path, connect_port=port) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url())
        code, err, records = _run(
            server.url("expired"), _events(write_jsonl, 100), tmp_path / "out.jsonl",
            "--cacert", str(pki.ca), "-c", "2", capsys=capsys,
        )  # fmt: skip
        carried = proxy.requests()
    assert code == 3, err
    assert f"adbatch: stopped: TLS: expired certificate at 127.0.0.1:{port} " in err
    assert {r["error_kind"] for r in records} == {"tls"}
    assert carried
    assert set(carried) == {f"CONNECT 127.0.0.1:{port}"}


def test_an_unreachable_proxy_is_connect_records_and_a_stop_naming_it(
    server: NginxTls,
    pki: Pki,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = f"http://{USER}:{PASSWORD}@127.0.0.1:9"
    code, err, records = _run(
        server.url("good"), _events(write_jsonl, 40), tmp_path / "out.jsonl",
        "--cacert", str(pki.ca), "--proxy", dead, "--retries", "0", "-c", "2", capsys=capsys,
    )  # fmt: skip
    assert code == 3, err
    assert "adbatch: stopped: cannot connect to proxy http://[redacted]@127.0.0.1:9: " in err
    assert "check --proxy" in err
    assert records
    assert {r["error_kind"] for r in records} == {"connect"}
    assert PASSWORD not in err + str(records)


async def _burst(transport: Any, bases: list[str]) -> list[Any]:
    """One call to each of `bases`, all at once: the answers."""
    answers: list[Any] = []

    async def call(base: str) -> None:
        query = "criteo-partner-id=1&retailer-visitor-id=v&event-type=viewHome&page-id=h"
        url = f"{base}/delivery/retailmedia?{query}"
        answers.append(await transport.send(Request(url, {}), "Bearer mock-token"))

    async with anyio.create_task_group() as tg:
        for base in bases:
            tg.start_soon(call, base)
    return answers


@NEEDS_TINYPROXY
@pytest.mark.anyio
async def test_http1_where_http2_is_not_offered_direct_and_through_a_tunnel(
    pki: Pki, tmp_path: Path
) -> None:
    """An aiohttp.web server (HTTP/1.1 only) over TLS and over plain http: the same client
    speaks HTTP/1.1 to it. Through a proxy, the calls that waited for the first tunnel
    find an HTTP/1.1 connection there and go back to the pool for tunnels of their own."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.good, pki.server_key)
    context = client_context.__wrapped__(cacert=str(pki.ca))
    async with running_server(tls) as secure, running_server() as plain:
        port = int(secure.base_url.rsplit(":", 1)[1])
        with running_tinyproxy(tmp_path, connect_port=port) as proxy:
            proxies = Proxies(https=parse_proxy_url(proxy.url(), source="--proxy"))
            for via in (None, proxies):
                async with open_transport(
                    concurrency=8, timeout=5.0, client="http2", tls=context, proxies=via
                ) as transport:
                    answers = await _burst(transport, [secure.base_url, plain.base_url] * 40)
                assert [(r.status, r.error_kind) for r in answers] == [(200, None)] * 80
            tunnels = proxy.requests()
    assert 1 <= len(tunnels) <= 8  # one per HTTP/1.1 connection
    assert set(tunnels) == {f"CONNECT 127.0.0.1:{port}"}
    assert Counter(secure.remotes) == {"127.0.0.1": 40, PROXY_SIDE: 40}
    assert set(plain.remotes) == {"127.0.0.1"}


@NEEDS_TINYPROXY
@pytest.mark.anyio
async def test_a_proxy_refusing_the_tunnel_or_the_server_reads_as_with_http1(
    tmp_path: Path,
) -> None:
    """tinyproxy answers 403 to a CONNECT to a port it does not allow (a `proxy` record)
    and 500 when it cannot reach the server (a `connect` record): http2 says what http1
    says."""
    closed = _free_port()
    with running_tinyproxy(tmp_path, connect_port=closed) as proxy:
        proxies = Proxies(https=parse_proxy_url(proxy.url(), source="--proxy"))
        said = {}
        for client in ("http1", "http2"):
            for port in (closed, 443):
                context = client_context.__wrapped__()
                async with open_transport(
                    concurrency=1, timeout=5.0, client=client, tls=context, proxies=proxies
                ) as transport:
                    resp = await transport.send(Request(f"https://127.0.0.1:{port}/d", {}), None)
                said[client, port] = (resp.status, resp.error_kind, resp.error)
    where = f"proxy http://127.0.0.1:{proxy.port}"
    assert said["http2", closed] == said["http1", closed] == (
        None, "connect", f"{where} could not reach 127.0.0.1:{closed} (HTTP 500 Unable to connect)"
    )  # fmt: skip
    assert said["http2", 443] == said["http1", 443]
    assert said["http2", 443][:2] == (None, "proxy")
    assert f"{where} refused to carry the call to 127.0.0.1:443 (HTTP 403" in said["http2", 443][2]


# -- --header --------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_headers_reach_the_server_and_an_events_own_win(
    server: NginxTls,
    pki: Pki,
    workers: str,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = {
        "criteo-partner-id": 1,
        "retailer-visitor-id": "v",
        "event-type": "viewHome",
        "page-id": "viewHome_API_desktop",
    }
    own = {"user-agent": "Mozilla/5.0 (é)", "referer": "https://r.example/", "ip": "203.0.113.7"}
    rows = [{**base, "id": f"e{i}"} for i in range(20)] + [{**base, "id": "own", **own}]
    before = len(server.calls())
    code, err, records = _run(
        server.url("good"), write_jsonl(rows), tmp_path / "out.jsonl", "--cacert", str(pki.ca),
        "--workers", workers, "--header", "X-Gateway: staging", "--header", "X-Team: é ü",
        "--header", "user-agent: gateway-ua", "--header", "Referer: https://gw.example/",
        "--header", "X-Forwarded-For: 198.51.100.1", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert len(records) == 21
    calls = _new_calls(server, before, 21)
    assert {c["protocol"] for c in calls} == {"HTTP/2.0"}
    assert {(c["gateway"], c["team"]) for c in calls} == {("staging", "é ü")}
    seen = Counter((c["user_agent"], c["referer"], c["forwarded"]) for c in calls)
    assert seen == {
        ("gateway-ua", "https://gw.example/", "198.51.100.1"): 20,
        ("Mozilla/5.0 (é)", "https://r.example/", "203.0.113.7"): 1,
    }


# -- answers cut short -------------------------------------------------------------------


async def _misbehave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/2, by path: /close-before, /reset-before (no answer), /close-mid, /reset-mid
    (headers for 1000 bytes, 10 sent); anything else a small JSON answer."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    try:
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if not isinstance(event, h2.events.RequestReceived):
                    continue
                path, stream = dict(event.headers)[b":path"].split(b"?")[0], event.stream_id
                if path == b"/close-before":
                    return
                if path.endswith(b"-mid"):
                    conn.send_headers(stream, [(":status", "200"), ("content-length", "1000")])
                    conn.send_data(stream, b'{"status":')
                if path.startswith(b"/reset-"):
                    conn.reset_stream(stream, h2.errors.ErrorCodes.INTERNAL_ERROR)
                elif path == b"/close-mid":
                    writer.write(conn.data_to_send())
                    await writer.drain()
                    return
                elif not path.endswith(b"-mid"):
                    conn.send_headers(stream, [(":status", "200"), ("content-length", "2")])
                    conn.send_data(stream, b"{}", end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@asynccontextmanager
async def misbehaving_h2(pki: Pki) -> AsyncIterator[str]:
    """`_misbehave` over TLS (ALPN h2 only) on a free port: its base URL."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.good, pki.server_key)
    context.set_alpn_protocols(["h2"])
    served = await asyncio.start_server(_misbehave, "127.0.0.1", 0, ssl=context)
    try:
        yield f"https://127.0.0.1:{served.sockets[0].getsockname()[1]}"
    finally:
        served.close()
        await served.wait_closed()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "kind", "error"),
    [
        pytest.param(
            "/close-before", "disconnected", "server closed the connection without answering",
            id="closed-before",
        ),
        pytest.param(
            "/reset-before", "disconnected",
            "no answer: the server reset the stream (INTERNAL_ERROR)", id="reset-before",
        ),
        pytest.param(
            "/close-mid", "payload",
            "incomplete response body: the server closed the connection", id="closed-mid-body",
        ),
        pytest.param(
            "/reset-mid", "payload",
            "incomplete response body: the server reset the stream (INTERNAL_ERROR)",
            id="reset-mid-body",
        ),
    ],
)  # fmt: skip
async def test_an_answer_cut_short(pki: Pki, path: str, kind: str, error: str) -> None:
    """The record says when it was cut; the client goes on (a new connection after a
    close, the same one after a reset)."""
    async with misbehaving_h2(pki) as base:
        tls = client_context.__wrapped__(cacert=str(pki.ca))
        async with open_transport(concurrency=2, timeout=5.0, client="http2", tls=tls) as t:
            cut = await t.send(Request(base + path, {}), None)
            after = await t.send(Request(base + "/ok", {}), None)
    assert (cut.status, cut.error_kind, cut.error, cut.body) == (None, kind, error, b"")
    assert (after.status, after.error_kind, after.body) == (200, None, b"{}")


async def _dies_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP/1.1 upstream: the first request for a URI gets part of its answer and a
    dropped connection, the next the whole of it."""
    head = await reader.readuntil(b"\r\n\r\n")
    uri = head.split(b" ", 2)[1]
    body = b'{"status":"OK","placements":[],"pad":"' + b"x" * 20_000 + b'"}'
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    writer.write(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    first = uri not in _SEEN
    _SEEN.add(uri)
    writer.write(body[:5000] if first else body)
    await writer.drain()
    if first:
        await asyncio.sleep(0.02)
        writer.transport.abort()
    else:
        writer.close()


_SEEN: set[bytes] = set()


@contextmanager
def upstream_dying_once() -> Iterator[int]:
    """`_dies_once` on a free port, served by a thread of its own: its port."""
    _SEEN.clear()
    loop = asyncio.new_event_loop()
    served = loop.run_until_complete(asyncio.start_server(_dies_once, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield served.sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        served.close()
        loop.run_until_complete(served.wait_closed())
        loop.close()


def test_an_upstream_dying_mid_body_behind_nginx_is_retried_as_with_http1(
    pki: Pki,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """nginx (HTTP/2 to adbatch, HTTP/1.1 upstream) resets the stream when its upstream
    dies mid-body: each first attempt is a payload failure, retried and answered; the
    records are those of http1 for the same nginx."""
    if nginx() is None:
        pytest.skip("nginx is not installed")
    certificate = tmp_path / "cert" / "cert.pem"  # nginx_h2 wants its key beside it
    certificate.parent.mkdir()
    certificate.write_bytes(pki.good.read_bytes())
    (certificate.parent / "key.pem").write_bytes(pki.server_key.read_bytes())
    results: dict[str, list[dict[str, Any]]] = {}
    with upstream_dying_once() as port, nginx_h2(tmp_path / "nginx", certificate, port) as front:
        for client in ("http1", "http2"):
            events = _events(write_jsonl, 10, **{"page-uid": client})
            out = tmp_path / f"{client}.jsonl"
            argv = ["run", "--no-progress", "--token", "t", "--endpoint", front.url()]
            argv += ["--http-client", client, "--cacert", str(pki.ca)]
            argv += ["--backoff-base", "0.01", "-o", str(out), str(events)]
            assert main(argv) == 0, capsys.readouterr().err
            results[client] = read_records(out)
        protocols = Counter(p for p, _, _ in front.lines())
    assert protocols == {"HTTP/1.1": 20, "HTTP/2.0": 20}
    for records in results.values():
        assert len(records) == 10
        assert {(r["status"], r["attempts"]) for r in records} == {(200, 2)}
        assert {tuple(r["retries"]) for r in records} == {("payload",)}, records[0]
    stable = ("id", "status", "ok", "attempts", "response", "error", "error_kind")
    assert sorted(tuple(r[k] for k in stable) for r in results["http2"]) == sorted(
        tuple(r[k] for k in stable) for r in results["http1"]
    )
