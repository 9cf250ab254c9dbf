"""Proxies for real: Debian's tinyproxy on 127.0.0.1, started by each test with its own
config, in front of the project's mock (plain http, or https with a certificate made by
`openssl`), with the CLI run as a subprocess whose environment holds the proxy variables.

How "every call went through the proxy" is checked: tinyproxy opens its connections to
the server from 127.0.0.2 (`Bind`), and the server records the address of each request;
tinyproxy's log (LogLevel Connect) has one `Request` line per request it carried, and
one CONNECT per tunnel. Skips, saying why, when tinyproxy or openssl is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import orjson
import pytest
from aiohttp import web

from engine.mock import MockConfig
from engine.mock.app import DELIVERY_PATH, STATE_KEY, TOKEN_PATH, make_app
from engine.mock.state import MockState

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,  # a real proxy / nginx per test: seconds in all
    pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="tinyproxy is not installed"),
]

#: Where tinyproxy's own connections come from: any other address is a direct call.
PROXY_SIDE = "127.0.0.2"
USER, PASSWORD = "adbatch-user", "pr0xy-s3cret-pw"
_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proxy:
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        """The requests tinyproxy carried ("GET http://...", "CONNECT 127.0.0.1:443")."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return re.findall(r"Request \(file descriptor \d+\): (\S+ \S+)", text)


