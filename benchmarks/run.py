"""adbatch benchmarks: one invocation, one local server, every client side by side.

    python benchmarks/run.py                 # 20,000 events, 3 rounds, RSS check 10k vs 100k
    python benchmarks/run.py --events 500 --rounds 1 --rss-events 300 --quick   # smoke

Serves a fixed Criteo-shaped body from nginx when it is installed (it costs the 2-core
machine the least CPU), else from the project's mock (`python -m engine mock
--fixed-body`) in another process. Then, against that one server, with the same events
and concurrency: (a) benchmarks/baseline.py, the hand-written asyncio + aiohttp loop;
(b) `adbatch run` in one process; (c) `adbatch run --workers 2`; (d) wrk and hey where
installed (raw HTTP ceiling, one fixed URL, no JSONL). Each client runs as its own
process; events/s is input events over the process's wall time (start-up included, the
same for all), the median of the rounds; the peak RSS is the process tree's (workers
included). Every run's output is checked for one record per event.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "mock-token"
DELIVERY_PATH = "/delivery/retailmedia"
MIB = 1024 * 1024

_TYPES = {
    "viewHome": (),
    "viewSearchResult": ("keywords",),
    "viewCategory": ("category",),
    "viewItem": ("item", "price"),
    "viewBasket": ("item", "quantity"),
    "addToCart": ("item", "page-uid"),
}
_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
)
_WORDS = ("jeans", "running shoes", "espresso beans", "desk lamp", "tea set & cups", "héros")


def make_events(n: int, path: Path, seed: int = 6) -> None:
    """n Criteo-shaped page-view events as JSONL (deterministic)."""
    rng = random.Random(seed)
    types = list(_TYPES)
    with path.open("wb") as f:
        for i in range(n):
            etype = types[i % len(types)]
            event: dict[str, object] = {
                "id": f"pv-{i}",
                "timestamp": 1717243200 + i * 0.01,
                "criteo-partner-id": 12345,
                "retailer-visitor-id": f"rv-{rng.getrandbits(32):08x}",
                "event-type": etype,
                "page-id": f"{etype}_API_desktop",
                "user-agent": _UAS[i % 2],
                "ip": f"203.0.113.{i % 250}",
                "referer": "https://www.example-shop.com/",
                "environment": "d",
            }
            for key in _TYPES[etype]:
                if key == "keywords":
                    event[key] = rng.choice(_WORDS)
                elif key == "category":
                    event[key] = f"{rng.randint(1, 99)}>{rng.randint(100, 999)}"
                elif key == "item":
                    count = 1 if etype == "addToCart" else rng.randint(1, 3)
                    event[key] = [f"sku-{rng.randint(1, 10**6)}" for _ in range(count)]
                elif key == "price":
                    event[key] = round(rng.uniform(1, 200), 2)
                elif key == "quantity":
                    event[key] = rng.randint(1, 4)
                elif key == "page-uid":
                    event[key] = f"pu-{rng.getrandbits(24):06x}"
            f.write(orjson.dumps(event) + b"\n")


def fixed_body() -> bytes:
    """One realistic delivery answer (placements, products, beacons), ~2.7 KB."""
    sys.path.insert(0, str(ROOT))
    from engine.mock.bodies import delivery_body

    return delivery_body(
        (
            ("criteo-partner-id", "12345"),
            ("retailer-visitor-id", "rv-1"),
            ("event-type", "viewSearchResult"),
            ("page-id", "viewSearchResult_API_desktop"),
            ("keywords", "jeans"),
        )
    )


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


@contextlib.contextmanager
def nginx_server(work: Path, body: Path) -> Iterator[tuple[str, str]]:
    port = _free_port()
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
    server {{
        listen 127.0.0.1:{port};
        root {body.parent};
        location = {DELIVERY_PATH} {{
            default_type application/json;
            {_nginx_answer(body)}
        }}
    }}
}}
"""
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)], stderr=subprocess.PIPE)
    try:
        _wait_port(port, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{DELIVERY_PATH}?x=1") as answer:
            if answer.read() != body.read_bytes():
                raise RuntimeError("nginx does not serve the benchmark body byte for byte")
        version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
        yield f"http://127.0.0.1:{port}{DELIVERY_PATH}", version.replace("nginx version: ", "")
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


@contextlib.contextmanager
def mock_server(body: Path) -> Iterator[tuple[str, str]]:
    cmd = [sys.executable, "-m", "engine", "mock", "--port", "0", "--fixed-body", str(body)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.search(r"delivery (\S+)", line)
        if match is None:
            raise RuntimeError(f"the mock did not start: {line!r}")
        yield match.group(1), "adbatch mock (aiohttp.web, fixed body)"
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def _env(root: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# -- measuring one process (tree) ---------------------------------------------------------


def _tree_rss(pid: int) -> int:
    """Resident bytes of pid and its descendants, from /proc (0 when gone)."""
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


@dataclass(frozen=True, slots=True)
class Measure:
    seconds: float
    cpu: float  # user + system seconds of the process and its (joined) children
    peak_rss: int  # bytes: the tree's peak from /proc polling, or the largest process
    code: int
    stderr: str


def measure(argv: Sequence[str], *, stdin: Path | None = None, root: Path = ROOT) -> Measure:
    """Run `argv` (from `root`, whose engine package it imports) and measure it."""
    err = tempfile.TemporaryFile()
    src = stdin.open("rb") if stdin is not None else subprocess.DEVNULL
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=root, env=_env(root), stdin=src, stdout=err, stderr=err)
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            done.wait(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if stdin is not None:
        src.close()  # type: ignore[union-attr]
    err.seek(0)
    text = err.read().decode(errors="replace")
    err.close()
    peak = max(peak, usage.ru_maxrss * 1024)  # ru_maxrss is KiB on Linux
    cpu = usage.ru_utime + usage.ru_stime
    return Measure(seconds, cpu, peak, proc.returncode, text)


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


# -- the clients --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    rates: tuple[float, ...]
    peak_rss: int
    cpu_rates: tuple[float, ...] = ()  # events per CPU-second of the client

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu_rate(self) -> float | None:
        return statistics.median(self.cpu_rates) if self.cpu_rates else None


def client_commands(
    events: Path,
    out: Path,
    url: str,
    concurrency: int,
    workers: int,
    compare: tuple[str, Path] | None = None,
) -> list[tuple[str, list[str], Path]]:
    """(row name, argv, the root whose engine it runs); with `compare` (a name and a
    checkout of another version), that version's adbatch rows come right after ours."""
    py = sys.executable
    base = [py, str(ROOT / "benchmarks" / "baseline.py"), str(events), "-o", str(out)]
    base += ["--endpoint", url, "--token", TOKEN, "-c", str(concurrency)]
    run = [py, "-m", "engine", "run", str(events), "-o", str(out), "--endpoint", url]
    run += ["--token", TOKEN, "-c", str(concurrency), "--no-progress"]
    many = [*run, "--workers", str(workers)]
    rows = [
        ("baseline (asyncio + aiohttp)", base, ROOT),
        ("baseline on uvloop", [*base, "--uvloop"], ROOT),
        ("adbatch run, 1 process", run, ROOT),
    ]
    if compare is not None:
        rows.append((f"adbatch run, 1 process @ {compare[0]}", run, compare[1]))
    rows.append((f"adbatch run --workers {workers}", many, ROOT))
    if compare is not None:
        rows.append((f"adbatch run --workers {workers} @ {compare[0]}", many, compare[1]))
    return rows


def run_clients(
    events: Path,
    n: int,
    work: Path,
    url: str,
    *,
    concurrency: int,
    workers: int,
    rounds: int,
    compare: tuple[str, Path] | None = None,
) -> list[Row]:
    """Every client once per round, rounds interleaved (a neighbour's load hits all alike)."""
    out = work / "out.jsonl"
    commands = client_commands(events, out, url, concurrency, workers, compare)
    runs: dict[str, list[Measure]] = {name: [] for name, _, _ in commands}
    for _ in range(rounds):
        for name, argv, root in commands:
            m = measure(argv, root=root)
            got = count_lines(out) if out.exists() else 0
            if m.code not in (0, 1) or got != n:
                raise SystemExit(
                    f"{name}: exit {m.code}, {got} records for {n} events\n{m.stderr[-2000:]}"
                )
            out.unlink()
            runs[name].append(m)
    return [
        Row(
            name,
            tuple(n / m.seconds for m in ms),
            max(m.peak_rss for m in ms),
            tuple(n / m.cpu for m in ms if m.cpu > 0),
        )
        for name, ms in runs.items()
    ]


def _one_url(events: Path, url: str) -> str:
    """The first event's URL, for the raw-HTTP tools."""
    from urllib.parse import urlencode

    first = orjson.loads(events.open("rb").readline())
    params = {k: v for k, v in first.items() if k not in ("id", "timestamp", "user-agent", "ip")}
    return url + "?" + urlencode({k: str(v) for k, v in params.items()})


def run_tools(events: Path, url: str, *, concurrency: int, seconds: float) -> list[Row]:
    rows = []
    target = _one_url(events, url)
    auth = f"Authorization: Bearer {TOKEN}"
    if shutil.which("wrk"):
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "-H", auth, target]
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
        match = re.search(r"Requests/sec:\s+([\d.]+)", text)
        if match:
            rows.append(Row("wrk -t1 (raw HTTP, no output)", (float(match.group(1)),), 0))
    if shutil.which("hey"):
        cmd = ["hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-H", auth, target]
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
        match = re.search(r"Requests/sec:\s+([\d.]+)", text)
        if match:
            rows.append(Row("hey (raw HTTP, no output)", (float(match.group(1)),), 0))
    return rows


def rss_check(work: Path, url: str, small: int, large: int, concurrency: int) -> str:
    """Peak RSS of `adbatch run` on stdin: `large` events vs `small` events."""
    peaks = {}
    for n in (small, large):
        path = work / f"stdin-{n}.jsonl"
        make_events(n, path, seed=n)
        argv = [sys.executable, "-m", "engine", "run", "-", "-o", os.devnull]
        argv += ["--endpoint", url, "--token", TOKEN, "-c", str(concurrency), "--no-progress"]
        m = measure(argv, stdin=path)
        if m.code not in (0, 1):
            raise SystemExit(f"rss check ({n} events): exit {m.code}\n{m.stderr[-2000:]}")
        peaks[n] = m.peak_rss
        path.unlink()
    ratio = peaks[large] / peaks[small]
    verdict = "within 15%" if ratio <= 1.15 else "NOT within 15%"
    under = "under" if peaks[large] < 150 * MIB else "NOT under"
    return (
        f"Peak RSS on stdin, 1 process: {small:,} events {peaks[small] / MIB:.1f} MiB, "
        f"{large:,} events {peaks[large] / MIB:.1f} MiB: ratio {ratio:.3f} ({verdict}), "
        f"{under} 150 MiB."
    )


def checkout(rev: str, work: Path) -> Path:
    """The engine package of git revision `rev`, extracted under `work` (compiled)."""
    root = work / "compare"
    root.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "engine"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise SystemExit(f"--compare {rev}: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    compileall.compile_dir(str(root / "engine"), quiet=1)
    return root


# -- report -------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def table(rows: list[Row], baseline: float, one: float) -> str:
    lines = [
        "| client | events/s (median) | min-max | vs baseline | vs 1 process "
        "| events per CPU-s | peak RSS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        spread = f"{min(row.rates):,.0f}-{max(row.rates):,.0f}" if len(row.rates) > 1 else "-"
        rss = f"{row.peak_rss / MIB:.0f} MiB" if row.peak_rss else "-"
        cpu = f"{row.cpu_rate:,.0f}" if row.cpu_rate else "-"
        lines.append(
            f"| {row.name} | {row.rate:,.0f} | {spread} | {row.rate / baseline:.2f}x "
            f"| {row.rate / one:.2f}x | {cpu} | {rss} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="adbatch vs a hand-written aiohttp loop")
    p.add_argument("--events", type=int, default=50_000, help="events per run")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="processes for the --workers row")
    p.add_argument("--rounds", type=int, default=3, help="runs per client (median shown)")
    p.add_argument("--server", choices=("auto", "nginx", "mock"), default="auto")
    p.add_argument("--rss-events", type=int, default=100_000, help="large stdin run")
    p.add_argument("--rss-small", type=int, default=None, help="small run (default large/10)")
    p.add_argument("--no-rss", action="store_true", help="skip the RSS check")
    p.add_argument("--quick", action="store_true", help="no wrk/hey (smoke test)")
    p.add_argument("--tool-seconds", type=float, default=3.0)
    p.add_argument(
        "--compare",
        metavar="REV",
        help="also run the adbatch of git revision REV (e.g. a commit before a change), "
        "interleaved with this one's, for a before/after table from one run",
    )
    args = p.parse_args(argv)

    # Byte-compile the package, as `pip install` does: with PYTHONDONTWRITEBYTECODE set
    # (or a read-only checkout) every adbatch run would otherwise compile its modules
    # again at start-up, a cost no installed copy has.
    compileall.compile_dir(str(ROOT / "engine"), quiet=1)
    with tempfile.TemporaryDirectory(prefix="adbatch-bench-") as tmp:
        work = Path(tmp)
        compare = None if args.compare is None else (args.compare, checkout(args.compare, work))
        events = work / "events.jsonl"
        make_events(args.events, events)
        body = work / "body.json"
        body.write_bytes(fixed_body())
        use_nginx = args.server == "nginx" or (args.server == "auto" and shutil.which("nginx"))
        server = nginx_server(work, body) if use_nginx else mock_server(body)
        with server as (url, server_name):
            print(f"server: {server_name} at {url}", flush=True)
            print(f"machine: {machine()}", flush=True)
            print(
                f"{args.events:,} events, concurrency {args.concurrency}, "
                f"{args.rounds} round(s) per client",
                flush=True,
            )
            rows = run_clients(
                events,
                args.events,
                work,
                url,
                concurrency=args.concurrency,
                workers=args.workers,
                rounds=args.rounds,
                compare=compare,
            )
            if not args.quick:
                rows += run_tools(
                    events, url, concurrency=args.concurrency, seconds=args.tool_seconds
                )
            rss = None
            if not args.no_rss:
                small = args.rss_small or max(1, args.rss_events // 10)
                rss = rss_check(work, url, small, args.rss_events, args.concurrency)
    rate = {row.name: row.rate for row in rows}
    baseline = rate["baseline (asyncio + aiohttp)"]
    one, multi = rate["adbatch run, 1 process"], rate[f"adbatch run --workers {args.workers}"]
    print()
    print(table(rows, baseline, one))
    print()
    print(
        f"adbatch 1 process / baseline: {one / baseline:.2f}x (target 1.3x); "
        f"--workers {args.workers} / 1 process: {multi / one:.2f}x (target 1.6x)"
    )
    if compare is not None:
        before_one = rate[f"adbatch run, 1 process @ {args.compare}"]
        before_multi = rate[f"adbatch run --workers {args.workers} @ {args.compare}"]
        print(
            f"this version / {args.compare}: 1 process {one / before_one:.3f}x, "
            f"--workers {args.workers} {multi / before_multi:.3f}x"
        )
    if rss is not None:
        print(rss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
