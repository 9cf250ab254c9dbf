"""The page of asyncio + aiohttp code our users would write instead of adbatch.

Reads JSONL events, builds the query with aiohttp's `params=`, sends every call through
one ClientSession with N worker tasks fed by a bounded queue, and writes one JSONL record
per event. It is written the way a careful user would write it (one session, a bounded
queue, a connection pool the size of the concurrency), not as a straw man; it does
none of what adbatch adds (validation, retries, tokens, stats, ordering, resume).

    python benchmarks/baseline.py --endpoint URL --token T -c 64 events.jsonl -o out.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp

HEADER_KEYS = {"user-agent": "User-Agent", "referer": "Referer", "ip": "X-Forwarded-For"}
SKIP = {"id", "timestamp"}


def to_params(event: dict) -> tuple[dict[str, str], dict[str, str]]:
    params: dict[str, str] = {}
    headers: dict[str, str] = {}
    for key, value in event.items():
        if key in HEADER_KEYS:
            headers[HEADER_KEYS[key]] = str(value)
        elif key in SKIP or value is None:
            continue
        elif isinstance(value, list):
            params[key] = "|".join(str(v) for v in value)
        elif isinstance(value, bool):
            params[key] = "1" if value else "0"
        else:
            params[key] = str(value)
    return params, headers


async def main(args: argparse.Namespace) -> None:
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=args.concurrency * 2)
    # Plain blocking file I/O, as such a script would do it.
    out = open(args.output, "w") if args.output != "-" else sys.stdout  # noqa: ASYNC230
    auth = {"Authorization": f"Bearer {args.token}"}

    async def producer() -> None:
        with open(args.input) as f:  # noqa: ASYNC230
            for line in f:
                if line.strip():
                    await queue.put(line)
        for _ in range(args.concurrency):
            await queue.put(None)

    async def worker(session: aiohttp.ClientSession) -> None:
        while (line := await queue.get()) is not None:
            event = json.loads(line)
            params, headers = to_params(event)
            headers.update(auth)
            record: dict[str, object] = {"id": event.get("id")}
            try:
                async with session.get(args.endpoint, params=params, headers=headers) as resp:
                    record["status"] = resp.status
                    record["response"] = await resp.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError) as exc:
                record["error"] = repr(exc)
            out.write(json.dumps(record) + "\n")

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(producer(), *(worker(session) for _ in range(args.concurrency)))
    if out is not sys.stdout:
        out.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input")
    p.add_argument("-o", "--output", default="-")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--token", default="mock-token")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (not the default)")
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    start = time.perf_counter()
    if arguments.uvloop:
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
    print(f"baseline: {time.perf_counter() - start:.3f}s", file=sys.stderr)
