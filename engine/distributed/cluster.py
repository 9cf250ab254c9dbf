"""The Ray driver's edges: joining the cluster, and a signal while the shards run.

Rules:
- RAY_ADDRESS `host:port` (or `ray://host:port`) is checked with a plain TCP connect,
  bounded (`CONNECT_TIMEOUT`), before `ray.init`, which has no timeout of its own and
  waits minutes on a closed port. Whatever `ray.init` raises (`auto` with no cluster, a
  version mismatch) becomes one line naming RAY_ADDRESS: a ConfigError, exit 2.
- SIGINT and SIGTERM while the shards run stop the run as the local backend's signals
  do (`until_signal`): the actors are freed, the complete parts kept for a rerun, the
  exit code 128 + the signal; not Ray's own handler, which dumps a crash report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio

from engine.errors import ConfigError

CONNECT_TIMEOUT = 5.0
T = TypeVar("T")


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a RAY_ADDRESS that names one; None for `auto`, `local`, ..."""
    address = address.removeprefix("ray://")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, *, timeout: float = CONNECT_TIMEOUT) -> None:
    """ConfigError when nothing listens at RAY_ADDRESS's host and port."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({why}); "
            "start one (ray start --head) or unset RAY_ADDRESS for a local Ray"
        ) from None


@contextlib.contextmanager
def ray_session(ray: Any) -> Iterator[None]:
    """Join the cluster at RAY_ADDRESS (or the one already joined), else start a local Ray."""
    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        check_reachable(address)
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"RAY_ADDRESS={address}" if address else "a local Ray (RAY_ADDRESS unset)"
        raise ConfigError(f"cannot join {where}: {first}") from None
    try:
        yield
    finally:
        ray.shutdown()


async def until_signal(
    work: Callable[[], Awaitable[T]], *, enabled: bool
) -> tuple[T | None, int | None]:
    """(what `work()` returned, None), or (None, the signal) when SIGINT or SIGTERM came
    first and cancelled it. `enabled` (the CLI, the main thread): else just `work()`."""
    if not enabled:
        return await work(), None
    result: list[T] = []
    caught: list[int] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    caught.append(int(signum))
                    tg.cancel_scope.cancel()
                    return

        async def run() -> None:
            result.append(await work())
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(run)
    return (result[0] if result else None), (caught[0] if caught else None)
