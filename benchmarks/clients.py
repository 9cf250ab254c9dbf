"""The benchmark's clients, as commands: what each row runs and how its events are counted.

Python clients (the baseline, adbatch, the floor) read the events file and write one
JSONL record per event: their events are the input's, checked against the records.
wrk and hey send one fixed URL (the first event's query) with no input and no output:
their events are the requests answered 2xx, parsed from their own report (`hey -n N`
sends a fixed count, `wrk -d` runs for a duration). Every client gets the same
concurrency (connections; hey's workers, which over HTTP/2 share connections as Go's
transport decides). Over HTTPS the Python clients trust the benchmark's CA (`--cacert`,
or SSL_CERT_FILE for the baseline); wrk and hey do not verify certificates.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import orjson

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "mock-token"

#: The per-CPU-second references: hey over HTTP, `hey -h2` over HTTPS.
HEY = "hey (Go, raw HTTP)"
HEY_H2 = "hey -h2 (Go, raw HTTP/2), HTTPS"
ONE = "adbatch run, 1 process"
ONE_TLS = "adbatch run, 1 process, HTTPS"
BASELINE = "baseline (asyncio + aiohttp)"
FLOOR = "floor (httptools + uvloop, reference)"


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    argv: list[str]
    root: Path = ROOT  # whose engine package it imports (--compare runs another)
    tls: bool = False
    env: dict[str, str] = field(default_factory=dict)
    # events from the client's own output (wrk, hey); None: one record per input event
    count: Callable[[str], int] | None = None


def parse_hey(text: str) -> int:
    """Responses with a 2xx status in hey's "Status code distribution"."""
    return sum(int(n) for n in re.findall(r"\[2\d\d\]\s+(\d+) responses", text))


def parse_wrk(text: str) -> int:
    """wrk's "N requests in Xs" less its "Non-2xx or 3xx responses: M" (0 when absent)."""
    done = re.search(r"(\d+) requests in [\d.]+\w+", text)
    if done is None:
        return 0
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return int(done.group(1)) - (int(bad.group(1)) if bad else 0)


def _takes(root: Path, option: str) -> bool:
    """Whether the adbatch at `root` (a --compare checkout) has `option` in `run --help`."""
    argv = [sys.executable, "-m", "engine", "run", "--help"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, check=False)
    return option in done.stdout


def one_url(events: Path, url: str) -> str:
    """The first event's URL, for the raw-HTTP tools."""
    with events.open("rb") as f:
        first = orjson.loads(f.readline())
    params = {k: v for k, v in first.items() if k not in ("id", "timestamp", "user-agent", "ip")}
    return url + "?" + urlencode({k: str(v) for k, v in params.items()})


def python_clients(
    events: Path,
    out: Path,
    url: str,
    *,
    concurrency: int,
    workers: int,
    compare: tuple[str, Path] | None = None,
) -> list[Client]:
    """The HTTP rows of the Python clients; with `compare` (a name and a checkout of
    another version), that version's adbatch rows come right after ours."""
    py = sys.executable
    base = [py, str(ROOT / "benchmarks" / "baseline.py"), str(events), "-o", str(out)]
    base += ["--endpoint", url, "--token", TOKEN, "-c", str(concurrency)]
    run = [py, "-m", "engine", "run", str(events), "-o", str(out), "--endpoint", url]
    run += ["--token", TOKEN, "-c", str(concurrency), "--no-progress"]
    many = [*run, "--workers", str(workers)]
    floor = [py, str(ROOT / "benchmarks" / "floor.py"), str(events), "-o", str(out)]
    floor += ["--endpoint", url, "--token", TOKEN, "-c", str(concurrency)]
    rows = [
        Client(BASELINE, base),
        Client("baseline on uvloop", [*base, "--uvloop"]),
        Client(ONE, run),
    ]
    if compare is not None:
        rows.append(Client(f"{ONE} @ {compare[0]}", run, compare[1]))
    rows.append(Client(f"adbatch run --workers {workers}", many))
    if compare is not None:
        rows.append(Client(f"adbatch run --workers {workers} @ {compare[0]}", many, compare[1]))
    rows.append(Client(FLOOR, floor))
    rows.append(fixed_floor(events, url))
    rows.append(separate_processes(events, out, url, concurrency=concurrency, parts=workers))
    return rows


#: The transport alone: the floor client doing hey's work (no input, no output, no JSON).
FIXED = "floor, hey's work: one fixed URL (reference)"


def fixed_floor(events: Path, url: str, ca: Path | None = None) -> Client:
    """The floor client sending hey's one URL as many times as there are events, every
    answer dropped: what Python's transport costs per call before adbatch's work."""
    with events.open("rb") as f:
        n = sum(1 for _ in f)
    argv = [sys.executable, str(ROOT / "benchmarks" / "floor.py"), "--fixed", str(n)]
    argv += ["--endpoint", one_url(events, url), "--token", TOKEN]
    if ca is not None:
        argv += ["--cacert", str(ca)]
        return Client(f"{FIXED}, HTTPS", argv, tls=True, count=parse_answered)
    return Client(FIXED, argv, count=parse_answered)


