"""The Python floor: adbatch's per-event work on the leanest client Python can have.

    python benchmarks/floor.py events.jsonl -o out.jsonl --endpoint URL --token T -c 64
    python benchmarks/floor.py ... --endpoint https://127.0.0.1:PORT/... --cacert ca.pem

A reference row, not a product (issue 18): a raw `httptools` response parser in an
`asyncio.BufferedProtocol` on uvloop, one keep-alive connection per concurrency slot,
one future per request, the request heads of one turn of the loop written together
(as adbatch's engine/net/outbox.py does). For every event it does the work adbatch must do at least:
read a JSONL line, build the delivery query from the dict (`urllib.parse.urlencode`,
lists joined with `|`, the header keys as headers), check the answer is JSON
(`orjson.loads`) and write one JSONL record to a file. No retries, no timeouts, no
validation, no stats: what is left is the cost of Python + the kernel per call.

With `--fixed N` it does hey's work instead, the transport alone (a second reference
row): N calls of the endpoint URL as given, query and all, every answer read and
dropped; no input, no output, no JSON. What Python + uvloop + httptools cost per call
before any of adbatch's work, printed as `answered N` on stderr.

A BufferedProtocol matters over TLS: uvloop's SSL layer hands a plain `asyncio.Protocol`
a fresh 256 KiB buffer per read (a third of the CPU in page faults and mmap/munmap);
a buffered protocol reads into its own buffer, reused.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import ssl
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import httptools
import orjson
import uvloop

HEADER_KEYS = {"user-agent": b"User-Agent", "referer": b"Referer", "ip": b"X-Forwarded-For"}
SKIP = {"id", "timestamp"}


class Outbox:
    """Heads written together at the end of the loop's turn: the server wakes once per
    turn, not once per request (3-6 µs of kernel CPU less per request on loopback)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[asyncio.Transport, bytes]] = []

    def put(self, transport: asyncio.Transport, data: bytes) -> None:
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append((transport, data))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for transport, data in pending:
            transport.write(data)


class Connection(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._buffer = memoryview(bytearray(64 * 1024))
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._parser.feed_data(self._buffer[:nbytes])
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection closed"))

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self._transport is not None
        self._waiter = self._outbox.loop.create_future()
        self._outbox.put(self._transport, data)
        return self._waiter


def request_bytes(event: dict[str, Any], head: bytes, tail: bytes) -> bytes:
    """GET head?query HTTP/1.1 + the event's headers + tail (Host, Authorization)."""
    params: dict[str, object] = {}
    headers = b""
    for key, value in event.items():
        name = HEADER_KEYS.get(key)
        if name is not None:
            headers += name + b": " + str(value).encode("latin-1") + b"\r\n"
        elif key in SKIP or value is None:
            continue
        elif isinstance(value, list):
            params[key] = "|".join(map(str, value))
        elif isinstance(value, bool):
            params[key] = "1" if value else "0"
        else:
            params[key] = value
    return head + urlencode(params).encode() + b" HTTP/1.1\r\n" + headers + tail


async def worker(
    conn: Connection, lines: Iterator[bytes], seq: Iterator[int], out: Any, head: bytes, tail: bytes
) -> None:
    for line in lines:  # one iterator shared by every worker: each line goes to one
        if not line.strip():
            continue
        event = orjson.loads(line)
        status, body = await conn.request(request_bytes(event, head, tail))
        try:
            orjson.loads(body)
            response: object = orjson.Fragment(body)
        except orjson.JSONDecodeError:
            response = body.decode("utf-8", "replace")
        record = {"seq": next(seq), "id": event.get("id"), "status": status}
        record["ok"] = 200 <= status < 300
        record["response"] = response
        out.write(orjson.dumps(record) + b"\n")


async def fixed(conns: list[Connection], data: bytes, n: int) -> int:
    """`n` calls of `data` over `conns`, each answer dropped: hey's work. The 2xx count."""
    left = [n]
    ok = [0]

    async def one(conn: Connection) -> None:
        while left[0] > 0:
            left[0] -= 1
            status, _ = await conn.request(data)
            ok[0] += 200 <= status < 300

    await asyncio.gather(*(one(c) for c in conns))
    return ok[0]


async def main(args: argparse.Namespace) -> None:
    url = urlsplit(args.endpoint)
    host, port = url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)
    context = None
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=args.cacert)
    loop = asyncio.get_running_loop()
    outbox = Outbox(loop)
    conns = [
        (await loop.create_connection(lambda: Connection(outbox), host, port, ssl=context))[1]
        for _ in range(args.concurrency)
    ]
    head = b"GET " + url.path.encode() + b"?"
    tail = f"Host: {url.netloc}\r\nAuthorization: Bearer {args.token}\r\n\r\n".encode()
    if args.fixed is not None:
        data = head + url.query.encode() + b" HTTP/1.1\r\n" + tail
        print(f"answered {await fixed(conns, data, args.fixed)}", file=sys.stderr)
        _close(conns)
        return
    seq = itertools.count()
    # Plain buffered file I/O in the loop's thread: the cheapest way, and what the floor is.
    with open(args.input, "rb") as src, open(args.output, "wb") as out:  # noqa: ASYNC230
        lines = iter(src)
        await asyncio.gather(*(worker(c, lines, seq, out, head, tail) for c in conns))
    _close(conns)


def _close(conns: list[Connection]) -> None:
    for conn in conns:
        if conn._transport is not None:
            conn._transport.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", nargs="?", help="the events (JSONL); not with --fixed")
    p.add_argument("-o", "--output", help="the records (JSONL); not with --fixed")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--token", default="mock-token")
    p.add_argument("--cacert", default=None, help="CA bundle for https:// endpoints")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument(
        "--fixed", type=int, metavar="N", help="hey's work: N calls of the endpoint URL as given"
    )
    args = p.parse_args(argv)
    if args.fixed is None and (args.input is None or args.output is None):
        p.error("the events and -o are needed (or --fixed N)")
    return args


if __name__ == "__main__":
    uvloop.run(main(parse_args()))
    sys.exit(0)
