"""--http2 beside http1 and session, against one nginx over TLS (HTTP/2 offered by ALPN).

    python benchmarks/http2.py                       # 20,000 events, 3 rounds, -c 64
    python benchmarks/http2.py --events 2000 --rounds 1    # quick

The same Criteo-shaped events and fixed answer as benchmarks/run.py, served by nginx with
`listen ... ssl http2` and a self-signed certificate made with openssl (trusted through
SSL_CERT_FILE). Each client runs `adbatch run` as its own process, rounds interleaved;
events/s (wall, start-up included) and events per CPU-second of the client are medians.
The access log is checked: every call of the http2 rows must be HTTP/2.0, the others
HTTP/1.1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    DELIVERY_PATH,
    ROOT,
    TOKEN,
    _free_port,
    _nginx_answer,
    _wait_port,
    count_lines,
    fixed_body,
    machine,
    make_events,
    measure,
)


@contextlib.contextmanager
def nginx_h2(work: Path, body: Path) -> Iterator[tuple[str, Path, Path]]:
    """(URL, certificate, access log) of nginx serving `body` over TLS with HTTP/2."""
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = _free_port()
    log = work / "access.log"
    temps = "".join(f"    {k}_temp_path {work}/{k};\n" for k in ("client_body", "proxy", "fastcgi"))
    (work / "nginx.conf").write_text(
        f"""
daemon off;
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections 1024; }}
http {{
    log_format protocol '$server_protocol';
    access_log {log} protocol;
{temps}    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {body.parent};
        location = {DELIVERY_PATH} {{ default_type application/json; {_nginx_answer(body)} }}
    }}
}}
"""
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(work / "nginx.conf"), "-p", str(work)])
    try:
        _wait_port(port, proc)
        yield f"https://127.0.0.1:{port}{DELIVERY_PATH}", cert, log
    finally:
        proc.terminate()
        proc.wait(5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-c", "--concurrency", type=int, default=64)
    args = p.parse_args()
    clients = {"http1": [], "session": [], "http2": ["--http2"]}
    with tempfile.TemporaryDirectory(prefix="adbatch-h2-") as tmp:
        work = Path(tmp)
        events, body, out = work / "events.jsonl", work / "body.json", work / "out.jsonl"
        make_events(args.events, events)
        body.write_bytes(fixed_body())
        with nginx_h2(work, body) as (url, cert, log):
            os.environ["SSL_CERT_FILE"] = str(cert)  # measure() passes the environment on
            print(f"machine: {machine()}; nginx over TLS at {url}", flush=True)
            rates: dict[str, list[float]] = {name: [] for name in clients}
            cpu: dict[str, list[float]] = {name: [] for name in clients}
            protocols: dict[str, Counter[str]] = {name: Counter() for name in clients}
            for _ in range(args.rounds):
                for name, extra in clients.items():
                    argv = [sys.executable, "-m", "engine", "run", str(events), "-o", str(out)]
                    argv += ["--endpoint", url, "--token", TOKEN, "--no-progress"]
                    argv += ["-c", str(args.concurrency), "--http-client", name]
                    if extra:
                        argv = [a for a in argv if a not in ("--http-client", name)] + extra
                    before = log.stat().st_size if log.exists() else 0
                    m = measure(argv, root=ROOT)
                    got = count_lines(out)
                    if m.code != 0 or got != args.events:
                        raise SystemExit(
                            f"{name}: exit {m.code}, {got} records\n{m.stderr[-2000:]}"
                        )
                    out.unlink()
                    rates[name].append(args.events / m.seconds)
                    cpu[name].append(args.events / m.cpu)
                    with log.open() as f:
                        f.seek(before)
                        protocols[name].update(f.read().split())
    print(f"\n{args.events:,} events, -c {args.concurrency}, {args.rounds} round(s)\n")
    print("| client | events/s (median) | min-max | events per CPU-s | protocol at nginx |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name in clients:
        r = rates[name]
        seen = ", ".join(f"{k} x{v:,}" for k, v in sorted(protocols[name].items()))
        print(
            f"| {name} | {statistics.median(r):,.0f} | {min(r):,.0f}-{max(r):,.0f} "
            f"| {statistics.median(cpu[name]):,.0f} | {seen} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
