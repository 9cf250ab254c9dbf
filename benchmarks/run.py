"""adbatch benchmarks: one invocation, one local server, every client side by side.

    python benchmarks/run.py                 # 50,000 events, 3 rounds, RSS check 10k vs 100k
    python benchmarks/run.py --events 500 --rounds 1 --rss-events 300 --quick   # smoke

Serves a fixed Criteo-shaped body from nginx when it is installed (it costs the 2-core
machine the least CPU), over HTTP and over HTTPS with HTTP/2 offered (a CA made for the
run, benchmarks/certs.py), else from the project's mock (`python -m engine mock
--fixed-body`, HTTP only) in another process. Then, against that one server, with the
same events and concurrency: (a) benchmarks/baseline.py, the hand-written asyncio +
aiohttp loop; (b) `adbatch run` in one process; (c) `adbatch run --workers 2`; (d)
benchmarks/floor.py, the leanest Python client (a reference); (e) wrk and hey where
installed (one fixed URL, no JSONL; `hey -h2` over HTTPS). benchmarks/clients.py says
what each row runs. Each client runs as its own process; events/s is events over the
process's wall time (start-up included, the same for all), events per CPU-s is events
over the user + system time of the process and its children (`os.wait4`), the median
of the rounds; the hey column is that over hey's (over HTTPS, `hey -h2`'s); the peak
RSS is the process tree's (workers included). Every Python run's output is checked for one
record per event; wrk's and hey's events are the 2xx answers they report.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import importlib.util
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certs import make_certs_apart
from clients import (
    BASELINE,
    FIXED,
    FLOOR,
    HEY,
    HEY_H2,
    ONE,
    ONE_TLS,
    SEPARATE,
    TOKEN,
    Client,
    https_clients,
    python_clients,
    tool_clients,
)
from servers import (  # noqa: F401  (http2.py imports the helpers from here)
    DELIVERY_PATH,
    ROOT,
    Server,
    _env,
    _free_port,
    _nginx_answer,
    _wait_port,
    mock_server,
    nginx_server,
)

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


def measure(
    argv: Sequence[str],
    *,
    stdin: Path | None = None,
    root: Path = ROOT,
    env: dict[str, str] | None = None,
) -> Measure:
    """Run `argv` (from `root`, whose engine package it imports) and measure it: wall
    time, and the CPU of it and its children from `os.wait4` (ru_utime + ru_stime)."""
    err = tempfile.TemporaryFile()
    src = stdin.open("rb") if stdin is not None else subprocess.DEVNULL
    start = time.perf_counter()
    environ = {**_env(root), **(env or {})}
    proc = subprocess.Popen(argv, cwd=root, env=environ, stdin=src, stdout=err, stderr=err)
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
    tls: bool = False

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu_rate(self) -> float | None:
        return statistics.median(self.cpu_rates) if self.cpu_rates else None


def _events(client: Client, m: Measure, n: int, out: Path) -> int:
    """The events this run answered; exits with the client's output when it failed."""
    if client.count is not None:
        got = client.count(m.stderr)
        if m.code != 0 or got == 0:
            raise SystemExit(f"{client.name}: exit {m.code}, {got} answers\n{m.stderr[-2000:]}")
        return got
    got = count_lines(out) if out.exists() else 0
    if m.code not in (0, 1) or got != n:
        raise SystemExit(
            f"{client.name}: exit {m.code}, {got} records for {n} events\n{m.stderr[-2000:]}"
        )
    out.unlink()
    return n


def run_clients(clients: list[Client], n: int, out: Path, *, rounds: int) -> list[Row]:
    """Every client once per round, rounds interleaved (a neighbour's load hits all alike)."""
    runs: dict[str, list[tuple[int, Measure]]] = {c.name: [] for c in clients}
    for _ in range(rounds):
        for client in clients:
            m = measure(client.argv, root=client.root, env=client.env)
            runs[client.name].append((_events(client, m, n, out), m))
    return [
        Row(
            c.name,
            tuple(k / m.seconds for k, m in runs[c.name]),
            max(m.peak_rss for _, m in runs[c.name]) if c.count is None else 0,
            tuple(k / m.cpu for k, m in runs[c.name] if m.cpu > 0),
            c.tls,
        )
        for c in clients
    ]


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
    """The engine package of git revision `rev`, extracted under `work` (compiled); a
    folder that holds an engine/ is taken as it is (compiled)."""
    if (Path(rev) / "engine").is_dir():
        compileall.compile_dir(str(Path(rev) / "engine"), quiet=1)
        return Path(rev)
    root = work / f"compare-{len(list(work.iterdir()))}"
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


