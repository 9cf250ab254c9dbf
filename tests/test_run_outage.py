"""An endpoint that goes away mid-run (README's exit 3: "the endpoint could not be
reached"), against a real aiohttp.web server on 127.0.0.1 that the test stops, and
starts again on the same port.

- Gone for good: once every call has failed to connect for --give-up-after seconds the
  run stops with exit 3; the calls in flight are written, the events never sent are not,
  and --resume against the server back up sends them (one line per event, all ok).
- A short outage that recovers does not stop the run: its events become `connect`
  records, the rest are answered, every event has its line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from conftest import config_for, events, exactly_once, read_records

from engine import run

pytestmark = pytest.mark.anyio


class _Delivery:
    """A delivery server on one loopback port that can go down and come back up."""

    def __init__(self, down_after: int) -> None:
        self.down_after = down_after  # calls answered before `due` is set
        self.calls = 0
        self.due = anyio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.calls >= self.down_after:
            self.due.set()
        return web.json_response({"status": "OK", "placements": []})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/delivery/retailmedia"

    async def up(self) -> None:
        app = web.Application()
        app.router.add_get("/delivery/retailmedia", self._answer)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def _until(written: Path, text: bytes) -> None:
    """Until `written` holds `text` (bounded: the test fails, not hangs, without it)."""
    path = anyio.Path(written)
    for _ in range(1000):
        if await path.exists() and text in await path.read_bytes():
            return
        await anyio.sleep(0.02)


def _config(server: _Delivery, inputs: Path, out: Path, **options: Any) -> Any:
    return config_for(server.url, inputs, out, rate=200.0, concurrency=4, **options)


@pytest.mark.slow
async def test_an_endpoint_gone_mid_run_stops_it_with_3_then_resume_finishes(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    n = 1000  # 5 s at --rate 200: without the stop, every one becomes a record
    inputs, out = write_jsonl(events(n)), tmp_path / "out.jsonl"
    server = _Delivery(down_after=40)
    await server.up()
    try:
        async with anyio.create_task_group() as tg:

            async def kill() -> None:
                await server.due.wait()
                await server.down()

            tg.start_soon(kill)
            first = await run(_config(server, inputs, out, give_up_after=0.5, retries=1))
        assert first.exit_code == 3
        assert first.stopped is not None
        assert first.stopped.startswith(f"cannot reach the delivery endpoint {server.url}")
        assert "--resume sends the rest" in first.stopped
        written = read_records(out)
        assert 0 < len(written) < n  # reading stopped: the rest is left for --resume
        assert any(r["ok"] for r in written)
        assert {r["error_kind"] for r in written if not r["ok"]} == {"connect"}

        await server.up()  # back on the same port
        second = await run(config_for(server.url, inputs, out, resume=True))
        assert second.exit_code == 0
        records = read_records(out)
        exactly_once(records, n)
        assert all(r["ok"] for r in records)
    finally:
        await server.down()


@pytest.mark.slow
async def test_a_short_outage_that_recovers_does_not_stop_the_run(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    n = 300
    inputs, out = write_jsonl(events(n)), tmp_path / "out.jsonl"
    server = _Delivery(down_after=40)
    await server.up()
    try:
        async with anyio.create_task_group() as tg:

            async def outage() -> None:
                await server.due.wait()
                await server.down()
                await _until(out, b'"connect"')  # the outage has cost a record
                await server.up()

            tg.start_soon(outage)
            summary = await run(_config(server, inputs, out, give_up_after=30.0, retries=0))
        assert summary.stopped is None
        assert summary.exit_code == 1  # the outage's events failed; each has its record
        records = read_records(out)
        exactly_once(records, n)
        kinds = [r["error_kind"] for r in sorted(records, key=lambda r: r["seq"])]
        assert "connect" in kinds
        assert kinds[-1] is None  # answered again after the outage
    finally:
        await server.down()
