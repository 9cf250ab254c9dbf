"""The live dashboard: one self-contained page and the JSON it polls once a second.

Rules:
- The page (dashboard.html, package data) holds its script, style and charts (SVG): it
  loads nothing from elsewhere, and its Content-Security-Policy lets it reach its own
  host only (`connect-src 'self'`), so the browser itself enforces that.
- `GET /data.json?since=N`: the run's figures now and the per-second points from index
  N on (core/timeline.py), so a page that polls gets each point once.
- The points are sampled once a second by `sample` on the run's event loop, whether a
  page is open or not, so a page opened late still draws the whole run (15 minutes).
- `run` names the run (random, per server): a page left open when the next run serves
  the same port sees it change, drops the old run's points and asks from index 0.
"""

from __future__ import annotations

import importlib.resources
import secrets
from typing import Any

import anyio
import orjson
from aiohttp import web

from engine.core.tally import Snapshot
from engine.core.timeline import Timeline
from engine.runtime.watch import Watch

_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'"
)


def page_bytes() -> bytes:
    return importlib.resources.files("engine.observe").joinpath("dashboard.html").read_bytes()


def figures(snap: Snapshot, timeline: Timeline, since: int, *, run: str = "") -> dict[str, Any]:
    """What /data.json answers."""
    tally = snap.tally
    progress = snap.progress
    errors = tally.errors()
    return {
        "run": run,
        "mode": snap.mode,
        "elapsed": round(snap.elapsed, 3),
        "finished": snap.finished,
        "done": tally.done,
        "ok": tally.ok,
        "errors": dict(errors.most_common()),
        "dropped": tally.dropped,
        "in_flight": snap.in_flight,
        "target_rate": snap.target_rate,
        "attempts": tally.attempts,
        "retries": dict(tally.retries.most_common()),
        "events_read": tally.events_read,
        "token": {"kind": snap.token.kind, "text": snap.token.text()},
        "progress": None
        if progress is None
        else {
            "fraction": round(progress.fraction, 4),
            "done": progress.done,
            "total": progress.total,
            "unit": progress.unit,
            "eta": progress.eta(snap.elapsed),
        },
        "points": timeline.since(since),
        "next": timeline.pushed,
    }


async def sample(watch: Watch, timeline: Timeline, *, every: float = 1.0) -> None:
    """A point a second until cancelled."""
    while True:
        await anyio.sleep(every)
        timeline.push(watch.snapshot())


def dashboard_routes(watch: Watch, timeline: Timeline) -> list[web.RouteDef]:
    page = page_bytes()
    run = secrets.token_hex(8)
    headers = {"Content-Security-Policy": _CSP, "Cache-Control": "no-store"}

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=headers)

    async def data(request: web.Request) -> web.Response:
        try:
            since = max(0, int(request.query.get("since", "0")))
        except ValueError:
            since = 0
        body = orjson.dumps(figures(watch.snapshot(), timeline, since, run=run))
        return web.Response(body=body, content_type="application/json", headers=headers)

    return [web.get("/", index), web.get("/data.json", data)]
