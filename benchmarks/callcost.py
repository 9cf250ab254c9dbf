"""Two per-call costs of issue 18, measured apart (CPU µs per call, median of rounds).

    python benchmarks/callcost.py                 # this work tree
    python benchmarks/callcost.py --compare REV   # and REV's answer parsing, interleaved

1. The answer's head: `engine.net.h1conn.Connection`'s httptools callbacks for the head
   nginx sends the benchmark (five headers) and a 2.7 KB body, one answer per feed, as
   each version of the engine parses it (its own process; REV from `git archive`).
2. The event loop's own machinery on uvloop: one call as a future awaited through a
   chain of three coroutines (the engine's worker -> call -> client), through one, and
   as plain callbacks: what an engine without a coroutine and a future per call would
   save at most.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, checkout, fixed_body


def nginx_answer(body: bytes) -> bytes:
    """The head nginx sends the benchmark's clients (five headers), then `body`."""
    return (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 06:26:28 GMT\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: keep-alive\r\n\r\n" % len(body)
    ) + body


PARSE = r"""
import json, sys, time
from engine.net.h1conn import _WAIT, Connection
from engine.net.outbox import Outbox

class _Loop:  # what Outbox keeps of its loop: nothing is sent here
    def call_soon(self, *args): pass

answer = bytes.fromhex(sys.argv[1])
conn = Connection(1 << 20, Outbox(_Loop()))
rounds = []
for _ in range(int(sys.argv[2])):
    start = time.process_time()
    for _ in range(20000):
        # what Connection.send resets before each call (it also writes the request)
        conn.state, conn.headers, conn._size, conn._head_size = _WAIT, {}, 0, 0
        conn.parser.feed_data(answer)
        conn._chunks.clear()
    rounds.append((time.process_time() - start) / 20000 * 1e6)
print(json.dumps(rounds))
"""

LOOP = r"""
import asyncio, json, sys, time, uvloop

async def leaf(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, 1)
    return await fut

async def mid(loop):
    return await leaf(loop)

async def top(loop):
    return await mid(loop)

async def three(n):
    loop = asyncio.get_running_loop()
    for _ in range(n):
        await top(loop)

async def one(n):
    loop = asyncio.get_running_loop()
    for _ in range(n):
        await leaf(loop)

def callbacks(n):
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = [n]
    def step():
        left[0] -= 1
        if left[0] == 0:
            done.set_result(None)
        else:
            loop.call_soon(step)
    loop.call_soon(step)
    return done

async def main(rounds):
    out = {"three coroutines + a future": [], "one coroutine + a future": [], "callbacks": []}
    for _ in range(rounds):
        for name, make in zip(out, (three, one, callbacks)):
            start = time.process_time()
            await asyncio.gather(*(make(100_000 // 64) for _ in range(64)))
            out[name].append((time.process_time() - start) / (100_000 // 64 * 64) * 1e6)
    print(json.dumps(out))

uvloop.run(main(int(sys.argv[1])))
"""


def _run(root: Path, code: str, *args: str) -> object:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=root, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", metavar="REV", help="also time REV's answer parsing")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    answer = nginx_answer(fixed_body()).hex()
    with tempfile.TemporaryDirectory(prefix="adbatch-callcost-") as tmp:
        trees = [("work tree", ROOT)]
        if args.compare:
            trees.append((args.compare, checkout(args.compare, Path(tmp))))
        parse: dict[str, list[float]] = {name: [] for name, _ in trees}
        for _ in range(args.rounds):  # interleaved: one round of each version in turn
            for name, root in trees:
                parse[name] += _run(root, PARSE, answer, "1")  # type: ignore[operator]
        print("| answer parsed by | median µs/answer | best |")
        print("| --- | ---: | ---: |")
        for name, values in parse.items():
            print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} |")
        loop = _run(ROOT, LOOP, str(args.rounds))
    print()
    print("| one call on uvloop | median µs/call | best |")
    print("| --- | ---: | ---: |")
    for name, values in loop.items():  # type: ignore[attr-defined]
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
