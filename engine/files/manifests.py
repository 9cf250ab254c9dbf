"""Manifests: what a part file holds (rows, sha256), written beside it as JSON.

Rules:
- A part is read as whole blocks of 1 MiB, counting rows (newlines) and hashing its
  bytes (sha256) in the same pass; copying a part does both as it copies.
- A manifest is written through a temporary file, fsync and a rename: it is there whole
  or not at all, so a manifest that exists describes a part that was complete.
- A static shard's output (`run --shard I/N -o part`) gets `part.manifest.json` (shard,
  records in the whole input, rows, sha256); a merged file gets `OUT.manifest.json`
  (rows and sha256 per part, in the order they were joined), from `merge` and the Ray
  backend alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from engine.config import Config
from engine.core.urls import written
from engine.errors import ConfigError, InputError
from engine.files.storage import (
    StorageOptions,
    is_url,
    known_size,
    open_read,
    read_object,
    write_object,
)

MANIFEST_SUFFIX = ".manifest.json"
_BLOCK = 1 << 20
_SAMPLE = 1 << 16


def manifest_path(output: str) -> str:
    return output + MANIFEST_SUFFIX


def holds_a_file(output: str) -> bool:
    """Whether `output` is a file or an object that a manifest can describe: not a pipe
    or a device (`-o /dev/null`, a FIFO), nor a name under /dev or /proc that stands for
    one (`/dev/stdout` redirected to a file: /dev/stdout.manifest.json cannot be)."""
    if is_url(output):
        return True
    folder = os.path.realpath(os.path.dirname(os.path.abspath(output)))
    special = any(folder == top or folder.startswith(top + "/") for top in ("/dev", "/proc"))
    return not special and os.path.isfile(output)


def record_bytes_limit(max_response_bytes: int, max_line_bytes: int) -> int:
    """The longest record line a run writes: its response as JSON (where a control byte
    takes six characters) and what its event gave it (id, source, an invalid line's
    message): the shard's manifest holds it; `merge` reads no longer line."""
    return 8 * (max_response_bytes + max_line_bytes)


@dataclass(frozen=True, slots=True)
class PartInfo:
    """A part file as it is on disk: whole lines, their bytes' sha256."""

    path: str
    rows: int
    sha256: str
    size: int


def _open(path: str, options: StorageOptions) -> BinaryIO:
    return open_read(path, options) if is_url(path) else open(path, "rb")


def scan_part(path: str, options: StorageOptions = ()) -> PartInfo:
    """Rows and sha256 of a file or an object (one pass)."""
    import hashlib  # (here: a run that joins no parts never loads it)

    digest = hashlib.sha256()
    rows = size = 0
    try:
        with _open(path, options) as f:
            while block := f.read(_BLOCK):
                digest.update(block)
                rows += block.count(b"\n")
                size += len(block)
    except OSError as exc:
        raise InputError(f"cannot read part {path}: {exc.strerror or exc}") from None
    return PartInfo(path, rows, digest.hexdigest(), size)


def copy_part(path: str, out: BinaryIO) -> PartInfo:
    """Append the file at `path` to `out` in blocks; its rows and sha256 as copied."""
    import hashlib

    digest = hashlib.sha256()
    rows = size = 0
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read part {path}: {exc.strerror or exc}") from None
    with f:
        while block := f.read(_BLOCK):
            digest.update(block)
            rows += block.count(b"\n")
            size += len(block)
            out.write(block)
    return PartInfo(path, rows, digest.hexdigest(), size)


