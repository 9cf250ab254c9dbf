"""`--http2` (engine/net/http2.py) against nginx speaking HTTP/2 over TLS on 127.0.0.1.

nginx's access log (`$server_protocol`) shows HTTP/2.0 for every call; the records are
those of the http1 client for the same nginx; a 503 then an answer, a deadline, a 401
storm and answers over the size limit behave as with the other clients, and streams
given up on are reset (else the connection would refuse calls: encode/httpcore#943).
Without httpx and h2, `--http2` is a one-line configuration error. The certificate is
self-signed, made with openssl here, and trusted through SSL_CERT_FILE.

Skips with the reason when nginx, openssl, httpx or h2 is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from conftest import MOCK_TOKEN, read_records

import engine
from engine.core.query import Request
from engine.mock import MockConfig, MockHandle, running_mock
from engine.net.transport import open_transport

pytest.importorskip("httpx", reason="httpx not installed: pip install 'adbatch[http2]'")
pytest.importorskip("h2", reason="h2 not installed: pip install 'adbatch[http2]'")

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,  # a real proxy / nginx per test: seconds in all
    pytest.mark.skipif(NGINX is None, reason="nginx not installed (apt-get install nginx)"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
]

FIXED = '{"status":"OK","page-uid":"pu","placements":[]}'
BIG = 300 * 1024  # the /big answer: past the 64 KiB a stream may receive unacknowledged
DELIVERY = "/delivery/retailmedia"


def event(i: int) -> dict[str, object]:
    return {
        "id": f"e{i}",
        "criteo-partner-id": 12345,
        "retailer-visitor-id": f"rv-{i}",
        "event-type": "viewSearchResult",
        "page-id": "viewSearchResult_API_desktop",
        "keywords": f"tea & cups {i} héros",
    }


@dataclass(frozen=True, slots=True)
class Nginx:
    port: int
    log: Path

    def url(self, path: str = DELIVERY) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def lines(self) -> list[tuple[str, str, str]]:
        """(protocol, status, request URI) of every call logged so far."""
        if not self.log.exists():
            return []
        rows = [line.split(" ", 2) for line in self.log.read_text().splitlines()]
        return [(a, b, c) for a, b, c in rows]


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate (and its key beside it) for 127.0.0.1."""
    d = tmp_path_factory.mktemp("h2-tls")
    cmd = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
        "-days", "2", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return d / "cert.pem"


