"""`--http2` (engine/net/http2.py) and a server that closes its connections under load:
nginx's GOAWAY after `keepalive_requests` streams (with 64 calls in flight, most of them
above its last-stream-id), also when it allows only 4 streams at a time. A call nginx did
not take is sent again, free (not in `attempts`); one it took is answered, GOAWAY or not.
nginx's access log (one line per call it processed) shows each call processed once.

Skips with the reason when nginx, openssl, httpx or h2 is missing (test_http2's rules).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_http2 import NGINX, certificate, nginx_h2, trusted  # noqa: F401 (fixtures)

from engine.core.query import Request
from engine.net.transport import open_transport

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,  # nginx per test
    pytest.mark.skipif(NGINX is None, reason="nginx not installed (apt-get install nginx)"),
]

QUERY = "criteo-partner-id=1&retailer-visitor-id=v&event-type=viewHome&page-id=h"


async def _calls(url: str, n: int, concurrency: int) -> list[Any]:
    """`n` calls over one --http2 transport, `concurrency` at a time: the answers."""
    answers: list[Any] = []
    limit = anyio.Semaphore(concurrency)
    async with open_transport(concurrency=concurrency, timeout=10, client="http2") as transport:

        async def call(i: int) -> None:
            async with limit:
                request = Request(f"{url}?{QUERY}&i={i}", {})
                answers.append(await transport.send(request, "Bearer mock-token"))

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(call, i)
    return answers


@pytest.mark.parametrize(
    "directives",
    [
        pytest.param("keepalive_requests 7;", id="goaway-every-7-streams"),
        pytest.param(
            "keepalive_requests 50; http2_max_concurrent_streams 4;", id="4-streams-at-a-time"
        ),
    ],
)
async def test_a_call_the_server_did_not_take_is_sent_again(
    tmp_path: Path,
    trusted: Path,  # noqa: F811 (test_http2's fixture)
    directives: str,
) -> None:
    """Every call is answered once, as over HTTP/1.1: those nginx did not take (above a
    GOAWAY's last-stream-id, on the connection it closed, refused) are sent again, free;
    those it took are answered, GOAWAY or not. (Before: at -c 64, most calls were
    `disconnected`, unlogged by nginx, or logged and lost.)"""
    n = 200
    with nginx_h2(tmp_path / "nginx", trusted, extra=directives) as server:
        answers = await _calls(server.url(), n, 64)
        logged = Counter(status for _, status, _ in server.lines())
    errors = Counter(a.error for a in answers if a.error is not None)
    assert errors == {}
    assert [a.status for a in answers] == [200] * n
    assert logged == {"200": n}  # each call processed once: no resend was taken before
