"""An output URL's parts: read back for `--resume`, joined into the one object at the end.

Rules:
- What an earlier run left is, in order: the output object itself (an earlier join), then
  its parts (files/parts.py's order). `--resume` reads all of it with
  `records.parse_record` (the one parser) into a files/resume.py `ResumeIndex`, so the
  run sends only the events they do not answer for good. A line that is not an adbatch
  record is an error, never skipped (a part is whole: it was one PUT).
- A run without `--resume` starts afresh: the earlier object, its manifest and its parts
  are removed first (as a local output is truncated).
- The join, when the run ends well: the pieces are concatenated into the output object
  in order -- on the store's side (s3fs `merge`: multipart UploadPartCopy) when the store
  has it and every piece but the last is at least 5 MiB (S3's least part; at most
  10,000 parts of at most 5 GiB), else streamed through this process. Neither leaves
  an incomplete multipart upload when it fails (files/servermerge.py, storage.writing);
  those of a join killed mid-way are aborted when the output is opened and at each join.
  When the earlier run left superseded records (a transient record sent again, or a
  join whose parts were not yet removed), the join keeps one line per event, its
  latest, as `compact` does for a local file. The object is written whole (an object store's PUT or
  completed multipart upload; a temporary name and a rename when it is also a piece).
- Verified, then kept: the joined object's size must be the pieces' sum (what was
  kept of them, when filtered); then `URL.manifest.json` is written (the merged
  manifest of files/manifests.py: rows and sha256 per piece, the object's sha256), and
  only then are the parts removed. A join that fails leaves every part: `--resume`
  joins again.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from engine.config import Config
from engine.core.records import is_transient, parse_record, record_seq
from engine.errors import InputError, OutputError
from engine.files import servermerge
from engine.files.manifests import PartInfo, manifest_bytes, manifest_path, merged_manifest
from engine.files.parts import (
    PartLimits,
    PartSink,
    is_local,
    list_parts,
    next_index,
    parts_dir,
    put_whole,
)
from engine.files.resume import ResumeIndex
from engine.files.storage import BLOCK_SIZE, check_bucket, filesystem, reason, shown, writing

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

#: S3's least multipart part (all but the last) and most parts, for a server-side join.
MIN_MERGE_PART = 5 << 20
MAX_MERGE_PART = 5 << 30
MAX_MERGE_PARTS = 10_000


@dataclass(slots=True)
class Earlier:
    """What an earlier run left at the output: its pieces in order, indexed."""

    pieces: list[PartInfo] = field(default_factory=list)
    index: ResumeIndex = field(default_factory=ResumeIndex)
    digest: Any = field(default_factory=hashlib.sha256)  # of the pieces, in order

    @property
    def superseded(self) -> bool:
        """Whether a join must drop lines (an event with two records, or one that this
        run may answer again)."""
        return bool(self.index.duplicates or self.index.transient)


def _lines(fs: AbstractFileSystem, path: str) -> Iterator[bytes]:
    with fs.open(path, "rb", block_size=BLOCK_SIZE) as f:
        yield from f


def read_earlier(fs: AbstractFileSystem, path: str, name: str) -> Earlier:
    """Index the object at `path` (if any) and its parts, for --resume."""
    earlier = Earlier()
    pieces = ([path] if fs.isfile(path) else []) + list_parts(fs, path)
    index = earlier.index
    for piece in pieces:
        digest = hashlib.sha256()
        rows = size = 0
        for line in _lines(fs, piece):
            record = parse_record(line) if line.endswith(b"\n") else None
            if record is None or record.seq is None:
                raise InputError(
                    f"cannot resume: {shown(name)}: {piece} line {rows + 1}: not an adbatch record"
                )
            index.add(record.seq, record.source, record.id,
                      transient=is_transient(record.status, record.error_kind))  # fmt: skip
            digest.update(line)
            earlier.digest.update(line)
            rows += 1
            size += len(line)
        earlier.pieces.append(PartInfo(piece, rows, digest.hexdigest(), size))
    return earlier


def clear_output(fs: AbstractFileSystem, path: str) -> None:
    """A fresh run: remove the earlier object, its manifest and its parts."""
    for old in [path, manifest_path(path), *list_parts(fs, path)]:
        if fs.isfile(old):
            fs.rm_file(old)


def open_part_output(config: Config) -> tuple[PartSink, ResumeIndex | None]:
    """The sink of `-o URL` and, with --resume, the index of what it already holds."""
    assert config.output is not None
    name = config.output
    fs, path = filesystem(name, config.storage_options)
    check_bucket(fs, path, name, config.storage_options)  # exit 2 now, not after the run
    try:
        servermerge.abort_pending(fs, path)  # left by a join killed mid-way (kill -9)
        if config.resume:
            earlier = read_earlier(fs, path, name)
        else:
            clear_output(fs, path)
            earlier = Earlier()
        first = next_index(list_parts(fs, path))
    except (InputError, OutputError):
        raise
    except Exception as exc:
        raise OutputError(
            f"cannot write output {shown(name)}: {reason(exc, config.storage_options)}",
            before_run=True,
        ) from None

    def finish(sink: PartSink) -> None:
        join(sink, earlier)

    sink = PartSink(
        fs,
        path,
        name=name,
        limits=PartLimits(config.part_size, config.part_seconds),
        first_index=first,
        digest=earlier.digest,
        finish=finish,
    )
    return sink, earlier.index if config.resume else None


def join(sink: PartSink, earlier: Earlier) -> None:
    """Join what the earlier run left and this run's parts into the output object."""
    fs, path = sink.fs, sink.path
    pieces = [*earlier.pieces, *sink.parts]
    try:
        servermerge.abort_pending(fs, path)
        if earlier.superseded:
            entries, size, digest = _filtered(fs, path, pieces)
            how = "copied, superseded records dropped"
        else:
            entries = [_entry(p) for p in pieces]
            size, digest = sum(p.size for p in pieces), sink.digest.hexdigest()
            how = concatenate(fs, path, pieces)
        fs.invalidate_cache(path)
        got = fs.info(path)["size"]
        if got != size:
            raise OutputError(
                f"output {shown(sink.name)} holds {got} bytes after the join, not {size}; "
                "its parts are kept: run --resume to join again"
            )
        data = merged_manifest(entries, sha256=digest, bytes=size, joined=how)
        put_whole(fs, manifest_path(path), manifest_bytes(data))
        parts = [piece.path for piece in pieces if piece.path != path]
        if parts:  # one request per 1,000 parts on S3 (DeleteObjects), not one each
            fs.rm(parts)
        _remove_empty_parts_dir(fs, path)
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(
            f"cannot join the parts of output {shown(sink.name)}: {reason(exc)}; "
            "they are kept: run --resume to join them"
        ) from None


