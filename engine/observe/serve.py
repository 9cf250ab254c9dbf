"""Serve a run's /metrics and dashboard on its own event loop, for as long as it runs.

Rules:
- The sockets are bound before the run starts: a busy port or a host that is not this
  machine's is a one-line ConfigError (exit 2), before anything is sent. They are bound
  here (socket + aiohttp's SockSite), not by a resolver thread, so a --workers run
  that starts next still forks a one-thread process.
- Served by aiohttp.web on the run's event loop: no thread, no process of their own; a
  scrape or a poll costs a copy of the counters. --metrics-addr and --dashboard on the
  same HOST:PORT share one server.
- After the run they stay up --metrics-linger seconds (the figures final, in flight 0),
  for a last scrape; stderr says so, and that SIGINT or SIGTERM ends that wait. A run
  that fails (raises, or stops with exit 3/70) or that a signal stopped is not waited on
  (Watch.ended).
- Each URL is printed on stderr once it is served; a host that is not loopback
  (`0.0.0.0`, `[::]`, an interface's address) adds a one-line warning: neither page asks
  for authentication, so anyone who can reach the port reads the run's figures.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from aiohttp import web

from engine.config import Config, is_loopback
from engine.core.addresses import parse_listen, url_host
from engine.core.shown import quoted, shown_text
from engine.core.tally import Mode
from engine.core.timeline import Timeline
from engine.errors import ConfigError, plain_engine_errors
from engine.observe.dashboard import dashboard_routes, sample
from engine.observe.metrics import metrics_handler
from engine.runtime.watch import Watch

#: aiohttp's server logger, quiet: a malformed request (a 10 kB header) is answered 400
#: and was also logged with its traceback on the run's stderr, as often as anyone who
#: can reach the port sends one.
_QUIET = logging.getLogger("adbatch.observe.server")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def bind(addr: str, option: str) -> socket.socket:
    """A listening socket on `addr` (HOST:PORT); ConfigError naming `option` when not."""
    host, port = parse_listen(addr, option)
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
    except (socket.gaierror, UnicodeError) as exc:
        shown = f"{option} {shown_text(addr)}: unknown host {quoted(host)}"
        raise ConfigError(f"{shown} ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        where = shown_text(f"{url_host(host)}:{port}")
        shown = f"{option} {shown_text(addr)}: cannot listen on {where}"
        raise ConfigError(f"{shown} ({reason})") from None
    sock.setblocking(False)
    return sock


async def _linger(seconds: float) -> None:
    """Wait `seconds`, or until SIGINT/SIGTERM (where signals can be received)."""
    if seconds <= 0:
        return
    sys.stderr.write(
        f"adbatch: the run is over; its figures stay served {seconds:g}s more"
        " (--metrics-linger): Ctrl-C ends the wait\n"
    )
    with anyio.move_on_after(seconds):
        try:
            receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
            with receiver as signals:
                async for _ in signals:
                    return
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
            await anyio.sleep(seconds)


@asynccontextmanager
async def observed(config: Config, mode: Mode) -> AsyncIterator[Watch]:
    """The run's Watch, served at --metrics-addr and --dashboard while the block runs."""
    watch = Watch(mode)
    timeline = Timeline()
    sites: dict[tuple[str, int], list[web.RouteDef]] = {}
    wanted = [
        ("--metrics-addr", config.metrics_addr, [web.get("/metrics", metrics_handler(watch))]),
        ("--dashboard", config.dashboard, dashboard_routes(watch, timeline)),
    ]
    options: dict[tuple[str, int], tuple[str, str]] = {}
    for option, addr, routes in wanted:
        if addr is not None:
            key = parse_listen(addr, option)
            sites.setdefault(key, []).extend(routes)
            options.setdefault(key, (option, addr))
    bound: dict[tuple[str, int], socket.socket] = {}
    runners: list[web.AppRunner] = []
    try:
        for key, routes in sites.items():
            sock = bound[key] = bind(options[key][1], options[key][0])
            app = web.Application()
            app.add_routes(routes)
            runner = web.AppRunner(
                app, access_log=None, shutdown_timeout=1.0, logger=_QUIET
            )  # fmt: skip
            await runner.setup()
            runners.append(runner)
            await web.SockSite(runner, sock).start()
        _announce(config, bound)
        # An error of the run comes out as itself, not in the task group's group.
        with plain_engine_errors():
            async with anyio.create_task_group() as tg:
                if config.dashboard is not None:
                    tg.start_soon(sample, watch, timeline)
                yield watch
                watch.finished = True
                timeline.push(watch.snapshot())
                if watch.lingers:
                    await _linger(config.metrics_linger)
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for runner in runners:
                await runner.cleanup()
        for sock in bound.values():
            with contextlib.suppress(OSError):
                sock.close()


def _announce(config: Config, bound: dict[tuple[str, int], socket.socket]) -> None:
    for option, addr, path, what in (
        ("--metrics-addr", config.metrics_addr, "/metrics", "metrics"),
        ("--dashboard", config.dashboard, "/", "dashboard"),
    ):
        if addr is not None:
            host, port = key = parse_listen(addr, option)
            port = bound[key].getsockname()[1]  # port 0: the one the system chose
            sys.stderr.write(f"adbatch: {what} on http://{url_host(host)}:{port}{path}\n")
            if (warning := exposure_warning(option, host, port)) is not None:
                sys.stderr.write(f"adbatch: {warning}\n")


def exposure_warning(option: str, host: str, port: int) -> str | None:
    """What to say of a server `option` bound to `host`: None on loopback (a bare :PORT)."""
    if is_loopback(host):
        return None
    return (
        f"warning: {option} {url_host(host)}:{port} is reachable from other machines and "
        f"has no authentication: anyone who can reach port {port} reads it "
        f"(:{port} serves this machine only)"
    )