def parse_answered(text: str) -> int:
    """The 2xx answers of `floor.py --fixed` (its `answered N` line)."""
    found = re.search(r"^answered (\d+)$", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


#: The row that bounds `--workers N` from below: N plain processes, no parent.
SEPARATE = "{n} separate processes, 1/{n} of the input each (reference)"


def separate_processes(
    events: Path, out: Path, url: str, *, concurrency: int, parts: int
) -> Client:
    """N independent `adbatch run`s at the same time, each on its own N-th of the input
    (cut before the run, not measured) at concurrency/N: what `--workers N` would cost
    with a parent that costs nothing. The machine's other costs of running N processes
    at once (each at a part of the concurrency, sharing the CPUs with the server) are in
    it, so the gap between this row and one process is not `--workers`' own."""
    with events.open("rb") as f:
        share = -(-sum(1 for _ in f) // parts)
    names = [events.with_name(f"{events.stem}.part{i}.jsonl") for i in range(parts)]
    # Streamed, not read whole: a child's peak RSS (ru_maxrss) starts at this process's
    # size when it is forked, so a large benchmark process would show in every row.
    with events.open("rb") as f:
        for name in names:
            with name.open("wb") as part:
                part.writelines(itertools.islice(f, share))
    runs = []
    for i, part in enumerate(names):
        output = out.with_name(f"{out.stem}.part{i}.jsonl")
        argv = [sys.executable, "-m", "engine", "run", str(part), "-o", str(output)]
        argv += ["--endpoint", url, "--token", TOKEN, "--no-progress"]
        argv += ["-c", str(max(1, -(-concurrency // parts)))]
        runs.append(f'rm -f {shlex.quote(str(output))}; {shlex.join(argv)} & pids="$pids $!";')
    # Each run waited for by its pid: a part that fails fails the row (a bare `wait`
    # exits 0 whatever its children did).
    wait = "rc=0; for p in $pids; do wait $p || rc=1; done; exit $rc"
    script = " ".join(["pids='';", *runs, wait])
    return Client(SEPARATE.format(n=parts), ["sh", "-c", script], count=parse_summaries)


def parse_summaries(text: str) -> int:
    """Events answered, summed over every `adbatch run` summary line in `text`."""
    return sum(int(n) for n in re.findall(r"^adbatch: (\d+) events in", text, re.MULTILINE))


def https_clients(
    events: Path,
    out: Path,
    url: str,
    ca: Path,
    *,
    concurrency: int,
    compare: tuple[str, Path] | None = None,
) -> list[Client]:
    """The HTTPS rows of the Python clients (HTTP/1.1 over TLS), trusting `ca`."""
    py = sys.executable
    run = [py, "-m", "engine", "run", str(events), "-o", str(out), "--endpoint", url]
    run += ["--token", TOKEN, "-c", str(concurrency), "--no-progress", "--cacert", str(ca)]
    base = [py, str(ROOT / "benchmarks" / "baseline.py"), str(events), "-o", str(out)]
    base += ["--endpoint", url, "--token", TOKEN, "-c", str(concurrency), "--uvloop"]
    floor = [py, str(ROOT / "benchmarks" / "floor.py"), str(events), "-o", str(out)]
    floor += ["--endpoint", url, "--token", TOKEN, "-c", str(concurrency), "--cacert", str(ca)]
    rows = [
        Client("baseline on uvloop, HTTPS", base, tls=True, env={"SSL_CERT_FILE": str(ca)}),
        Client(ONE_TLS, run, tls=True),
    ]
    if compare is not None and _takes(compare[1], "--cacert"):
        rows.append(Client(f"{ONE_TLS} @ {compare[0]}", run, compare[1], tls=True))
    elif compare is not None:
        print(f"note: the adbatch of {compare[0]} has no --cacert: no HTTPS row for it")
    rows.append(Client(f"{FLOOR}, HTTPS", floor, tls=True))
    rows.append(fixed_floor(events, url, ca))
    return rows


def tool_clients(
    events: Path,
    n: int,
    url: str,
    https_url: str | None,
    *,
    concurrency: int,
    seconds: float,
) -> tuple[list[Client], list[str]]:
    """wrk and hey rows over HTTP (and HTTPS when there is a TLS listener), and a note
    for each row skipped because its program is missing."""
    auth = f"Authorization: Bearer {TOKEN}"
    http, https = one_url(events, url), one_url(events, https_url) if https_url else None
    rows: list[Client] = []
    notes: list[str] = []
    if shutil.which("wrk"):
        # wrk takes whole seconds only
        wrk = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-H", auth]
        rows.append(Client("wrk -t1 (C, raw HTTP)", [*wrk, http], count=parse_wrk))
        if https:
            rows.append(Client("wrk -t1 (C, raw HTTP), HTTPS", [*wrk, https], tls=True,
                               count=parse_wrk))  # fmt: skip
    else:
        notes.append("wrk not installed (apt-get install wrk): its rows are skipped")
    if shutil.which("hey"):
        hey = ["hey", "-n", str(max(n, concurrency)), "-c", str(concurrency), "-H", auth]
        rows.append(Client(HEY, [*hey, http], count=parse_hey))
        if https:
            rows.append(Client("hey (Go, raw HTTP), HTTPS", [*hey, https], tls=True,
                               count=parse_hey))  # fmt: skip
            rows.append(Client(HEY_H2, [*hey, "-h2", https], tls=True, count=parse_hey))
    else:
        notes.append(
            "hey not installed (apt-get install hey): its rows and the hey ratios are skipped"
        )
    return rows, notes
