"""Running the mock: in-process for tests (``running_mock``), blocking for the CLI (``serve``).

Rules:
- Bind 127.0.0.1 port 0 by default in tests and report the port the OS chose.
- No access log (the hot path); a short shutdown grace so a "slow" fault still
  sleeping does not hold a test's exit for long.
- A request line or a header up to 64 KiB is read (aiohttp's 8190 bytes answered 400 to
  an event with 9000 characters of keywords, which a delivery host behind a usual proxy
  takes). A longer one, or any request aiohttp cannot parse, is its 400 answer alone: no
  "Error handling request" traceback on stderr (the client has its answer; a handler's
  own exception is still logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .app import DELIVERY_PATH, STATE_KEY, TOKEN_PATH, make_app
from .state import MockConfig, MockState

__all__ = ["MockHandle", "running_mock", "serve"]

_SHUTDOWN_GRACE = 0.25
#: The longest request line, and header line, the mock reads (aiohttp's default: 8190).
MAX_LINE_BYTES = 64 << 10


def _not_a_bad_request(record: logging.LogRecord) -> bool:
    """False for aiohttp's log of a request it could not parse (answered 400 already)."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, HttpProcessingError)


_LOG = logging.getLogger("engine.mock")
_LOG.addFilter(_not_a_bad_request)


@dataclass(frozen=True, slots=True)
class MockHandle:
    base_url: str
    state: MockState
    config: MockConfig

    @property
    def delivery_url(self) -> str:
        return self.base_url + DELIVERY_PATH

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _start(
    config: MockConfig | None, host: str, port: int
) -> tuple[web.AppRunner, MockHandle]:
    app = make_app(config)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=_SHUTDOWN_GRACE,
        logger=_LOG,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_LINE_BYTES,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    state = app[STATE_KEY]
    handle = MockHandle(
        base_url=f"http://{_url_host(host)}:{bound_port}",
        state=state,
        config=state.config,
    )
    return runner, handle


@contextlib.asynccontextmanager
async def running_mock(config: MockConfig | None = None) -> AsyncIterator[MockHandle]:
    """Serve a fresh mock on 127.0.0.1 (free port) for the duration of the block."""
    runner, handle = await _start(config, "127.0.0.1", 0)
    try:
        yield handle
    finally:
        await runner.cleanup()


async def _serve(host: str, port: int, config: MockConfig | None) -> None:
    runner, handle = await _start(config, host, port)
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        print(
            f"adbatch mock: delivery {handle.delivery_url}  token {handle.token_url}",
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(*, host: str = "127.0.0.1", port: int = 8080, config: MockConfig | None = None) -> None:
    """Run the mock until SIGINT/SIGTERM (blocking); uses uvloop when installed."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_serve(host, port, config))
    except KeyboardInterrupt:
        # Only reachable before the signal handlers are installed.
        sys.stderr.flush()
