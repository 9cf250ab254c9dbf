"""Start-up cost of `adbatch run` (issue 18): the CPU of a run of 0 events, side by side.

    python benchmarks/startup.py [--rounds 10] [--compare REV ...]

Each row's command runs `--rounds` times, the rows interleaved (one of each per round);
its CPU is user + system of the process from `os.wait4`, best and median of the rounds.
"imports" is the sum of `-X importtime`'s self times and the number of modules it lists,
from one more run. Rows: the interpreter alone (`python -c pass`, the floor), `run
--help`, and the 0-event run (`run /dev/null` against a closed port, over http://);
with `--compare REV`, the same two commands on the `engine/` of git revision REV
(extracted, byte-compiled), so before and after come from the same run; REV may also
be a folder that holds an `engine/` (a what-if: a copy with a change not made yet).
`--compare` may be given several times.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, checkout

RUN = ["run", "/dev/null", "--endpoint", "http://127.0.0.1:9/x", "--token", "t", "--no-progress"]


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    cwd: Path  # where `-m engine` finds its package (the first entry of sys.path)
    argv: tuple[str, ...]


def cpu_of(row: Row, out: Path) -> float:
    """User + system seconds of one run of `row` (its output checked: it must succeed)."""
    argv = [sys.executable, *row.argv]
    if argv[-1] == "--no-progress":
        argv += ["-o", str(out)]
    proc = subprocess.Popen(argv, cwd=row.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{row.name}: exit {proc.returncode}: {err.decode(errors='replace')}")
    return usage.ru_utime + usage.ru_stime


def imports_of(row: Row, out: Path, runs: int = 3) -> tuple[float, int]:
    """(milliseconds of import, modules imported) under -X importtime: the sum of its
    self times, the least of `runs` runs (its own overhead inflates it: compare rows)."""
    argv = [sys.executable, "-X", "importtime", *row.argv]
    if argv[-1] == "--no-progress":
        argv += ["-o", str(out)]
    best, count = float("inf"), 0
    for _ in range(runs):
        done = subprocess.run(argv, cwd=row.cwd, capture_output=True, text=True, check=False)
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("import time:")][1:]
        total = sum(int(ln.split("|")[0].split(":")[1]) for ln in lines)
        best, count = min(best, total / 1000), len(lines)
    return best, count


def rows_for(compare: list[tuple[str, Path]]) -> list[Row]:
    rows = [Row("python -c pass", ROOT, ("-c", "pass"))]
    for label, tree in [("this tree", ROOT), *compare]:
        rows.append(Row(f"run --help @ {label}", tree, ("-m", "engine", "run", "--help")))
        rows.append(Row(f"run, 0 events @ {label}", tree, ("-m", "engine", *RUN)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument(
        "--compare", metavar="REV", action="append", default=[],
        help="also time the engine/ of git REV (or of a folder); repeatable",
    )  # fmt: skip
    args = ap.parse_args()
    compileall.compile_dir(str(ROOT / "engine"), quiet=1)
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        work = Path(tmp)
        rows = rows_for([(rev, checkout(rev, work)) for rev in args.compare])
        out = work / "out.jsonl"
        times: dict[str, list[float]] = {row.name: [] for row in rows}
        for _ in range(args.rounds):
            for row in rows:
                times[row.name].append(cpu_of(row, out))
        print(f"{args.rounds} rounds, CPU = user + sys (ms); Python {sys.version.split()[0]}\n")
        print("| command | best CPU | median CPU | imports (ms) | modules |")
        print("| --- | --- | --- | --- | --- |")
        for row in rows:
            ms, count = imports_of(row, out)
            best, median = min(times[row.name]), statistics.median(times[row.name])
            print(f"| {row.name} | {best * 1000:.0f} | {median * 1000:.0f} | {ms:.0f} | {count} |")


if __name__ == "__main__":
    main()