def _dumps(data: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        # A lone surrogate (a path's undecodable byte, from surrogateescape), which UTF-8
        # cannot carry: written as its JSON escape (`\udcff`), which `read_manifest`
        # reads back as the same string, so a path compared or opened again is the same.
        return json.dumps(data, indent=2, ensure_ascii=True).encode()


def manifest_bytes(data: dict[str, Any]) -> bytes:
    """A manifest's file content (an object store's manifest is written with it whole)."""
    return _dumps(data) + b"\n"


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write `data` to `path` through a temporary file and a rename (never half a file).
    The temporary file is new (mkstemp), so it can never be an existing file."""
    import tempfile  # (here: a run that writes no manifest never loads it)

    text = manifest_bytes(data)
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=directory or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def input_identity(path: str) -> dict[str, Any] | None:
    """What tells an input from another of the same name and line count without reading
    it all: its size, and for a file the sha256 of its first and last 64 KiB. None for
    stdin, a pipe, a device, a file gone, or an object whose size its listing did not
    give (merge then compares names only, as for a manifest without it)."""
    import hashlib  # (here: a run without --shard never loads it)

    if is_url(path):
        size = known_size(path)
        return None if size is None else {"size": size}
    try:
        if path == "-" or not stat.S_ISREG(os.stat(path).st_mode):
            return None  # (never opened: a FIFO's open would wait for a writer)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.sha256(f.read(_SAMPLE))
            if size > _SAMPLE:
                f.seek(max(_SAMPLE, size - _SAMPLE))
                digest.update(f.read(_SAMPLE))
    except OSError:
        return None
    return {"size": size, "sample": digest.hexdigest()}


def write_shard_manifest(config: Config, *, records: int) -> None:
    """The manifest of a static shard's output (called by `run` when `--shard` is set);
    of an output URL, the object beside it, written whole; none for a pipe or a device."""
    assert config.shard is not None
    assert config.output is not None
    if not holds_a_file(config.output):
        return  # a pipe or a device (-o /dev/null) holds no part to merge: none beside it
    options = config.storage_options
    info = scan_part(config.output, options)
    write = write_json_atomic
    if is_url(config.output):

        def write(path: str, data: dict[str, Any]) -> None:
            write_object(path, manifest_bytes(data), options)

    write(
        manifest_path(config.output),
        {
            "adbatch": "shard",
            "shard": list(config.shard),
            "by": config.shard_by,
            "inputs": [written(path) for path in config.inputs],
            "input_identity": [input_identity(path) for path in config.inputs],
            "records": records,
            "max_record_bytes": record_bytes_limit(
                config.max_response_bytes, config.max_line_bytes
            ),
            "rows": info.rows,
            "sha256": info.sha256,
        },
    )


def check_resumed_shard(config: Config) -> None:
    """A --resume of a static shard's output resumes that shard: ConfigError (exit 2)
    when the manifest beside the output names another shard (or sharding), which would
    add another shard's records to this one's part."""
    if not config.resume or config.output in (None, "-"):
        return
    found = read_manifest(manifest_path(config.output), config.storage_options)
    if not found or found.get("adbatch") != "shard":
        return
    shard, by = found.get("shard"), found.get("by")
    if config.shard is None or list(config.shard) != shard or config.shard_by != by:
        given = "no --shard" if config.shard is None else "--shard {}/{}".format(*config.shard)
        held = "{}/{}".format(*shard) if isinstance(shard, list) and len(shard) == 2 else "?"
        raise ConfigError(
            f"--resume: {written(config.output)} holds shard {held} (--shard-by {by}): "
            f"resume it with --shard {held} --shard-by {by} (given: {given})"
        )


def read_manifest(path: str, options: StorageOptions = ()) -> dict[str, Any] | None:
    """The JSON object at `path` (a file or an object); None when there is none (or it
    holds no object)."""
    try:
        if is_url(path):
            found = read_object(path, options)
            if found is None:
                return None
            text = found
        else:
            with open(path, "rb") as f:
                text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        try:  # a path's lone surrogate, escaped by `write_json_atomic` (orjson refuses it)
            data = json.loads(text)
        except ValueError:
            raise InputError(f"cannot read manifest {path}: {exc}") from None
    return data if isinstance(data, dict) else None


def merged_manifest(parts: Iterable[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The manifest of a merged file or object: `parts` in the order they were joined."""
    entries = list(parts)
    return {
        "adbatch": "merged",
        **extra,
        "rows": sum(int(p["rows"]) for p in entries),
        "parts": entries,
    }


def write_merged_manifest(output: str, parts: Iterable[dict[str, Any]], **extra: Any) -> None:
    """`OUT.manifest.json` of a merged file: `parts` in the order they were joined."""
    write_json_atomic(manifest_path(output), merged_manifest(parts, **extra))
