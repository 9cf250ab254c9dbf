"""Where adbatch's work per event goes (issue 18): each stage of a run's path measured
apart, CPU µs per event, on the benchmark's own events and answer.

    python benchmarks/stages.py [--events 50000] [--rounds 5]

`benchmarks/run.py`'s "CPU per event" line gives the whole: hey's cost, the transport
alone (the floor client doing hey's work), and adbatch. This gives the parts of
adbatch's work that run the same way outside a run, one stage at a time over every
event, the collector and malloc tuned as a run tunes them (`runtime/loop.tune_gc`,
`runtime/malloc.tune_malloc`):

- input: `files/sources.read_items` over the JSONL file, every item made and dropped
  (reading, the exact-number parse, the event and its query);
- request: `core/query.RequestBuilder.build` and the bytes it counts
  (`core/figures.request_bytes`);
- JSON check: `core/jsoncheck.is_json` on the answer (pysimdjson, else orjson);
- record: `core/records.answered` for a 200 with that answer (the check above included);
- encode: `core/records.jsonl` of the records, 32 at a time (about one loop turn's);
- redaction: `core/secrets.Secrets.redact_bytes` of those pieces, with the benchmark's
  static token (`mock-token`, as every client of run.py sends), and again with a token
  the length of a real one (a JWT of ~1,200 characters): the filter's last scan looks
  for the token less its first 5 characters, a skip search, faster the longer it is.

What is not here (the call's own Python: engine, call flow, client, connection; the
event loop; the kernel) is the whole less these and less the transport alone.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, fixed_body, make_events

sys.path.insert(0, str(ROOT))
from engine.core.events import Event
from engine.core.figures import request_bytes
from engine.core.jsoncheck import is_json, simd_available
from engine.core.query import RequestBuilder
from engine.core.records import Response, answered, jsonl
from engine.core.secrets import Secrets
from engine.files.sources import read_items
from engine.runtime.loop import tune_gc
from engine.runtime.malloc import tune_malloc

TOKEN = "mock-token"
#: A token shaped like the delivery API's (a JWT: header, ~600 bytes of claims and a
#: signature, base64url), fixed so that every round scans for the same one.
JWT = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + "eyJzdWIiOiJhZGJhdGNoIn0" * 36 + ".c2ln" * 70
TICK = 32  # records per write: about what one turn of the loop answers at -c 64


def _cpu(work: Callable[[], object]) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def stages(path: Path, body: bytes) -> dict[str, float]:
    """One round: each stage's CPU seconds over every event of `path`. The records are
    made, encoded and redacted a tick (TICK records) at a time and then dropped, as in a
    run: a list of every record kept alive would cost the collector more than a run."""
    events = [item for item in read_items([str(path)]) if isinstance(item, Event)]
    builder = RequestBuilder("http://127.0.0.1:8080/delivery/retailmedia", user_agent="adbatch")
    response = Response(200, body, 1717243200.123456, 12.3456789)
    secrets, long = Secrets([TOKEN]), Secrets([JWT])

    def build() -> None:
        for event in events:
            request_bytes(builder.build(event))

    def check() -> None:
        for _ in events:
            is_json(body)

    spent = dict.fromkeys(("record", "encode", "redact", "redact long"), 0.0)
    clock = time.process_time
    for i in range(0, len(events), TICK):
        start = clock()
        results = [answered(event, response, 1) for event in events[i : i + TICK]]
        made = clock()
        part = jsonl(results)
        encoded = clock()
        secrets.redact_bytes(part)
        redacted = clock()
        long.redact_bytes(part)
        spent["record"] += made - start
        spent["encode"] += encoded - made
        spent["redact"] += redacted - encoded
        spent["redact long"] += clock() - redacted
    return {
        "input": _cpu(lambda: collections.deque(read_items([str(path)]), maxlen=0)),
        "request": _cpu(build),
        "JSON check": _cpu(check),
        "record (JSON check included)": spent["record"],
        "encode (JSONL)": spent["encode"],
        "redaction": spent["redact"],
        "redaction, a real token's length": spent["redact long"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    tune_gc()
    tune_malloc()
    with tempfile.TemporaryDirectory(prefix="adbatch-stages-") as tmp:
        path = Path(tmp) / "events.jsonl"
        make_events(args.events, path)
        body = fixed_body()
        rounds = [stages(path, body) for _ in range(args.rounds)]
    checker = "pysimdjson" if simd_available() else "orjson"
    print(
        f"{args.events:,} events, {args.rounds} round(s), a {len(body):,}-byte answer, "
        f"JSON checked by {checker}; CPU µs per event, median (min-max) of the rounds"
    )
    print()
    print("| stage | µs per event | min-max |")
    print("| --- | ---: | ---: |")
    total = 0.0
    for name in rounds[0]:
        per = [r[name] / args.events * 1e6 for r in rounds]
        median = statistics.median(per)
        if name not in ("JSON check", "redaction, a real token's length"):  # counted once
            total += median
        print(f"| {name} | {median:.2f} | {min(per):.2f}-{max(per):.2f} |")
    print(f"| the stages (the JSON check in the record; the benchmark's token) | {total:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