@pytest.fixture
def trusted(certificate: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test certificate trusted by every client of this process (and its children)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    return certificate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def nginx_h2(
    work: Path, certificate: Path, upstream: int | None = None, extra: str = ""
) -> Iterator[Nginx]:
    """nginx with `http2` over TLS: DELIVERY answers FIXED (or is proxied to `upstream`,
    over HTTP/1.1), /big answers BIG bytes; each call logged with its protocol; `extra`:
    more directives for the server block."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "big").write_bytes(b"x" * BIG)
    port = _free_port()
    log = work / "access.log"
    if upstream is None:
        delivery = f"default_type application/json; return 200 '{FIXED}';"
    else:
        delivery = f"proxy_pass http://127.0.0.1:{upstream};"
    temps = "\n".join(
        f"    {kind}_temp_path {work}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (work / "nginx.conf").write_text(
        f"""
daemon off;
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format protocol '$server_protocol $status $request_uri';
    access_log {log} protocol;
{temps}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {certificate};
        ssl_certificate_key {certificate.parent / "key.pem"};
        {extra}
        location = {DELIVERY} {{ {delivery} }}
        location = /big {{ default_type application/octet-stream; alias {work}/big; }}
    }}
}}
"""
    )
    assert NGINX is not None
    proc = subprocess.Popen(
        [NGINX, "-c", str(work / "nginx.conf"), "-p", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start") from None
                time.sleep(0.02)
        yield Nginx(port, log)
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


@contextlib.asynccontextmanager
async def mock_behind_nginx(
    work: Path, certificate: Path, config: MockConfig
) -> AsyncIterator[tuple[MockHandle, Nginx]]:
    async with running_mock(config) as mock:
        port = int(mock.delivery_url.split(":")[2].split("/")[0])
        with nginx_h2(work, certificate, upstream=port) as server:
            yield mock, server


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "ADBATCH_TOKEN": MOCK_TOKEN, **env}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=60,
    )


_VOLATILE = ("sent_at", "latency_ms", "received_at", "ts", "duration_ms")


def _stable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _VOLATILE}


# --- the same records, over HTTP/2 -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_every_call_is_http2_and_the_records_are_http1s(
    tmp_path: Path, trusted: Path, workers: str
) -> None:
    n = 40
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(event(i)) + b"\n" for i in range(n)))
    with nginx_h2(tmp_path / "nginx", trusted) as server:
        common = ["run", "events.jsonl", "--endpoint", server.url(), "-c", "8", "--no-progress"]
        common += ["--workers", workers]
        one = await anyio.to_thread.run_sync(
            _cli, [*common, "-o", "h1.jsonl", "--http-client", "http1"], tmp_path
        )
        assert one.returncode == 0, one.stderr
        h1_lines = server.lines()
        two = await anyio.to_thread.run_sync(_cli, [*common, "-o", "h2.jsonl", "--http2"], tmp_path)
        assert two.returncode == 0, two.stderr
        h2_lines = server.lines()[len(h1_lines) :]
    assert [p for p, _, _ in h1_lines] == ["HTTP/1.1"] * n
    assert [p for p, _, _ in h2_lines] == ["HTTP/2.0"] * n  # every call, none on 1.1
    # The same request URIs, byte for byte (the query as the engine encoded it).
    assert Counter(u for _, _, u in h2_lines) == Counter(u for _, _, u in h1_lines)
    h1 = sorted((_stable(r) for r in read_records(tmp_path / "h1.jsonl")), key=lambda r: r["id"])
    h2 = sorted((_stable(r) for r in read_records(tmp_path / "h2.jsonl")), key=lambda r: r["id"])
    assert h2 == h1
    assert all(r["ok"] and r["status"] == 200 for r in h2)
    assert h2[0]["response"] == orjson.loads(FIXED)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["load", "replay"])
async def test_load_and_replay_go_over_http2(tmp_path: Path, trusted: Path, command: str) -> None:
    events = tmp_path / "events.jsonl"
    rows = [{**event(i), "timestamp": 1717243200 + i / 100} for i in range(10)]
    events.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    extra = ["--rate", "50", "--duration", "0.4s"] if command == "load" else ["--speed", "10"]
    with nginx_h2(tmp_path / "nginx", trusted) as server:
        args = [command, "events.jsonl", "--endpoint", server.url(), "--http2", "-o", "out.jsonl"]
        done = await anyio.to_thread.run_sync(_cli, [*args, "--no-progress", *extra], tmp_path)
        lines = server.lines()
    assert done.returncode == 0, done.stderr
    records = read_records(tmp_path / "out.jsonl")
    assert records
    assert all(r["ok"] for r in records)
    assert len(lines) == len(records)
    assert {p for p, _, _ in lines} == {"HTTP/2.0"}


# --- retries, deadlines, tokens ---------------------------------------------------------


async def test_503_then_an_answer_is_retried(tmp_path: Path, trusted: Path) -> None:
    config = MockConfig(fail_503=1.0, retry_after="0", fixed_body=FIXED.encode())
    async with mock_behind_nginx(tmp_path, trusted, config) as (_, server):
        cfg = engine.Config(
            endpoint=server.url(), token=MOCK_TOKEN, http_client="http2", backoff_base=0.01
        )
        results = [r async for r in engine.deliver([event(i) for i in range(20)], cfg)]
        lines = server.lines()
    assert all(r.ok and r.status == 200 and r.attempts == 2 for r in results)
    assert Counter(status for _, status, _ in lines) == {"503": 20, "200": 20}
    assert {p for p, _, _ in lines} == {"HTTP/2.0"}


@pytest.mark.slow
async def test_calls_past_their_deadline_time_out_and_reset_their_streams(
    tmp_path: Path, trusted: Path
) -> None:
    """Every first attempt hangs upstream (20 s): each times out, its retry is answered.
    300 hung streams on one connection: were they not reset, h2 would count them open
    and refuse every call past nginx's 128 concurrent streams ("Max outbound streams is
    128, 128 open", a protocol error); were a write cut by a deadline, the connection
    would break under the calls in flight. (A retry may time out too: the first calls
    of a connection wait for its settings.)"""
    n = 300
    config = MockConfig(slow=1.0, slow_seconds=20.0, fixed_body=FIXED.encode())
    async with mock_behind_nginx(tmp_path, trusted, config) as (_, server):
        cfg = engine.Config(
            endpoint=server.url(),
            token=MOCK_TOKEN,
            http_client="http2",
            timeout=0.3,
            concurrency=16,
            backoff_base=0.01,
            retry_budget=2.0,
        )
        results = [r async for r in engine.deliver([event(i) for i in range(n)], cfg)]
    assert [r.error_kind for r in results if not r.ok] == []
    assert all(r.status == 200 for r in results)
    attempts = Counter(r.attempts for r in results)
    assert attempts[2] >= n - 16, attempts  # timed out once, then answered
    assert set(attempts) <= {2, 3}
    logged = Counter(status for _, status, _ in server.lines())
    assert set(logged) == {"200", "499"}  # answered, or given up on (nginx's 499)
    assert logged["200"] >= n  # nothing refused, nothing failed on the way


async def test_a_deadline_is_a_timeout_record(tmp_path: Path, trusted: Path) -> None:
    config = MockConfig(slow=1.0, slow_seconds=5.0, faults_first_attempt_only=False)
    async with mock_behind_nginx(tmp_path, trusted, config) as (_, server):
        async with open_transport(concurrency=4, timeout=0.3, client="http2") as transport:
            url = server.url() + "?criteo-partner-id=1&event-type=viewHome"
            resp = await transport.send(Request(url, {}), f"Bearer {MOCK_TOKEN}")
    assert (resp.status, resp.error_kind, resp.error) == (None, "timeout", "no answer within 0.3s")


async def test_401_storm_one_renewal_every_call_retried_once(tmp_path: Path, trusted: Path) -> None:
    first, second = 50, 100
    revoked = anyio.Event()
    config = MockConfig(latency=0.05, token_latency=0.5, fixed_body=FIXED.encode())
    async with mock_behind_nginx(tmp_path, trusted, config) as (mock, server):

        async def events() -> AsyncIterator[dict[str, object]]:
            for i in range(first):
                yield event(i)
            await revoked.wait()
            for i in range(first, first + second):
                yield event(i)

        cfg = engine.Config(
            endpoint=server.url(),
            token_url=mock.token_url,
            client_id="mock-client",
            client_secret="mock-secret",
            http_client="http2",
            concurrency=second,
        )
        results = []
        async with aclosing(engine.deliver(events(), cfg)) as stream:
            async for result in stream:
                results.append(result)
                if len(results) == first:
                    mock.state.revoke_all_tokens()
                    revoked.set()
        lines = server.lines()
    assert len(results) == first + second
    assert all(r.ok and r.status == 200 for r in results)
    assert len([r for r in results if r.attempts == 2]) == mock.state.unauthorized >= 10
    assert mock.state.token_requests == 2  # the first token and one renewal
    assert {p for p, _, _ in lines} == {"HTTP/2.0"}


# --- limits and failures ----------------------------------------------------------------


async def test_answers_over_the_limit_are_too_large_and_the_connection_lives_on(
    tmp_path: Path, trusted: Path
) -> None:
    """200 answers of 300 KiB over a 1 KiB limit: each too_large with its status, its
    stream reset (unreset, 128 of them would fill the connection); then a normal call."""
    with nginx_h2(tmp_path, trusted) as server:
        async with open_transport(
            concurrency=32, timeout=10.0, client="http2", max_response_bytes=1024
        ) as transport:
            async with anyio.create_task_group() as tg:
                got: list[Any] = []

                async def call() -> None:
                    got.append(await transport.send(Request(server.url("/big"), {}), None))

                for _ in range(200):
                    tg.start_soon(call)
            after = await transport.send(Request(server.url(), {}), None)
        lines = server.lines()
    assert {(r.status, r.error_kind, r.body) for r in got} == {(200, "too_large", b"")}
    assert "--max-response-bytes" in got[0].error
    assert (after.status, after.error_kind, after.body) == (200, None, FIXED.encode())
    assert {p for p, _, _ in lines} == {"HTTP/2.0"}


async def test_a_refused_connection_is_a_connect_record() -> None:
    port = _free_port()  # nobody listens there
    async with open_transport(concurrency=2, timeout=5.0, client="http2") as transport:
        resp = await transport.send(Request(f"https://127.0.0.1:{port}/d", {}), None)
    assert (resp.status, resp.error_kind) == (None, "connect")
    assert resp.error is not None
    assert "\n" not in resp.error


async def test_a_url_past_httpx_s_limit_is_a_request_record() -> None:
    """httpx refuses a URL of more than 65,536 characters (InvalidURL, not an HTTPError)
    before any connection: the event's record says so (kind `request`, final), never an
    internal error that would count towards stopping the run as a bug."""
    port = _free_port()  # never reached: the URL is refused first
    url = f"https://127.0.0.1:{port}/d?keywords=" + "k" * 70_000
    async with open_transport(concurrency=2, timeout=5.0, client="http2") as transport:
        resp = await transport.send(Request(url, {}), None)
    assert (resp.status, resp.error_kind) == (None, "request")
    assert resp.error == "cannot send: URL too long"


# --- without the extra ------------------------------------------------------------------

_WITHOUT_H2 = (
    "import sys, runpy; sys.modules['h2'] = None; sys.argv = ['adbatch', *sys.argv[1:]]; "
    "runpy.run_module('engine', run_name='__main__')"
)


def test_without_the_extra_http2_is_a_one_line_config_error(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_bytes(orjson.dumps(event(0)) + b"\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ADBATCH_TOKEN": MOCK_TOKEN}
    for option in (["--http2"], ["--http-client", "http2"]):
        proc = subprocess.run(
            [sys.executable, "-c", _WITHOUT_H2, "run", "events.jsonl", "-o", "out.jsonl", *option],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=30,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].endswith(
            "error: --http2 needs the http2 extra: pip install 'adbatch[http2]'"
        )
        assert not (tmp_path / "out.jsonl").exists()


def test_http2_and_another_client_is_a_usage_error(tmp_path: Path) -> None:
    proc = _cli(["run", "-", "--http2", "--http-client", "session"], tmp_path)
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_http_client_http2_in_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADBATCH_TOKEN", MOCK_TOKEN)
    (tmp_path / "adbatch.toml").write_text('http_client = "http2"\n')
    from engine.cli.main import build_parser
    from engine.cli.options import config_from_args

    args = build_parser().parse_args(["run", "--config", str(tmp_path / "adbatch.toml"), "x"])
    assert config_from_args(args).http_client == "http2"


def test_import_engine_does_not_load_httpx() -> None:
    code = (
        "import sys, engine; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'h2', 'httpcore')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_benchmark_runs_and_every_http2_call_is_http2() -> None:
    """docs/network.md's `python benchmarks/http2.py`, on a few events."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "http2.py"), "--events", "200"]
    proc = subprocess.run(
        [*cmd, "--rounds", "1"], capture_output=True, text=True, timeout=170, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| http2 |" in proc.stdout
    assert "HTTP/2.0 x200 |" in proc.stdout
    assert "| http1 |" in proc.stdout