def _per_cpu(rows: list[Row]) -> dict[str, float]:
    return {row.name: row.cpu_rate for row in rows if row.cpu_rate}


def table(rows: list[Row], baseline: float, one: float) -> str:
    """The rows; the hey column is events per CPU-s over hey's (HTTPS rows: over hey -h2's)."""
    cpu_rate = _per_cpu(rows)
    lines = [
        "| client | events/s (median) | min-max | vs baseline | vs 1 process "
        "| events per CPU-s | min-max | × hey | peak RSS |",  # noqa: RUF001
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        spread = f"{min(row.rates):,.0f}-{max(row.rates):,.0f}" if len(row.rates) > 1 else "-"
        rss = f"{row.peak_rss / MIB:.0f} MiB" if row.peak_rss else "-"
        cpu = f"{row.cpu_rate:,.0f}" if row.cpu_rate else "-"
        cpus = row.cpu_rates
        cpu_spread = f"{min(cpus):,.0f}-{max(cpus):,.0f}" if len(cpus) > 1 else "-"
        ref = cpu_rate.get(HEY_H2 if row.tls else HEY)
        hey = f"{row.cpu_rate / ref:.2f}" if ref and row.cpu_rate else "-"
        lines.append(
            f"| {row.name} | {row.rate:,.0f} | {spread} | {row.rate / baseline:.2f}x "
            f"| {row.rate / one:.2f}x | {cpu} | {cpu_spread} | {hey} | {rss} |"
        )
    return "\n".join(lines)


def workers_cpu(rows: list[Row], workers: int) -> str:
    """Issue 18's --workers target: CPU per event at most 5% over one process's; and the
    same for N separate processes, the bound a parent that costs nothing would reach."""
    cpu_rate = _per_cpu(rows)
    one = cpu_rate.get(ONE)
    if one is None:
        return "CPU per event: no 1-process row"
    names = (f"adbatch run --workers {workers}", SEPARATE.format(n=workers))
    parts = [f"{name} {one / cpu_rate[name] - 1:+.1%}" for name in names if name in cpu_rate]
    return f"CPU per event over 1 process (target for --workers: <= +5%): {'; '.join(parts)}"


def targets(rows: list[Row]) -> str:
    """Issue 18's two ratios, said plainly: adbatch in one process per CPU-second against
    hey over HTTP and against hey -h2 over HTTPS; target >= 1.0 (1.2 is the aim)."""
    cpu_rate = _per_cpu(rows)
    parts, short = [], []
    for label, ours, ref in (("HTTP", ONE, HEY), ("HTTPS", ONE_TLS, HEY_H2)):
        versus = "hey -h2" if ref == HEY_H2 else "hey"
        if ours not in cpu_rate or ref not in cpu_rate:
            parts.append(f"{label}: not measured (no {versus if ours in cpu_rate else ours} row)")
            continue
        ratio = cpu_rate[ours] / cpu_rate[ref]
        parts.append(f"{label} {ratio:.2f}x {versus}")
        if ratio < 1.0:
            short.append(f"over {label} ({ratio:.2f}x)")
    measured = any("not measured" not in part for part in parts)
    verdict = (
        f"falls short {' and '.join(short)}"
        if short
        else ("met where measured" if measured else "nothing to compare")
    )
    return (
        f"adbatch 1 process, events per CPU-s: {'; '.join(parts)} "
        f"(target >= 1.0, aim 1.2): {verdict}"
    )


def budget(rows: list[Row]) -> str:
    """CPU per event (µs) of the reference points of issue 18, HTTP then HTTPS: hey; the
    transport alone (the floor client doing hey's work); the floor; adbatch. adbatch's
    work per event is its row less the transport's; hey's whole cost is the budget."""
    cpu_rate = _per_cpu(rows)
    points = (
        ("hey", HEY, HEY_H2),
        ("transport alone", FIXED, f"{FIXED}, HTTPS"),
        ("floor", FLOOR, f"{FLOOR}, HTTPS"),
        ("adbatch", ONE, ONE_TLS),
    )
    parts = []
    for label, http, https in points:
        cells = [f"{1e6 / cpu_rate[n]:.1f}" if n in cpu_rate else "-" for n in (http, https)]
        parts.append(f"{label} {' | '.join(cells)}")
    return f"CPU per event, µs (HTTP | HTTPS): {'; '.join(parts)}"


def _clients(
    args: argparse.Namespace,
    events: Path,
    out: Path,
    server: Server,
    compare: tuple[str, Path] | None,
) -> tuple[list[Client], list[str]]:
    clients = python_clients(
        events, out, server.url, concurrency=args.concurrency, workers=args.workers,
        compare=compare,
    )  # fmt: skip
    notes = []
    https = server.https_url if not args.no_https else None
    if https and server.ca is not None:
        clients += https_clients(
            events, out, https, server.ca, concurrency=args.concurrency, compare=compare
        )
    elif not args.no_https:
        notes.append(
            "no TLS listener (needs nginx, and cryptography or openssl): HTTPS rows skipped"
        )
    if importlib.util.find_spec("httptools") is None:
        clients = [c for c in clients if not c.name.startswith("floor")]
        notes.append("httptools not installed (pip install httptools): floor rows skipped")
    if not args.quick:
        tools, missing = tool_clients(
            events, args.events, server.url, https, concurrency=args.concurrency,
            seconds=args.tool_seconds,
        )  # fmt: skip
        clients += tools
        notes += missing
    return clients, notes


def _server(
    args: argparse.Namespace, work: Path, body: Path
) -> contextlib.AbstractContextManager[Server]:
    use_nginx = args.server == "nginx" or (args.server == "auto" and shutil.which("nginx"))
    if not use_nginx:
        return mock_server(body)
    certs = None if args.no_https else make_certs_apart(work / "pki")
    return nginx_server(work, body, certs)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="adbatch vs a hand-written aiohttp loop")
    p.add_argument("--events", type=int, default=50_000, help="events per run")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="processes for the --workers row")
    p.add_argument("--rounds", type=int, default=3, help="runs per client (median shown)")
    p.add_argument("--server", choices=("auto", "nginx", "mock"), default="auto")
    p.add_argument("--rss-events", type=int, default=100_000, help="large stdin run")
    p.add_argument("--rss-small", type=int, default=None, help="small run (default large/10)")
    p.add_argument("--no-rss", action="store_true", help="skip the RSS check")
    p.add_argument("--no-https", action="store_true", help="skip the HTTPS rows")
    p.add_argument("--quick", action="store_true", help="no wrk/hey (smoke test)")
    p.add_argument("--tool-seconds", type=float, default=3.0, help="wrk's duration (whole seconds)")
    p.add_argument(
        "--compare",
        metavar="REV",
        help="also run the adbatch of git revision REV (e.g. a commit before a change), "
        "interleaved with this one's, for a before/after table from one run",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
        with _server(args, work, body) as server:
            print(f"server: {server.name} at {server.url}", flush=True)
            if server.https_url:
                print(f"  and over TLS (HTTP/2 offered) at {server.https_url}", flush=True)
            print(f"machine: {machine()}", flush=True)
            print(
                f"{args.events:,} events, concurrency {args.concurrency}, "
                f"{args.rounds} round(s) per client",
                flush=True,
            )
            clients, notes = _clients(args, events, work / "out.jsonl", server, compare)
            for note in notes:
                print(f"note: {note}", flush=True)
            rows = run_clients(clients, args.events, work / "out.jsonl", rounds=args.rounds)
            rss = None
            if not args.no_rss:
                small = args.rss_small or max(1, args.rss_events // 10)
                rss = rss_check(work, server.url, small, args.rss_events, args.concurrency)
    rate = {row.name: row.rate for row in rows}
    baseline = rate[BASELINE]
    one, multi = rate[ONE], rate[f"adbatch run --workers {args.workers}"]
    print()
    print(table(rows, baseline, one))
    print()
    print(
        f"adbatch 1 process / baseline: {one / baseline:.2f}x (target 1.3x); "
        f"--workers {args.workers} / 1 process: {multi / one:.2f}x (target 1.6x)"
    )
    print(targets(rows))
    print(budget(rows))
    print(workers_cpu(rows, args.workers))
    if compare is not None:
        before_one = rate[f"{ONE} @ {args.compare}"]
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
