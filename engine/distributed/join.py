"""The end of a Ray run: its parts joined, in shard order, into `-o`, with its manifest.

Rules:
- A file: the parts are copied into a temporary file beside `-o`, checked against their
  metas as they are copied, fsynced and renamed, so `-o` only ever appears complete; then
  `OUT.manifest.json` (input, byte range, rows and sha256 per shard, the file's sha256)
  and `OUT.parts/` is removed.
- An object: the parts are joined by files/partjoin.py's concatenation (on the store's
  side when it can: S3's UploadPartCopy, else streamed through the driver into one
  upload, which appears whole); each part must still be the one its meta names (size and
  etag), and the object's size must be their sum. Then the manifest object, then the
  parts are removed. A join that fails leaves the parts: running again joins them.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from engine.core.urls import written
from engine.distributed.plan import ShardTask
from engine.distributed.store import LocalParts, Parts, StoreParts, meta_name, part_name
from engine.errors import FatalError
from engine.files.manifests import (
    PartInfo,
    copy_part,
    manifest_bytes,
    manifest_path,
    merged_manifest,
    scan_part,
    write_merged_manifest,
)
from engine.files.partjoin import concatenate
from engine.files.parts import put_whole
from engine.files.storage import StorageOptions, filesystem, shown


def join_parts(plan: list[ShardTask], parts: Parts, output: str, options: StorageOptions) -> int:
    """Join the parts of `plan` into `output` with its manifest; the rows written."""
    if isinstance(parts, StoreParts):
        return _join_objects(plan, parts, output, options)
    assert isinstance(parts, LocalParts)
    return _join_files(plan, parts.directory, output)


def _entry(task: ShardTask, rows: int, sha256: str) -> dict[str, Any]:
    where = {"row_groups": [task.start, task.end]} if task.groups else {}
    span = {} if task.groups else {"bytes": [task.start, task.end]}
    return {"shard": task.index, "input": written(task.path), **span, **where,
            "rows": rows, "sha256": sha256}  # fmt: skip


def _join_files(plan: list[ShardTask], parts_dir: str, output: str) -> int:
    tmp = f"{output}.tmp-{uuid.uuid4().hex}"
    entries: list[dict[str, Any]] = []
    with open(tmp, "wb") as out:
        for task in plan:
            meta = LocalParts(parts_dir).read_json(meta_name(task.index))
            if meta is None:
                raise FatalError(f"shard {task.index} has no part in {parts_dir}")
            info = copy_part(os.path.join(parts_dir, part_name(task.index)), out)
            if (info.rows, info.sha256) != (meta["rows"], meta["sha256"]):
                raise FatalError(f"part {info.path} changed after its shard finished")
            entries.append(_entry(task, info.rows, info.sha256))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, output)
    total = scan_part(output)
    write_merged_manifest(output, entries, sha256=total.sha256, shards=len(plan))
    LocalParts(parts_dir).remove()
    return total.rows


def _join_objects(
    plan: list[ShardTask], parts: StoreParts, output: str, options: StorageOptions
) -> int:
    fs, path = filesystem(output, options)
    pieces: list[PartInfo] = []
    entries: list[dict[str, Any]] = []
    for task in plan:
        meta = parts.completed(task.index)
        if meta is None:
            raise FatalError(f"shard {task.index} has no complete part in {shown(parts.location)}")
        rows, sha256 = int(meta["rows"]), str(meta["sha256"])
        pieces.append(PartInfo(parts.part_key(task.index), rows, sha256, int(meta["size"])))
        entries.append(_entry(task, rows, sha256))
    how = concatenate(fs, path, pieces)
    size = sum(p.size for p in pieces)
    fs.invalidate_cache(path)
    got = int(fs.info(path)["size"])
    if got != size:
        raise FatalError(
            f"output {shown(output)} holds {got} bytes after the join, not {size}; "
            f"its parts are kept in {shown(parts.location)}: run again to join them"
        )
    manifest = merged_manifest(entries, bytes=size, shards=len(plan), joined=how)
    put_whole(fs, manifest_path(path), manifest_bytes(manifest))
    parts.remove()
    return sum(p.rows for p in pieces)
