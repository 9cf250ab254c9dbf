"""The input side alone: microseconds of CPU per event, no network (issue 18).

    python benchmarks/parse.py                        # 60,000 events, 5 rounds
    python benchmarks/parse.py --compare HEAD~3       # before/after in one run
    python benchmarks/parse.py --events 2000 --rounds 1   # smoke

The events are benchmarks/run.py's Criteo-shaped ones. Three paths, each timed in its
own process (CPU time, `time.process_time`, the best of the rounds, rounds interleaved
between the versions so a busy machine slows both alike):

- `items`: `read_items` + `RequestBuilder.build`, what one `adbatch run` process does;
- `parent`: `read_units` + `Units.of` + pickling, what a `--workers` parent does;
- `child`: unpickling + `Units.items` + `build`, what a `--workers` child does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, checkout, make_events

PATHS = ("items", "parent", "child")

# Run in a child process with the version under test first on sys.path.
_PROBE = r"""
import pickle, sys, time
from engine.core.query import RequestBuilder
from engine.files.sources import read_items, read_units
from engine.multiproc.messages import Units
from engine.core.events import EventDefaults

path, which, batch = sys.argv[1], sys.argv[2], 512
builder = RequestBuilder("http://127.0.0.1:1/delivery?x=1", user_agent="adbatch")
defaults = EventDefaults()
if which == "items":
    start = time.process_time()
    n = 0
    for item in read_items([path]):
        if hasattr(item, "params"):
            builder.build(item)
        n += 1
elif which == "parent":
    start = time.process_time()
    n, part = 0, []
    for unit in read_units([path]):
        part.append(unit)
        if len(part) == batch:
            pickle.dumps(Units.of(part), protocol=pickle.HIGHEST_PROTOCOL)
            n += len(part)
            part = []
    pickle.dumps(Units.of(part), protocol=pickle.HIGHEST_PROTOCOL)
    n += len(part)
else:
    units = list(read_units([path]))
    blobs = [
        pickle.dumps(Units.of(units[i : i + batch]), protocol=pickle.HIGHEST_PROTOCOL)
        for i in range(0, len(units), batch)
    ]
    start = time.process_time()
    n = 0
    for blob in blobs:
        for item in pickle.loads(blob).items(defaults):
            if hasattr(item, "params"):
                builder.build(item)
            n += 1
print((time.process_time() - start) / n * 1e6)
"""


def probe(root: Path, events: Path, which: str) -> float:
    """Microseconds of CPU per event of one path, run by the package under `root`."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("PYTHONSAFEPATH", None)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(events), which],
        env=env,
        cwd=root,  # `python -c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"probe {which} under {root} failed:\n{out.stderr}")
    return float(out.stdout)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="CPU per event of reading and building")
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--rounds", type=int, default=5, help="runs per path (best shown)")
    p.add_argument("--compare", metavar="REV", help="also time git revision REV's engine")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="adbatch-parse-") as tmp:
        work = Path(tmp)
        versions = {"this": ROOT}
        if args.compare is not None:
            versions[args.compare] = checkout(args.compare, work)
        events = work / "events.jsonl"
        make_events(args.events, events)
        best: dict[tuple[str, str], float] = {}
        for _ in range(args.rounds):
            for which in PATHS:
                for name, root in versions.items():
                    us = probe(root, events, which)
                    key = (name, which)
                    best[key] = min(best.get(key, us), us)
    print(f"{args.events:,} events, best of {args.rounds}: CPU microseconds per event")
    print(f"| path | {' | '.join(versions)} |")
    print(f"|---|{'---:|' * len(versions)}")
    for which in PATHS:
        cells = " | ".join(f"{best[(name, which)]:.2f}" for name in versions)
        print(f"| {which} | {cells} |")
    if args.compare is not None:
        for which in PATHS:
            ratio = best[(args.compare, which)] / best[("this", which)]
            print(f"{which}: {ratio:.2f}x faster than {args.compare}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
