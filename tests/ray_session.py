"""A local Ray for a test module (`ray.init(num_cpus=2)`), with PYTHONPATH set so that
Ray's workers import `engine`, and any test helper module in `paths`, as the driver does.

Use it from a module-scoped fixture (`yield from local_ray()`) in a module that has
already skipped itself without ray (`pytest.importorskip("ray")`). `run_killing_a_sender`
is the killed-actor run that the local and the object-store tests both check.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio

from engine.config import Config
from engine.core.stats import Summary
from engine.mock import MockHandle

ROOT = Path(__file__).resolve().parent.parent


def local_ray(*paths: Path) -> Iterator[None]:
    import ray

    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), *(str(x) for x in paths), path) if p
    )
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
    )
    try:
        yield
    finally:
        ray.shutdown()
        if path is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = path


async def wait_for(predicate: Callable[[], bool]) -> None:
    for _ in range(1500):  # 30 s
        if predicate():
            return
        await anyio.sleep(0.02)
    raise AssertionError("the run never got there")


async def run_killing_a_sender(config: Config, mock: MockHandle) -> tuple[Summary, int]:
    """`run_ray` (4 shards, 2 senders) with sender 0 killed once the mock has had 100
    calls: the run's summary, and the calls the mock had when the run ended."""
    import ray

    from engine.distributed.ray_backend import SENDER_NAME, run_ray

    result: list[Summary] = []

    async def go() -> None:
        result.append(await run_ray(config, shards=4, senders=2))

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await wait_for(lambda: mock.state.delivery_requests >= 100)
        ray.kill(ray.get_actor(SENDER_NAME.format(0)))
    return result[0], mock.state.delivery_requests
