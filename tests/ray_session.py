"""A local Ray for a test module (`ray.init(num_cpus=2)`), with PYTHONPATH set so that
Ray's workers import `engine`, and any test helper module in `paths`, as the driver does.

Use it from a module-scoped fixture (`yield from local_ray()`) in a module that has
already skipped itself without ray (`pytest.importorskip("ray")`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

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
