"""nginx on 127.0.0.1 serving HTTPS with the certificates of `tls_pki`, for the TLS tests.

`nginx_tls(pki, work)` starts one nginx (not a daemon, its own prefix under `work`) with
one HTTPS listener per certificate of the PKI, and one that asks for a client
certificate (`ssl_verify_client on`, trusting the test CA). Every listener answers
`/delivery/retailmedia` with a small Criteo-shaped JSON body and `/oauth2/token` with a
token answer, and logs each request (`access.log`: listener, method, URI, client
certificate subject). Every listener offers HTTP/2 by ALPN (`http2`: the http2 client's
TLS tests); `calls()` reads a second log, one JSON object per request: listener,
protocol, peer address, status, URI and the headers the tests look at. Ports come back
by name: good, expired, wrong_host, self_signed, other_ca, mutual.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from tls_pki import Pki

#: The static answer of the delivery path (valid JSON, one line).
DELIVERY_BODY = '{"status":"OK","placements":[]}'
#: The token answer of the token path.
TOKEN_BODY = '{"access_token":"nginx-token","token_type":"Bearer","expires_in":900}'


def nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None


@dataclass(frozen=True, slots=True)
class NginxTls:
    ports: dict[str, int]
    log: Path
    calls_log: Path

    def url(self, name: str, path: str = "/delivery/retailmedia", host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.ports[name]}{path}"

    def logged(self, text: str, timeout: float = 5.0) -> bool:
        """Whether an access-log line holds `text`, waiting for it: nginx writes the line
        after the answer, so it may come a moment after the client read it."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.requests()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def requests(self) -> list[str]:
        """The access log's lines (`listener method uri client-subject`)."""
        if not self.log.exists():
            return []
        return self.log.read_text().splitlines()

    def calls(self) -> list[dict[str, Any]]:
        """Every request so far as `_CALLS` logs it (`protocol` is "HTTP/2.0" or "HTTP/1.1",
        `remote` the peer's address, headers absent as "")."""
        if not self.calls_log.exists():
            return []
        return [orjson.loads(line) for line in self.calls_log.read_bytes().splitlines()]

    def called(self, timeout: float = 5.0, **fields: str) -> dict[str, Any] | None:
        """The first call whose fields (`uri`, `protocol`, ...) are `fields`, waiting for
        nginx to log it (after its answer); None if none comes within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for call in self.calls():
                if all(call.get(k) == v for k, v in fields.items()):
                    return call
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)


#: One JSON object per request (nginx escapes the values): see NginxTls.calls.
_CALLS = (
    '\'{"listener":"$listener","protocol":"$server_protocol",'
    '"remote":"$remote_addr","status":"$status","uri":"$request_uri",'
    '"connection":"$connection",'
    '"client":"$ssl_client_s_dn",'
    '"user_agent":"$http_user_agent","referer":"$http_referer",'
    '"forwarded":"$http_x_forwarded_for","gateway":"$http_x_gateway",'
    '"team":"$http_x_team"}\''
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(name: str, port: int, cert: Path, key: Path, extra: str = "") -> str:
    return f"""
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        set $listener {name};
        {extra}
        location = /delivery/retailmedia {{ return 200 '{DELIVERY_BODY}'; }}
        location = /oauth2/token {{ return 200 '{TOKEN_BODY}'; }}
    }}"""


@contextmanager
def nginx_tls(pki: Pki, work: Path) -> Iterator[NginxTls]:
    binary = nginx()
    assert binary is not None
    work.mkdir(parents=True, exist_ok=True)
    certs = {
        "good": pki.good,
        "expired": pki.expired,
        "wrong_host": pki.wrong_host,
        "self_signed": pki.self_signed,
        "other_ca": pki.other_ca,
    }
    ports = {name: _free_port() for name in [*certs, "mutual"]}
    servers = [_server(name, ports[name], cert, pki.server_key) for name, cert in certs.items()]
    mutual = f"ssl_verify_client on; ssl_client_certificate {pki.ca};"
    servers.append(_server("mutual", ports["mutual"], pki.good, pki.server_key, mutual))
    log = work / "access.log"
    calls = work / "calls.log"
    temp = "\n".join(
        f"    {kind}_temp_path {work}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    conf = work / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format calls '$listener $request_method $request_uri $ssl_client_s_dn';
    log_format json escape=json {_CALLS};
    access_log {log} calls;
    access_log {calls} json;
    default_type application/json;
{temp}
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    {"".join(servers)}
}}
"""
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait(ports.values(), proc)
        yield NginxTls(ports, log, calls)
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


def _wait(ports: Iterable[int], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    for port in ports:
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
