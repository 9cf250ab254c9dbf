"""An `aiohttp.web` application served on 127.0.0.1 for the length of a test."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port; yields its base URL (`http://127.0.0.1:N`)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def arrivals_counted() -> AsyncIterator[tuple[str, list[float]]]:
    """A delivery host answering every call OK, recording when each arrived
    (`time.monotonic()`): its URL and the list of arrivals."""
    arrivals: list[float] = []

    async def deliver(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        return web.json_response({"status": "OK", "products": []})

    app = web.Application()
    app.router.add_get("/d", deliver)
    async with serving(app) as base:
        yield f"{base}/d", arrivals
