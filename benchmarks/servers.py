"""The benchmark's server: nginx (HTTP, and HTTPS with HTTP/2 when certificates can be
made) or the project's mock, each in its own process, serving one fixed body.

`nginx_server(work, body, certs)` yields a `Server`: the plain URL, the HTTPS URL (None
without `certs`), the CA that signed nginx's certificate, and nginx's version. The TLS
listener offers HTTP/2 by ALPN (`listen ... ssl http2`) for `hey -h2`; HTTP/1.1 clients
(adbatch, wrk, the floor client) negotiate nothing and speak HTTP/1.1 over it. Both
listeners are checked to serve the body byte for byte before anything is measured.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from certs import Certs

ROOT = Path(__file__).resolve().parent.parent
DELIVERY_PATH = "/delivery/retailmedia"


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    name: str
    https_url: str | None = None
    ca: Path | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout:g}s")


def _nginx_answer(body: Path) -> str:
    """The body from memory (`return 200 '...'`): 39 µs of nginx CPU per answer on the
    benchmark machine against 60 µs for the file (`try_files`). The server shares the
    two cores with the clients, so the less it takes, the more the numbers are the
    clients'. Falls back to the file when the body has a character `return` would
    interpret."""
    text = body.read_text(encoding="utf-8")
    if "$" in text or "'" in text:
        return f"try_files /{body.name} =404;"
    return "return 200 '" + text.replace("\\", "\\\\") + "';"


def _tls_block(port: int, certs: Certs, location: str) -> str:
    return f"""
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {certs.cert};
        ssl_certificate_key {certs.key};
        ssl_session_cache shared:bench:1m;
{location}    }}"""


def _check(url: str, body: Path, ca: Path | None = None) -> None:
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    with urllib.request.urlopen(f"{url}?x=1", context=context) as answer:
        if answer.read() != body.read_bytes():
            raise RuntimeError(f"nginx does not serve the benchmark body byte for byte: {url}")


@contextlib.contextmanager
def nginx_server(work: Path, body: Path, certs: Certs | None = None) -> Iterator[Server]:
    port = _free_port()
    tls_port = _free_port() if certs is not None else 0
    location = f"""        root {body.parent};
        location = {DELIVERY_PATH} {{
            default_type application/json;
            {_nginx_answer(body)}
        }}
"""
    tls = _tls_block(tls_port, certs, location) if certs is not None else ""
    conf = work / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx_body;
    proxy_temp_path {work}/nginx_proxy;
    fastcgi_temp_path {work}/nginx_fastcgi;
    uwsgi_temp_path {work}/nginx_uwsgi;
    scgi_temp_path {work}/nginx_scgi;
    keepalive_requests 1000000;
    http2_max_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
{location}    }}{tls}
}}
"""
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)], stderr=subprocess.PIPE)
    try:
        _wait_port(port, proc)
        url = f"http://127.0.0.1:{port}{DELIVERY_PATH}"
        _check(url, body)
        https = None
        if certs is not None:
            _wait_port(tls_port, proc)
            https = f"https://127.0.0.1:{tls_port}{DELIVERY_PATH}"
            _check(https, body, certs.ca)
        version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
        name = version.replace("nginx version: ", "")
        yield Server(url, name, https, certs.ca if certs is not None else None)
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


@contextlib.contextmanager
def mock_server(body: Path) -> Iterator[Server]:
    cmd = [sys.executable, "-m", "engine", "mock", "--port", "0", "--fixed-body", str(body)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.search(r"delivery (\S+)", line)
        if match is None:
            raise RuntimeError(f"the mock did not start: {line!r}")
        yield Server(match.group(1), "adbatch mock (aiohttp.web, fixed body)")
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def _env(root: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return env
