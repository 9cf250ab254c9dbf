"""Object storage throughput (issue 17 item 5): the same events to the same server, read
from and written to S3 against local files, side by side in one run.

    python benchmarks/storage.py                       # 50,000 events, 3 rounds
    python benchmarks/storage.py --events 300 --rounds 1 --server mock   # smoke

The store is moto's S3 server (`python -m moto.server`) on 127.0.0.1 in its own process,
reached the way a user reaches S3 (s3fs and botocore, AWS_ENDPOINT_URL); the delivery
server is nginx (or the project's mock), served and checked by benchmarks/servers.py;
the events are benchmarks/run.py's, gzipped. Rows, one `adbatch run` process each:

    local -> local    events.jsonl.gz       -o out.jsonl
    s3 -> local       s3://bench/events...  -o out.jsonl
    local -> s3       events.jsonl.gz       -o s3://bench/out/ads.jsonl
    s3 -> s3          s3://bench/events...  -o s3://bench/out/ads.jsonl
    local -> memory:// events.jsonl.gz      -o memory://bench/out/ads.jsonl

The last row writes parts and joins them with fsspec's in-memory store, in the adbatch
process: the part writer and the join without a store, so the S3 rows' difference from
it is the store's (moto's CPU on the same cores, the uploads' in this process).

events/s is over the process's wall time, the join at the end included (the object is
whole and its manifest written when the process exits); "during the calls" over the
run's own elapsed time (its --summary), which a store too slow for the part uploads
would lower (the writer waits when a full part is queued behind the one uploading);
"outside the calls" is the rest: start-up, the last part's upload and the join. events
per CPU-s is adbatch's own (moto's CPU is shown apart: on a real store it is not ours,
here it shares the machine's cores). Each run's output is
checked for one record per event, and that no part is left (but the memory:// row's,
which leaves with its process: its join checked the object's size). Then the store alone: one
PUT and one GET of a --part-size object, the MB/s moto gives one thread, against the MB/s
of records the local row writes: the store is a bottleneck when the second nears the first.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import TOKEN
from run import count_lines, fixed_body, machine, make_events, measure
from servers import ROOT, Server, _free_port, _wait_port, mock_server, nginx_server

MIB = 1 << 20
BUCKET = "bench"
IN_KEY = "in/events.jsonl.gz"
OUT_KEY = "out/ads.jsonl"
#: What the adbatch processes see: moto's endpoint, fake keys, no instance metadata.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/adbatch-bench",
    "AWS_CONFIG_FILE": "/nonexistent/adbatch-bench",
}


@dataclass(frozen=True, slots=True)
class Store:
    endpoint: str
    pid: int

    def env(self) -> dict[str, str]:
        return {**AWS_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self) -> Any:
        import boto3

        assert self.endpoint.startswith("http://127.0.0.1:")
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip

    def cpu(self) -> float:
        """moto's user + system CPU seconds so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def moto_store() -> Iterator[Store]:
    port = _free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, timeout=60)
        yield Store(f"http://127.0.0.1:{port}", proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    source: str  # "local" or "s3"
    target: str


CASES = (
    Case("local -> local", "local", "local"),
    Case("s3 -> local", "s3", "local"),
    Case("local -> s3", "local", "s3"),
    Case("s3 -> s3", "s3", "s3"),
    Case("local -> memory://", "local", "memory"),
)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    rates: tuple[float, ...]
    call_rates: tuple[float, ...]  # events over the summary's elapsed_s: the calls alone
    cpu_rates: tuple[float, ...]
    store_cpu: tuple[float, ...]
    tails: tuple[float, ...]  # wall seconds outside the calls: start-up, last part, join
    peak_rss: int
    joined: str


def argv_of(
    case: Case, events: Path, out: Path, server: Server, args: argparse.Namespace
) -> list[str]:
    source = f"s3://{BUCKET}/{IN_KEY}" if case.source == "s3" else str(events)
    targets = {"s3": f"s3://{BUCKET}/{OUT_KEY}", "memory": f"memory://{BUCKET}/{OUT_KEY}"}
    target = targets.get(case.target, str(out))
    argv = [sys.executable, "-m", "engine", "run", source, "-o", target, "--endpoint", server.url]
    argv += ["--token", TOKEN, "-c", str(args.concurrency), "--no-progress"]
    argv += ["--summary", str(out.with_name("summary.json"))]
    if case.target != "local" and args.part_size:
        argv += ["--part-size", args.part_size]
    return argv


def check_output(case: Case, store: Store, out: Path, n: int) -> str:
    """One record per event (exits when not); how the parts were joined."""
    if case.target == "local":
        got, joined = count_lines(out), "-"
        out.unlink()
    elif case.target == "memory":  # gone with the process; its join checked the size
        got, joined = n, "in memory"
    else:
        s3 = store.client()
        body = s3.get_object(Bucket=BUCKET, Key=OUT_KEY)["Body"].read()
        got = body.count(b"\n")
        manifest = orjson.loads(
            s3.get_object(Bucket=BUCKET, Key=OUT_KEY + ".manifest.json")["Body"].read()
        )
        joined = f"{manifest['joined']}, {len(manifest['parts'])} part(s)"
        left = s3.list_objects_v2(Bucket=BUCKET, Prefix=OUT_KEY + ".parts/").get("KeyCount", 0)
        if left:
            raise SystemExit(f"{case.name}: {left} parts left after the join")
        for key in (OUT_KEY, OUT_KEY + ".manifest.json"):
            s3.delete_object(Bucket=BUCKET, Key=key)
    if got != n:
        raise SystemExit(f"{case.name}: {got} records for {n} events")
    return joined


def run_cases(
    args: argparse.Namespace, events: Path, out: Path, server: Server, store: Store
) -> list[Row]:
    runs: dict[str, list[tuple[float, float, float, int, str, float]]]
    runs = {c.name: [] for c in CASES}
    for _ in range(args.rounds):
        for case in CASES:  # rounds interleaved: a neighbour's load hits every row alike
            before = store.cpu()
            m = measure(argv_of(case, events, out, server, args), env=store.env())
            if m.code != 0:
                raise SystemExit(f"{case.name}: exit {m.code}\n{m.stderr[-2000:]}")
            joined = check_output(case, store, out, args.events)
            summary = orjson.loads(out.with_name("summary.json").read_bytes())["summary"]
            calls = float(summary["elapsed_s"])
            runs[case.name].append(
                (m.seconds, m.cpu, store.cpu() - before, m.peak_rss, joined, calls)
            )
    return [
        Row(
            c.name,
            tuple(args.events / s for s, *_ in runs[c.name]),
            tuple(args.events / r[5] for r in runs[c.name]),
            tuple(args.events / cpu for _, cpu, *_ in runs[c.name] if cpu > 0),
            tuple(r[2] for r in runs[c.name]),
            tuple(r[0] - r[5] for r in runs[c.name]),
            max(r[3] for r in runs[c.name]),
            runs[c.name][-1][4],
        )
        for c in CASES
    ]


def store_alone(store: Store, size: int) -> tuple[float, float]:
    """MB/s of one PUT and one GET of `size` bytes (one thread, as the part uploader)."""
    s3 = store.client()
    data = os.urandom(size)
    start = time.perf_counter()
    s3.put_object(Bucket=BUCKET, Key="alone", Body=data)
    put = time.perf_counter() - start
    start = time.perf_counter()
    s3.get_object(Bucket=BUCKET, Key="alone")["Body"].read()
    get = time.perf_counter() - start
    s3.delete_object(Bucket=BUCKET, Key="alone")
    return size / MIB / put, size / MIB / get


def table(rows: list[Row]) -> str:
    local = statistics.median(rows[0].rates)
    lines = [
        "| rows | events/s | vs local | during the calls | events per CPU-s "
        "| outside the calls | moto CPU-s | peak RSS | join |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        rate = statistics.median(row.rates)
        cpu = statistics.median(row.cpu_rates) if row.cpu_rates else 0.0
        lines.append(
            f"| {row.name} | {rate:,.0f} | {rate / local:.2f}x | "
            f"{statistics.median(row.call_rates):,.0f}/s | {cpu:,.0f} | "
            f"{statistics.median(row.tails):.1f} s | "
            f"{statistics.median(row.store_cpu):.1f} | {row.peak_rss / MIB:.0f} MiB | "
            f"{row.joined} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="adbatch: S3 in and out against local files")
    p.add_argument("--events", type=int, default=50_000, help="events per run")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="runs per row (median shown)")
    p.add_argument("--server", choices=("auto", "nginx", "mock"), default="auto")
    p.add_argument("--part-size", default=None, help="-o s3:// --part-size (default: adbatch's)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    compileall.compile_dir(str(ROOT / "engine"), quiet=1)
    with tempfile.TemporaryDirectory(prefix="adbatch-bench-s3-") as tmp:
        work = Path(tmp)
        plain = work / "events.jsonl"
        make_events(args.events, plain)
        events = work / "events.jsonl.gz"
        events.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=6))
        body = work / "body.json"
        body.write_bytes(fixed_body())
        use_nginx = args.server == "nginx" or (args.server == "auto" and shutil.which("nginx"))
        serving = nginx_server(work, body) if use_nginx else mock_server(body)
        with serving as server, moto_store() as store:
            s3 = store.client()
            s3.create_bucket(Bucket=BUCKET)
            s3.put_object(Bucket=BUCKET, Key=IN_KEY, Body=events.read_bytes())
            print(f"server: {server.name} at {server.url}; store: moto at {store.endpoint}")
            print(f"machine: {machine()}")
            size = events.stat().st_size / MIB
            print(f"{args.events:,} events ({size:.1f} MiB gzipped), concurrency "
                  f"{args.concurrency}, {args.rounds} round(s) per row", flush=True)  # fmt: skip
            rows = run_cases(args, events, work / "out.jsonl", server, store)
            put, get = store_alone(store, 64 * MIB)
    print()
    print(table(rows))
    local = statistics.median(rows[0].rates)
    record_mb = local * len(fixed_body()) * 1.15 / MIB  # a record embeds the answer
    print()
    print(f"store alone, one thread: PUT {put:,.0f} MB/s, GET {get:,.0f} MB/s of 64 MiB; "
          f"the local row writes about {record_mb:,.0f} MB/s of records")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