def _remove_empty_parts_dir(fs: AbstractFileSystem, path: str) -> None:
    """A local store's folder of parts, once empty (an object store has no folders)."""
    if is_local(fs) and fs.isdir(parts_dir(path)) and not fs.ls(parts_dir(path)):
        fs.rmdir(parts_dir(path))


def _entry(piece: PartInfo) -> dict[str, Any]:
    return {"part": piece.path.rpartition("/")[2], "rows": piece.rows, "sha256": piece.sha256}


def concatenate(fs: AbstractFileSystem, path: str, pieces: list[PartInfo]) -> str:
    """Concatenate `pieces` into `path`: on the store's side when it can, else streamed."""
    if not pieces:
        put_whole(fs, path, b"")
        return "empty"
    if [p.path for p in pieces] == [path]:
        return "already whole"
    if _mergeable(fs, pieces):
        try:  # an incomplete multipart upload is aborted (files/servermerge.py)
            servermerge.merge(fs, path, [p.path for p in pieces])
            return "server-side"
        except Exception:  # a store that refuses UploadPartCopy: copy it through here
            pass

    def fill(out: BinaryIO) -> None:
        for piece in pieces:
            _copy(fs, piece.path, out)

    _write(fs, path, pieces, fill)
    return "copied"


def _mergeable(fs: AbstractFileSystem, pieces: list[PartInfo]) -> bool:
    if not servermerge.can_merge(fs) or len(pieces) > MAX_MERGE_PARTS:
        return False
    if any(p.size > MAX_MERGE_PART for p in pieces):
        return False
    return all(p.size >= MIN_MERGE_PART for p in pieces[:-1])


def _write(
    fs: AbstractFileSystem,
    path: str,
    pieces: list[PartInfo],
    fill: Callable[[BinaryIO], object],
) -> None:
    """Write the object at `path` whole with `fill`: straight to it on an object store
    (visible only when complete), through a temporary name and a rename when it is one
    of the pieces or the store is a local disk."""
    through = is_local(fs) or any(p.path == path for p in pieces)
    target = f"{path}.tmp-{uuid.uuid4().hex}" if through else path
    with writing(fs, target) as out:  # a failure leaves no object, nor an upload open
        fill(out)
    if through:
        fs.mv(target, path)


def _copy(fs: AbstractFileSystem, source: str, out: BinaryIO) -> None:
    with fs.open(source, "rb", block_size=BLOCK_SIZE) as f:
        while block := f.read(BLOCK_SIZE):
            out.write(block)


def _filtered(
    fs: AbstractFileSystem, path: str, pieces: list[PartInfo]
) -> tuple[list[dict[str, Any]], int, str]:
    """Join keeping one line per event, its latest: (manifest entries, bytes, sha256)."""
    index = ResumeIndex()
    for piece in pieces:  # which line is each event's latest
        for line in _lines(fs, piece.path):
            seq = record_seq(line)
            if seq is not None:
                index.add(seq, "", None)
    entries: list[dict[str, Any]] = []
    total = hashlib.sha256()
    size = 0

    def fill(out: BinaryIO) -> None:
        nonlocal size
        line_no = 0
        for piece in pieces:
            digest = hashlib.sha256()
            rows = 0
            for line in _lines(fs, piece.path):
                seq = record_seq(line)
                if seq is None:
                    continue  # not a record (none is, in a part this project wrote)
                line_no += 1
                if index._keeps(line_no, seq):
                    out.write(line)
                    digest.update(line)
                    total.update(line)
                    rows += 1
                    size += len(line)
            entries.append({**_entry(piece), "rows": rows, "sha256": digest.hexdigest()})

    _write(fs, path, pieces, fill)
    return entries, size, total.hexdigest()
