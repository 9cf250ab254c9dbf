"""The plan of a Ray run: input files -> shards, and where their parts live (no Ray here).

Rules:
- An uncompressed JSONL file is cut into byte ranges at line starts (`shard.cut_ranges`,
  which also numbers the lines, so `source` stays `path:line`); a gzip or CSV file is
  one shard (a gzip stream cannot be entered mid-way, a CSV record may span lines and
  needs its header).
- The plan is stored in `OUT.parts/plan.json` with the inputs' sizes and mtimes; a
  rerun with the same inputs reuses it and skips shards whose part is complete (its
  meta names rows and sha256 that match the part on disk).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any

from engine.config import Config
from engine.core.shard import cut_ranges
from engine.errors import ConfigError
from engine.files.manifests import read_manifest, scan_part, write_json_atomic
from engine.files.sources import _GZIP_MAGIC, source_format

MIN_RANGE_BYTES = 1 << 20
SHARDS_PER_SENDER = 4


@dataclass(frozen=True, slots=True)
class ShardTask:
    """One shard: bytes [start, end) of `path` (whole: the entire file via `read_items`)."""

    index: int
    path: str
    start: int
    end: int
    first_line: int
    whole: bool


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _fingerprint(config: Config) -> list[list[object]]:
    out: list[list[object]] = []
    for path in config.inputs:
        st = os.stat(path)
        out.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
    return out


def plan_shards(config: Config, target: int) -> list[ShardTask]:
    """Cut the inputs into about `target` shards, in proportion to their sizes."""
    sizes = {path: os.path.getsize(path) for path in config.inputs}
    total = sum(sizes.values()) or 1
    tasks: list[ShardTask] = []
    for path in config.inputs:
        size = sizes[path]
        whole = _is_gzip(path) or source_format(path, config.input_format) == "csv"
        if whole or size == 0:
            tasks.append(ShardTask(len(tasks), path, 0, size, 1, True))
            continue
        parts = max(1, round(target * size / total))
        with open(path, "rb") as f:
            ranges = cut_ranges(size, parts, functools.partial(_pread, f.fileno()))
        for r in ranges:
            tasks.append(ShardTask(len(tasks), path, r.start, r.end, r.first_line, False))
    return tasks


def _pread(fd: int, offset: int, size: int) -> bytes:
    return os.pread(fd, size, offset)


def prepare(
    config: Config, parts_dir: str, senders: int, shards: int | None
) -> tuple[list[ShardTask], list[ShardTask]]:
    """(the plan, its shards still to run) -- a rerun finds some complete already."""
    if shards is None:
        total = sum(os.path.getsize(p) for p in config.inputs)
        shards = max(1, min(senders * SHARDS_PER_SENDER, total // MIN_RANGE_BYTES))
    plan = _load_or_plan(config, parts_dir, shards)
    return plan, [t for t in plan if completed(parts_dir, t) is None]


def _load_or_plan(config: Config, parts_dir: str, target: int) -> list[ShardTask]:
    """The stored plan when the inputs are unchanged (a rerun), else a fresh one."""
    fingerprint = _fingerprint(config)
    plan_file = os.path.join(parts_dir, "plan.json")
    stored = read_manifest(plan_file)
    if stored is not None and stored.get("inputs") == fingerprint:
        for name in os.listdir(parts_dir):
            if ".tmp-" in name:  # an attempt that died mid-shard
                os.remove(os.path.join(parts_dir, name))
        with contextlib.suppress(TypeError, KeyError):
            return [ShardTask(**t) for t in stored["shards"]]
    if os.path.exists(parts_dir):
        if stored is None:
            raise ConfigError(
                f"{parts_dir} exists and holds no adbatch plan; move it away or choose another -o"
            )
        shutil.rmtree(parts_dir)  # parts of other inputs are of no use
    os.makedirs(parts_dir)
    tasks = plan_shards(config, target)
    write_json_atomic(
        os.path.join(parts_dir, "plan.json"),
        {"inputs": fingerprint, "shards": [asdict(t) for t in tasks]},
    )
    return tasks


def part_path(parts_dir: str, index: int) -> str:
    return os.path.join(parts_dir, f"part-{index:05d}.jsonl")


def meta_path(parts_dir: str, index: int) -> str:
    return os.path.join(parts_dir, f"part-{index:05d}.json")


def completed(parts_dir: str, task: ShardTask) -> dict[str, Any] | None:
    """The meta of a shard whose part is complete and unchanged, else None."""
    meta = read_manifest(meta_path(parts_dir, task.index))
    if meta is None or not os.path.exists(part_path(parts_dir, task.index)):
        return None
    info = scan_part(part_path(parts_dir, task.index))
    return meta if (info.rows, info.sha256) == (meta["rows"], meta["sha256"]) else None
