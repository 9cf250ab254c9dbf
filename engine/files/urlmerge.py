"""Where `adbatch merge` writes: a local file, or an object (`-o s3://b/all.jsonl`).

Rules:
- A local output is opened as before merge reads a part (a refusal is exit 2, nothing
  written), its manifest written atomically beside it (files/manifests.py). A regular
  file is written whole or not at all, as an object is: into a file of its own beside
  it, renamed over it at the end; the manifest of the output it replaces goes first, so
  a merge killed half-way leaves the old output and its manifest, or the new output and
  none, never a half-written one beside a manifest that vouches for it.
- An object is streamed up (a multipart upload on S3) and exists only when the merge
  ended well: a failure, or a signal (`adbatch merge` raises runtime/shutdown.py's
  Interrupted on SIGINT/SIGTERM), discards the upload (storage.writing). A merge killed
  outright (kill -9) cannot: the uploads it left at the output's key are aborted when
  the output is next opened (servermerge.abort_pending, as for `run -o URL`). Its
  manifest is the object beside it, written whole.
- The sha256 of any output is taken as it is written, never read back: a pipe or a
  device (`-o /dev/stdout | wc -l`, a FIFO) would never end. A pipe or a device holds
  no file to merge again: no manifest beside it (manifests.holds_a_file).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from engine.errors import EngineError, InputError, OutputError
from engine.files import servermerge
from engine.files.manifests import (
    MANIFEST_SUFFIX,
    holds_a_file,
    manifest_bytes,
    manifest_path,
    merged_manifest,
    write_merged_manifest,
)
from engine.files.parts import PARTS_SUFFIX
from engine.files.sinks import refuse_if_held
from engine.files.storage import (
    StorageOptions,
    check_bucket,
    expand_inputs,
    filesystem,
    is_url,
    reason,
    shown,
    write_object,
    writing,
)


def expand_parts(given: tuple[str, ...], options: StorageOptions = ()) -> tuple[str, ...]:
    """`adbatch merge`'s parts: URL globs and prefixes expanded (storage.expand_inputs),
    without what a glob catches beside the outputs it means: their manifests
    (`X.manifest.json`) and the parts of an output not yet joined (`X.parts/...`)."""
    found: list[str] = []
    for name in given:
        objects = expand_inputs((name,), options)
        if objects != (name,):  # a glob or a prefix: what it caught; a named part stays
            objects = tuple(o for o in objects if not _beside_an_output(o))
        found.extend(objects)
    if not found:
        raise InputError(f"merge: no parts in {', '.join(shown(g) for g in given)}")
    return tuple(found)


def _beside_an_output(url: str) -> bool:
    return url.endswith(MANIFEST_SUFFIX) or f"{PARTS_SUFFIX}/" in url


class _Hashing:
    """A writer that hashes what goes through it."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self._out.write(data)


class MergeOutput:
    """The merged output at `name` (a path or a URL)."""

    def __init__(self, name: str, options: StorageOptions = ()) -> None:
        self.name = name
        self.options = options
        self._hashing: _Hashing | None = None

    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        if not is_url(self.name):
            with self._local() as out:
                self._hashing = _Hashing(out)
                yield cast(BinaryIO, self._hashing)
            return
        fs, path = filesystem(self.name, self.options)
        check_bucket(fs, path, self.name, self.options)  # exit 2, naming the bucket
        try:
            servermerge.abort_pending(fs, path)  # left by a merge killed mid-upload
            with writing(fs, path) as stream:
                self._hashing = _Hashing(stream)
                yield cast(BinaryIO, self._hashing)
        except EngineError:
            raise
        except Exception as exc:  # the store refused (no bucket, no permission)
            raise OutputError(
                f"cannot write output {shown(self.name)}: {reason(exc, self.options)}"
            ) from None

    @contextlib.contextmanager
    def _local(self) -> Iterator[BinaryIO]:
        """The local output: written beside, renamed over it (a regular file, or none
        yet), or in place (a device, a pipe, a symlink: what it names is kept)."""
        name = self.name
        refuse_if_held(name)  # another run's -o
        whole = not os.path.islink(name) and (not os.path.exists(name) or os.path.isfile(name))
        folder, base = os.path.split(name)
        temp = os.path.join(folder, f".{base}.{os.getpid()}.merging") if whole else name
        try:
            out = open(temp, "wb")
        except OSError as exc:
            raise OutputError(
                f"cannot write output {name}: {exc.strerror or exc}", before_run=True
            ) from None
        try:
            with out:
                yield out
                if whole:
                    out.flush()
                    os.fsync(out.fileno())
            if whole:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(manifest_path(name))  # it vouched for the output replaced
                os.replace(temp, name)
        except BaseException:
            if whole:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
            raise

    def sha256(self) -> str:
        """The sha256 of what `open` wrote (hashed as it went)."""
        assert self._hashing is not None, "sha256 before open"
        return self._hashing.digest.hexdigest()

    def write_manifest(self, entries: list[dict[str, Any]], **extra: Any) -> None:
        """The manifest beside the output; none beside a pipe or a device."""
        if not holds_a_file(self.name):
            return
        if is_url(self.name):
            data = manifest_bytes(merged_manifest(entries, **extra))
            write_object(manifest_path(self.name), data, self.options)
        else:
            write_merged_manifest(self.name, entries, **extra)
