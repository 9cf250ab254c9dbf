"""CPU per event of the output side: an HTTP answer to the bytes a sink writes.

    python benchmarks/records.py                # this work tree
    python benchmarks/records.py --compare REV  # and REV's, interleaved rounds

Per event: `answered()` (the record, its body checked as JSON and embedded), the batch's
JSONL (`jsonl_parts`) and its redaction (`Secrets.redact_bytes`), in batches of `--batch`
records as one event-loop tick hands them to the sink. The answer is benchmarks/run.py's
realistic ~2.7 KB delivery body (`fixed_body`); the secrets are a JWT-like token and a
client secret with its Basic form. Each version runs in its own process (REV from `git
archive` into a temporary folder), rounds interleaved; CPU time (process_time), the
median and best of the rounds. Also checks that every version writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtb2NrLWNsaWVudCIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJl"
SECRET = "s3cr+t/=&é-client-secret"

# Runs in a child process with the version's folder first on sys.path.
CHILD = r"""
import hashlib, json, sys, time
from engine.core.events import Event
from engine.core.records import Response, answered, jsonl_parts
from engine.core.secrets import Secrets

body, token, secret, events, batch_size = (
    bytes.fromhex(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
)
secrets = Secrets((token, secret), basic=(("my-client", secret),))
params = (("criteo-partner-id", "12345"), ("event-type", "viewSearchResult"))
evs = [Event(i, f"in.jsonl:{i + 1}", f"pv-{i}", None, params, ()) for i in range(events)]
resp = [Response(200, body, 1764331200.123456 + i, 1.234 + i / 1000) for i in range(events)]
digest = hashlib.sha256()
cpu = 0.0
for lo in range(0, events, batch_size):
    start = time.process_time()
    batch = [answered(evs[i], resp[i], 1, secrets) for i in range(lo, min(events, lo + batch_size))]
    out = [secrets.redact_bytes(part) for part in jsonl_parts(batch)]
    cpu += time.process_time() - start
    digest.update(b"".join(out))  # not timed: the check that versions write the same bytes
print(json.dumps({"us": cpu / events * 1e6, "sha": digest.hexdigest()}))
"""


def _tree(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", rev, "engine"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _round(path: Path, body: bytes, events: int, batch: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(path)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, body.hex(), TOKEN, SECRET, str(events), str(batch)],
        env=env, cwd=path, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    result: dict[str, object] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="REV", help="also time REV's output side")
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=64, help="records per tick")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import fixed_body

    body = fixed_body()
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"work tree": ROOT}
        if args.compare:
            versions[args.compare] = _tree(args.compare, Path(tmp))
        times: dict[str, list[float]] = {name: [] for name in versions}
        shas: dict[str, set[object]] = {name: set() for name in versions}
        for _ in range(args.rounds):
            for name, path in versions.items():
                got = _round(path, body, args.events, args.batch)
                times[name].append(float(got["us"]))  # type: ignore[arg-type]
                shas[name].add(got["sha"])
    head = f"{args.events:,} answers of {len(body):,} B, {args.batch} per tick"
    print(f"{head}, {args.rounds} rounds")
    print("| version | median µs/event | best µs/event | output sha256 |")
    print("| --- | --- | --- | --- |")
    for name in versions:
        sha = ",".join(str(s)[:12] for s in sorted(shas[name], key=str))
        print(
            f"| {name} | {statistics.median(times[name]):.2f} | {min(times[name]):.2f} | {sha} |"
        )
    if len({frozenset(s) for s in shas.values()}) > 1:
        print("OUTPUT DIFFERS between versions", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