@contextmanager
def running_tinyproxy(
    tmp_path: Path, *, connect_port: int = 443, basic_auth: bool = False
) -> Iterator[Proxy]:
    port = _free_port()
    log = tmp_path / "tinyproxy.log"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        f"Bind {PROXY_SIDE}",
        "Timeout 30",
        f'LogFile "{log}"',
        "LogLevel Connect",
        "MaxClients 64",
        "Allow 127.0.0.1",
        f"ConnectPort {connect_port}",
    ]
    if basic_auth:
        lines.append(f"BasicAuth {USER} {PASSWORD}")
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(
        ["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"tinyproxy did not start (exit {process.poll()})")
                time.sleep(0.02)
        yield Proxy(port, log, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Server:
    base_url: str
    state: MockState
    remotes: list[str] = field(default_factory=list)

    @property
    def delivery_url(self) -> str:
        return self.base_url + DELIVERY_PATH

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH


@asynccontextmanager
async def running_server(tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """The project's mock, noting the address each request came from."""
    app = make_app(MockConfig())
    remotes: list[str] = []

    @web.middleware
    async def note_remote(request: web.Request, handler: Callable[..., object]) -> object:
        remotes.append(request.remote or "?")
        return await handler(request)  # type: ignore[misc]

    app.middlewares.append(note_remote)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        port = runner.addresses[0][1]
        scheme = "https" if tls is not None else "http"
        yield Server(f"{scheme}://127.0.0.1:{port}", app[STATE_KEY], remotes)
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the client trusts it with --cacert)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("cert")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _events(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "events.jsonl"
    rows = [
        {"id": f"e{i}", "timestamp": 1717243200 + i / 100, "criteo-partner-id": 1,
         "retailer-visitor-id": f"v{i}", "event-type": "viewHome",
         "page-id": "viewHome_API_desktop"}
        for i in range(n)
    ]  # fmt: skip
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


@dataclass
class Ran:
    code: int
    stderr: str
    records: list[dict[str, object]]


async def adbatch(
    tmp_path: Path,
    server: Server,
    *args: str,
    env: dict[str, str] | None = None,
    n: int = 10,
    static: bool = False,
    command: tuple[str, ...] = ("run",),
) -> Ran:
    """`adbatch run` on n events against `server`, `env` added to a proxy-free
    environment; with dynamic tokens (the token client's calls are proxied too) unless
    `static` (the mock's static token: no token request)."""
    out = tmp_path / "out.jsonl"
    out.unlink(missing_ok=True)
    clean = {k: v for k, v in os.environ.items() if k.lower() not in _VARIABLES}
    argv = [sys.executable, "-m", "engine", *command, str(_events(tmp_path, n)), "-o", str(out),
            "--endpoint", server.delivery_url, "--no-progress", *args]  # fmt: skip
    if static:
        clean["ADBATCH_TOKEN"] = "mock-token"
    else:
        clean["ADBATCH_CLIENT_SECRET"] = "mock-secret"
        argv += ["--token-url", server.token_url, "--client-id", "mock-client"]
        argv += [] if "--token-wait" in args else ["--token-wait", "3"]
    clean |= env or {}
    done = await anyio.run_process(argv, env=clean, check=False)
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()] if out.exists() else []
    return Ran(done.returncode, done.stderr.decode(errors="replace"), records)


def _all_ok(ran: Ran, n: int) -> None:
    assert ran.code == 0, ran.stderr
    assert len(ran.records) == n
    assert all(r["ok"] for r in ran.records), ran.records[:2]


CLIENTS = pytest.mark.parametrize("client", ["http1", "session"])


@CLIENTS
async def test_http_calls_and_token_requests_go_through_http_proxy(
    tmp_path: Path, client: str
) -> None:
    with running_tinyproxy(tmp_path) as proxy:
        async with running_server() as server:
            ran = await adbatch(
                tmp_path, server, "--http-client", client, env={"HTTP_PROXY": proxy.url()}
            )
        _all_ok(ran, 10)
        carried = proxy.requests()
    gets = [r for r in carried if r.startswith(f"GET {server.delivery_url}?")]
    posts = [r for r in carried if r == f"POST {server.token_url}"]
    assert len(gets) == 10  # absolute form, one per call
    assert len(posts) == server.state.token_requests >= 1  # the token client too
    assert len(server.remotes) == 10 + len(posts)
    assert set(server.remotes) == {PROXY_SIDE}  # nothing went direct


@CLIENTS
async def test_https_goes_through_a_connect_tunnel_kept_alive(
    tmp_path: Path, certificate: tuple[Path, Path], client: str
) -> None:
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    async with running_server(tls) as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        with running_tinyproxy(tmp_path, connect_port=port) as proxy:
            ran = await adbatch(
                tmp_path, server, "--http-client", client, "-c", "4", "--cacert", str(cert),
                env={"https_proxy": proxy.url(), "HTTP_PROXY": "http://127.0.0.1:9"}, n=40,
            )  # fmt: skip
            _all_ok(ran, 40)
            carried = proxy.requests()
    assert carried, "nothing went through the proxy"
    assert set(carried) == {f"CONNECT 127.0.0.1:{port}"}
    # Tunnels are kept alive and reused: at most one per connection (4 delivery, and the
    # token client's), far fewer than the 40 calls.
    assert len(carried) <= 6
    assert len(server.remotes) == 40 + server.state.token_requests
    assert set(server.remotes) == {PROXY_SIDE}


@pytest.mark.slow
async def test_no_proxy_option_and_variable(tmp_path: Path) -> None:
    with running_tinyproxy(tmp_path) as proxy:
        async with running_server() as server:
            # NO_PROXY (any case; curl's rules) sends the calls to 127.0.0.1 direct.
            for variable in ("no_proxy", "NO_PROXY"):
                bypassed = await adbatch(
                    tmp_path, server, env={"HTTP_PROXY": proxy.url(), variable: "127.0.0.0/8"}
                )
                _all_ok(bypassed, 10)
            # --no-proxy ignores the variables.
            ignored = await adbatch(
                tmp_path, server, "--no-proxy", env={"http_proxy": "http://127.0.0.1:9"}
            )
            _all_ok(ignored, 10)
            assert proxy.requests() == []
            assert set(server.remotes) == {"127.0.0.1"}
            # --proxy overrides a dead proxy in the variables.
            server.remotes.clear()
            overridden = await adbatch(
                tmp_path, server, "--proxy", proxy.url(), env={"ALL_PROXY": "http://127.0.0.1:9"}
            )
            _all_ok(overridden, 10)
            assert set(server.remotes) == {PROXY_SIDE}
            assert len([r for r in proxy.requests() if r.startswith("GET ")]) == 10
            # The same from the config file; and no-proxy = true there.
            toml = tmp_path / "adbatch.toml"
            toml.write_text(f'proxy = "{proxy.url()}"\n')
            from_file = await adbatch(
                tmp_path, server, "--config", str(toml), env={"ALL_PROXY": "http://127.0.0.1:9"}
            )
            _all_ok(from_file, 10)
            assert len([r for r in proxy.requests() if r.startswith("GET ")]) == 20
            toml.write_text("no-proxy = true\n")
            direct = await adbatch(
                tmp_path, server, "--config", str(toml), env={"ALL_PROXY": "http://127.0.0.1:9"}
            )
            _all_ok(direct, 10)
            assert len([r for r in proxy.requests() if r.startswith("GET ")]) == 20


async def test_bad_proxy_settings_are_exit_2_and_mock_is_never_proxied(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if k.lower() not in _VARIABLES}
    events = str(_events(tmp_path, 5))
    base = [sys.executable, "-m", "engine", "run", events, "--no-progress", "-o"]
    cases = [
        ({"ALL_PROXY": "socks5://u:pw-s3cret@127.0.0.1:1080"}, [], "ALL_PROXY: only http://"),
        ({}, ["--proxy", "https://127.0.0.1:3128"], "--proxy: only http://"),
        ({}, ["--proxy", "http://127.0.0.1:3128", "--no-proxy"], "not both"),
    ]
    for env, args, message in cases:
        done = await anyio.run_process(
            [*base, str(tmp_path / "x.jsonl"), "--mock", *args], env=clean | env, check=False
        )
        stderr = done.stderr.decode()
        assert done.returncode == 2, stderr
        assert message in stderr
        assert "pw-s3cret" not in stderr
        assert len(stderr.strip().splitlines()) == 1
    # --mock: the embedded server is on this machine, never behind the (dead) proxy.
    done = await anyio.run_process(
        [*base, str(tmp_path / "m.jsonl"), "--mock"],
        env=clean | {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()


@CLIENTS
async def test_credentials_are_sent_and_never_shown(
    tmp_path: Path, certificate: tuple[Path, Path], client: str
) -> None:
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    async with running_server() as server, running_server(tls) as secure:
        port = int(secure.base_url.rsplit(":", 1)[1])
        with running_tinyproxy(tmp_path, connect_port=port, basic_auth=True) as proxy:
            good = await adbatch(
                tmp_path, server, "--http-client", client,
                env={"HTTP_PROXY": proxy.url(f"{USER}:{PASSWORD}@")},
            )  # fmt: skip
            _all_ok(good, 10)
            assert set(server.remotes) == {PROXY_SIDE}
            assert len([r for r in proxy.requests() if r.startswith("GET ")]) == 10
            # Wrong credentials for a CONNECT (tinyproxy 1.11 answers them 401, not 407).
            refused = await adbatch(
                tmp_path, secure, "--http-client", client, "--cacert", str(cert),
                env={"HTTPS_PROXY": proxy.url(f"{USER}:wrong-{PASSWORD}@")}, static=True,
            )  # fmt: skip
            # None at all: 407, to the token client's absolute-form POST.
            anonymous = await adbatch(
                tmp_path, server, "--http-client", client, env={"HTTP_PROXY": proxy.url()}
            )
    assert secure.remotes == []
    # A refused proxy: exit 3, one line naming the proxy (redacted), the credentials refused.
    assert refused.code == 3
    assert f"proxy http://[redacted]@127.0.0.1:{proxy.port} refused the credentials" in (
        refused.stderr
    )
    assert {r["error_kind"] for r in refused.records} == {"proxy"}
    assert anonymous.code == 3
    assert f"proxy http://127.0.0.1:{proxy.port} asks for credentials (HTTP 407" in (
        anonymous.stderr
    )
    for ran in (good, refused, anonymous):
        assert "Traceback" not in ran.stderr
        text = ran.stderr + orjson.dumps(ran.records).decode()
        assert PASSWORD not in text
        assert USER not in text


async def test_delivery_calls_refused_by_the_proxy_stop_the_run(tmp_path: Path) -> None:
    """A static token; the delivery calls meet a 407: the run stops at the first (exit 3),
    its record says `proxy` (sent again by --resume)."""
    with running_tinyproxy(tmp_path, basic_auth=True) as proxy:
        async with running_server() as server:
            ran = await adbatch(
                tmp_path, server, "-c", "1", "--proxy", proxy.url(), n=50, static=True
            )
    assert ran.code == 3
    assert server.remotes == []
    assert f"stopped: proxy http://127.0.0.1:{proxy.port} asks for credentials" in ran.stderr
    assert len(ran.records) < 50  # stopped early: the rest is not written
    assert {r["error_kind"] for r in ran.records} == {"proxy"}
    assert all(r["status"] is None for r in ran.records)


@pytest.mark.slow
@CLIENTS
async def test_dead_proxy_is_a_one_line_error_naming_it(tmp_path: Path, client: str) -> None:
    dead = _free_port()
    async with running_server() as server:
        ran = await adbatch(
            tmp_path, server, "--http-client", client, "--token-wait", "1",
            env={"HTTP_PROXY": f"http://{USER}:{PASSWORD}@127.0.0.1:{dead}"},
        )  # fmt: skip
        # The token endpoint, through the same dead proxy, gives no token: exit 3.
        assert ran.code == 3
        assert f"cannot connect to proxy http://[redacted]@127.0.0.1:{dead}" in ran.stderr
        assert PASSWORD not in ran.stderr
        assert "Traceback" not in ran.stderr
        assert len(ran.stderr.strip().splitlines()) <= 2  # the stop, and the summary
        # The delivery calls meet the dead proxy: connect records, retried, then the
        # fail-fast stop naming the proxy.
        ran = await adbatch(
            tmp_path, server, "--http-client", client, "--retries", "1", "-c", "2",
            "--proxy", f"http://127.0.0.1:{dead}", n=30, static=True,
        )  # fmt: skip
    assert ran.code == 3
    assert f"stopped: cannot connect to proxy http://127.0.0.1:{dead}: " in ran.stderr
    assert "check --proxy" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert ran.records
    assert {r["error_kind"] for r in ran.records} == {"connect"}
    assert {r["attempts"] for r in ran.records} == {2}  # retried, as an unreachable endpoint
    assert server.remotes == []


async def test_two_workers_send_through_the_proxy(tmp_path: Path) -> None:
    with running_tinyproxy(tmp_path) as proxy:
        async with running_server() as server:
            ran = await adbatch(
                tmp_path, server, "--workers", "2", "-c", "4",
                env={"http_proxy": proxy.url(f"{USER}:{PASSWORD}@")}, n=60,
            )  # fmt: skip
        _all_ok(ran, 60)
        gets = [r for r in proxy.requests() if r.startswith("GET ")]
    assert len(gets) == 60
    assert set(server.remotes) == {PROXY_SIDE}
    assert len({r["id"] for r in ran.records}) == 60


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("load", "--rate", "100", "--duration", "0.3s"), id="load"),
        pytest.param(("replay", "--speed", "10"), id="replay"),
    ],
)
async def test_load_and_replay_send_through_the_proxy(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    with running_tinyproxy(tmp_path) as proxy:
        async with running_server() as server:
            ran = await adbatch(
                tmp_path, server, command=command, env={"HTTPS_PROXY": "http://127.0.0.1:9",
                "http_proxy": proxy.url()}, n=20, static=True,
            )  # fmt: skip
        gets = [r for r in proxy.requests() if r.startswith("GET ")]
    assert ran.code == 0, ran.stderr
    answered = [r for r in ran.records if r["status"] is not None]
    assert answered
    assert all(r["ok"] for r in answered)
    assert len(gets) == len(answered) == len(server.remotes)
    assert set(server.remotes) == {PROXY_SIDE}
