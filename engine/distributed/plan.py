"""The plan of a Ray run: inputs -> shards, kept with their parts (no Ray here).

Rules:
- An uncompressed JSONL input, a file or an object, is cut into byte ranges at line
  starts (`shard.cut_ranges`, which also numbers the lines, so `source` stays
  `path:line`, `URL:line`); a Parquet input into runs of whole row groups; a gzip or CSV
  input is one shard (a gzip stream cannot be entered mid-way, a CSV record may span
  lines and needs its header). An object is read by ranged reads, never downloaded.
- The plan is stored in `OUT.parts/plan.json` (store.py: a directory or a store prefix)
  with each input's size and version (a file's mtime; an object's etag, else its
  mtime); a rerun with the same inputs reuses it and skips shards whose part is
  complete (store.py says when one is).
- Beside it, `options.json` holds a digest of the options that shape a record
  (`RECORD_OPTIONS`: where and how the calls go, what a record keeps); a rerun with
  other such options plans afresh (the old parts go): one output never mixes records
  of two settings.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from engine.config import Config
from engine.core.shard import ReadAt, cut_ranges
from engine.core.urls import written
from engine.distributed.store import PLAN, LocalParts, Parts, meta_name, object_version, part_name
from engine.errors import ConfigError, InputError
from engine.files.sources import GZIP_MAGIC, source_format
from engine.files.storage import StorageOptions, filesystem, is_url, open_read, reason, shown

MIN_RANGE_BYTES = 1 << 20
SHARDS_PER_SENDER = 4
OPTIONS = "options.json"

#: The options that shape the records of a run (not how fast, how shown or with which
#: credentials): parts written under other values are not reused. `ordered` too: a part
#: written in the order its calls ended cannot be a piece of an --ordered output.
RECORD_OPTIONS = (
    "endpoint", "partner_id", "user_agent", "ip", "headers", "timeout", "http_client",
    "dry_run", "mock", "input_format", "max_line_bytes", "max_response_bytes", "retries",
    "give_up_after", "retry_after_cap", "records", "ordered",
)  # fmt: skip


def record_options(config: Config) -> str:
    """A digest of `config`'s RECORD_OPTIONS (a digest: a header may hold a secret)."""
    values = repr([(name, getattr(config, name)) for name in RECORD_OPTIONS])
    return hashlib.sha256(values.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ShardTask:
    """One shard: bytes [start, end) of `path` (whole: the entire input via `read_items`;
    groups: row groups [start, end) of a Parquet input, its first row `first_line`)."""

    index: int
    path: str
    start: int
    end: int
    first_line: int
    whole: bool
    groups: bool = False


def is_parquet(path: str) -> bool:
    return path.lower().endswith(".parquet")


def _stat(path: str, options: StorageOptions) -> tuple[str, int, object]:
    """(name, size, version): a file's absolute path and mtime; an object's URL and etag."""
    if not is_url(path):
        st = os.stat(path)
        return os.path.abspath(path), st.st_size, st.st_mtime_ns
    fs, key = filesystem(path, options)
    try:
        info = fs.info(key)
    except Exception as exc:
        raise InputError(f"cannot read input {shown(path)}: {reason(exc, options)}") from None
    return path, int(info.get("size") or 0), object_version(info)


@contextlib.contextmanager
def _reader(path: str, options: StorageOptions) -> Iterator[ReadAt]:
    """Reads at an offset: `pread` on a file; on an object, ranged GETs of
    storage.BLOCK_SIZE, read ahead (the cutter reads front to back)."""
    if is_url(path):
        with open_read(path, options) as f:

            def read(offset: int, size: int) -> bytes:
                f.seek(offset)
                return f.read(size)

            yield read
        return
    with open(path, "rb") as f:
        yield functools.partial(_pread, f.fileno())


def _pread(fd: int, offset: int, size: int) -> bytes:
    return os.pread(fd, size, offset)


def _groups(path: str, options: StorageOptions, parts: int, first: int) -> list[ShardTask]:
    """Runs of whole row groups of a Parquet input, about `parts` of them."""
    from engine.files.parquet import group_rows  # pyarrow only for Parquet inputs

    rows = group_rows(path, options)
    count = max(1, min(parts, len(rows)))
    tasks: list[ShardTask] = []
    for k in range(count):
        start, end = len(rows) * k // count, len(rows) * (k + 1) // count
        if start < end:
            row = sum(rows[:start]) + 1
            tasks.append(ShardTask(first + len(tasks), path, start, end, row, False, True))
    return tasks


def plan_shards(
    config: Config, target: int, sizes: dict[str, int] | None = None
) -> list[ShardTask]:
    """Cut the inputs into about `target` shards, in proportion to their sizes."""
    options = config.storage_options
    if sizes is None:
        sizes = {path: _stat(path, options)[1] for path in config.inputs}
    total = sum(sizes.values()) or 1
    tasks: list[ShardTask] = []
    for path in config.inputs:
        size = sizes[path]
        parts = max(1, round(target * size / total))
        if is_parquet(path):
            tasks.extend(_groups(path, options, parts, len(tasks)))
            continue
        with _reader(path, options) as read:
            whole = source_format(path, config.input_format) == "csv"
            whole = whole or read(0, 2) == GZIP_MAGIC
            if whole or size == 0:
                tasks.append(ShardTask(len(tasks), path, 0, size, 1, True))
                continue
            for r in cut_ranges(size, parts, read):
                tasks.append(ShardTask(len(tasks), path, r.start, r.end, r.first_line, False))
    return tasks


def prepare(
    config: Config,
    parts: Parts | str,
    senders: int,
    shards: int | None,
    *,
    options: str | None = None,
) -> tuple[list[ShardTask], list[ShardTask]]:
    """(the plan, its shards still to run) -- a rerun finds some complete already.
    `parts`: where they are kept (a directory's path: `LocalParts`); `options`: the
    digest of the options as given (default `record_options(config)`; --mock's
    endpoint changes from run to run)."""
    parts = LocalParts(parts) if isinstance(parts, str) else parts
    stats = {path: _stat(path, config.storage_options) for path in config.inputs}
    # the stored plan names each input without its credentials (it is a file or an object)
    fingerprint: list[list[object]] = [[written(s[0]), *s[1:]] for s in stats.values()]
    sizes = {path: s[1] for path, s in stats.items()}
    if shards is None:
        total = sum(sizes.values())
        shards = max(1, min(senders * SHARDS_PER_SENDER, total // MIN_RANGE_BYTES))
    digest = options or record_options(config)
    _forget_other_options(parts, digest)
    plan = _load_or_plan(config, parts, shards, fingerprint, sizes)
    parts.write_json(OPTIONS, {"options": digest})
    return plan, [t for t in plan if parts.completed(t.index) is None]


def _load_or_plan(
    config: Config,
    parts: Parts,
    target: int,
    fingerprint: list[list[object]],
    sizes: dict[str, int],
) -> list[ShardTask]:
    """The stored plan when the inputs are unchanged (a rerun), else a fresh one."""
    stored = parts.read_json(PLAN)
    if stored is not None and stored.get("inputs") == fingerprint:
        parts.drop_attempts()
        with contextlib.suppress(TypeError, KeyError, IndexError, ValueError):
            return [_restored(t, config.inputs) for t in stored["shards"]]
    if stored is None and parts.exists():
        raise ConfigError(
            f"{shown(parts.location)} exists and holds no adbatch plan; "
            "move it away or choose another -o"
        )
    parts.reset()  # parts of other inputs are of no use
    tasks = plan_shards(config, target, sizes)
    shards = [_stored(t, config.inputs) for t in tasks]
    plan: dict[str, Any] = {"inputs": fingerprint, "shards": shards}
    parts.write_json(PLAN, plan)
    return tasks


def _stored(task: ShardTask, inputs: tuple[str, ...]) -> dict[str, Any]:
    """A shard as the stored plan holds it: its input's URL without credentials (a
    password, a signed URL's query values), plus that input's index into `inputs`."""
    return {**asdict(task), "path": written(task.path), "input": inputs.index(task.path)}


def _restored(stored: dict[str, Any], inputs: tuple[str, ...]) -> ShardTask:
    """A stored shard, reading its input by the real URL (kept in memory only)."""
    fields = {k: v for k, v in stored.items() if k != "input"}
    return ShardTask(**{**fields, "path": inputs[int(stored["input"])]})


def _forget_other_options(parts: Parts, digest: str) -> None:
    """Remove the plan and parts of a run with other record options (or of a version
    that kept none): its records would not be this run's."""
    kept = parts.read_json(OPTIONS)
    if (kept or {}).get("options") != digest and parts.read_json(PLAN) is not None:
        parts.remove()


def part_path(parts_dir: str, index: int) -> str:
    """A part's file in a local `OUT.parts/`."""
    return os.path.join(parts_dir, part_name(index))


def meta_path(parts_dir: str, index: int) -> str:
    """A part's meta in a local `OUT.parts/`."""
    return os.path.join(parts_dir, meta_name(index))
