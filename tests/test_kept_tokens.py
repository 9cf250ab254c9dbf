"""A token stays in the redactor while a call that carried it can still be answered.

engine/core/kept.py: a replaced token is kept for --timeout plus a margin (the whole run
with --ordered), at most MAX_KEPT_TOKENS. The end-to-end tests have the adversarial
tester's shape: a token endpoint granting tokens of 0.5 s, a delivery call held 5 s
under --timeout 8 (a dozen renewals while it is in flight; the 8 newest, as kept
before, let the token it carried into the record) that echoes its bearer token.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import orjson
import pytest

from engine.core.kept import MAX_KEPT_TOKENS, TOKEN_KEEP_MARGIN, KeptTokens, token_keep

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("steps", "now", "kept"),
    [
        pytest.param([("a", 0.0)], 1e9, ("a",), id="the-current-one-always"),
        pytest.param([("a", 0.0), ("b", 1.0)], 10.9, ("a", "b"), id="replaced-within-keep"),
        pytest.param([("a", 0.0), ("b", 1.0)], 11.0, ("b",), id="replaced-keep-ago"),
        pytest.param(
            [("a", 0.0), ("b", 1.0), ("c", 5.0)], 14.0, ("b", "c"), id="oldest-first-goes"
        ),
        pytest.param([("a", 0.0), ("a", 1.0)], 100.0, ("a",), id="the-same-token-again"),
        pytest.param([], 0.0, (), id="none-yet"),
    ],
)
def test_kept_tokens_for_keep_seconds(
    steps: list[tuple[str, float]], now: float, kept: tuple[str, ...]
) -> None:
    tokens = KeptTokens(keep=10.0)
    for token, at in steps:
        tokens.add(token, at)
    assert tokens.texts(now) == kept


def test_kept_tokens_are_capped() -> None:
    tokens = KeptTokens(keep=math.inf, cap=3)
    for i in range(10):
        tokens.add(f"t{i}", float(i))
    assert tokens.texts(1e9) == ("t7", "t8", "t9")
    assert MAX_KEPT_TOKENS >= 1024


def test_token_keep_is_the_timeout_plus_a_margin_or_the_run_when_ordered() -> None:
    assert token_keep(10.0) == 10.0 + TOKEN_KEEP_MARGIN
    assert token_keep(10.0, ordered=True) == math.inf


# -- the reproducer's shape: the whole CLI ----------------------------------------------

HELD = 5.0  # seconds each delivery call is held (--timeout 8)
SUFFIX = "-SecretTokenValueXYZ"


@asynccontextmanager
async def short_tokens() -> AsyncIterator[str]:
    """Tokens of 0.5 s at /oauth2/token; a delivery call answered after HELD seconds with
    its bearer token echoed in the JSON body. Yields the base URL."""
    numbers = itertools.count()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                if head.startswith(b"POST"):
                    token = f"tok{next(numbers):04d}{SUFFIX}"
                    body = orjson.dumps({"access_token": token, "expires_in": 0.5})
                else:
                    found = re.search(rb"(?im)^authorization: bearer (.*?)\r$", head)
                    await asyncio.sleep(HELD)
                    echoed = found.group(1).decode() if found else "none"
                    body = orjson.dumps({"status": "OK", "echo": echoed})
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.slow  # each call is held 5 s
@pytest.mark.anyio
@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="run"),
        pytest.param(["--workers", "2"], id="workers"),
        pytest.param(["--ordered"], id="ordered"),
    ],
)
async def test_a_token_renewed_a_dozen_times_during_its_call_is_not_in_the_record(
    tmp_path: Path, args: list[str]
) -> None:
    events = tmp_path / "in.jsonl"
    event = {
        "criteo-partner-id": 1,
        "retailer-visitor-id": "v",
        "event-type": "viewHome",
        "page-id": "viewHome_API_desktop",
    }
    events.write_bytes(b"".join(orjson.dumps({**event, "id": f"e{i}"}) + b"\n" for i in range(2)))
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADBATCH_")}
    env.update(PYTHONPATH=str(ROOT), ADBATCH_CLIENT_SECRET="some-client-secret")
    async with short_tokens() as base:
        proc = await anyio.run_process(
            [
                *(sys.executable, "-m", "engine", "run", "--no-progress", *args),
                *("--client-id", "cid", "--token-url", base + "/oauth2/token"),
                *("--endpoint", base + "/d", "--timeout", "8", "-o", str(out), str(events)),
            ],
            env=env,
            check=False,
        )
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    renewals = re.search(r"\((\d+) renewals\)", err)
    assert renewals is not None, err
    assert int(renewals.group(1)) > 8, err  # the shape holds: more than the 8 kept before
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [r["response"]["echo"] for r in records] == ["[redacted]", "[redacted]"]
    assert SUFFIX not in out.read_text() + err
