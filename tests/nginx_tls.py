"""nginx on 127.0.0.1 serving HTTPS with the certificates of `tls_pki`, for the TLS tests.

`nginx_tls(pki, work)` starts one nginx (not a daemon, its own prefix under `work`) with
one HTTPS listener per certificate of the PKI, and one that asks for a client
certificate (`ssl_verify_client on`, trusting the test CA). Every listener answers
`/delivery/retailmedia` with a small Criteo-shaped JSON body and `/oauth2/token` with a
token answer, and logs each request (`access.log`: listener, method, URI, client
certificate subject). Ports come back by name: good, expired, wrong_host, self_signed,
other_ca, mutual.
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(name: str, port: int, cert: Path, key: Path, extra: str = "") -> str:
    return f"""
    server {{
        listen 127.0.0.1:{port} ssl;
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
    access_log {log} calls;
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
        yield NginxTls(ports, log)
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
