"""Where a Ray run keeps its plan, parts and metas (`OUT.parts/`): a directory that every
node sees, or a prefix in an object store (`s3://bucket/out.jsonl.parts/`).

Rules:
- A directory: a part is written to a temporary file in it, fsynced and renamed; JSON
  goes through `write_json_atomic`. A part is complete when its meta's rows and sha256
  match the file.
- A store: a node needs nothing but the store. A sender writes its shard to a temporary
  file on its own disk, then puts it under the part's final name in one upload: an
  object appears whole or not at all (a multipart upload too, when it completes), so no
  rename is needed. The meta (rows, sha256, and the object's size and etag as the store
  reports them) is put after the part, so a meta always names a complete part. A rerun
  trusts a part whose size and etag match its meta, without reading it again.
- A sender gets the driver's storage environment (`storage_environ`: the AWS and Azure
  variables that name the store, its region and the credentials given to the driver),
  with the run's configuration, as the token travels; a profile or a credentials file
  is a path on the driver's machine and stays there (a node then uses its own chain:
  an instance role, workload identity).
- A sender killed mid-shard leaves its scratch file on its node; the next sender there
  removes it (`sweep_scratch`: files of processes that are gone).
- `parts_at` picks one of the two from the output's name; the plan, the actors and the
  merge only speak to `Parts`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from typing import Any, BinaryIO, Protocol

import orjson

from engine.errors import OutputError
from engine.files.manifests import (
    PartInfo,
    manifest_bytes,
    read_manifest,
    scan_part,
    write_json_atomic,
)
from engine.files.parts import is_local
from engine.files.storage import StorageOptions, filesystem, is_url, reason, shown

PLAN = "plan.json"

#: The variables `storage_environ` passes on to the senders.
STORAGE_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
    "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN",
)  # fmt: skip


#: What tells one version of an object from another, by driver: S3's ETag, Azure's
#: etag, GCS's generation, else a time (a local or in-memory store).
_VERSION_KEYS = (
    "ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "last_modified", "created",
)  # fmt: skip


def object_version(info: dict[str, Any]) -> str:
    """The version of an object from its `fs.info`: changes when the object is rewritten."""
    return next((str(info[k]) for k in _VERSION_KEYS if info.get(k)), "")


def storage_environ(names: list[str]) -> dict[str, str]:
    """The driver's storage variables, when the run reads or writes a URL (`names`)."""
    if not any(is_url(name) for name in names):
        return {}
    return {var: os.environ[var] for var in STORAGE_ENV if var in os.environ}


def part_name(index: int) -> str:
    return f"part-{index:05d}.jsonl"


def meta_name(index: int) -> str:
    return f"part-{index:05d}.json"


class Parts(Protocol):
    """The parts of one Ray run, wherever they are kept."""

    @property
    def location(self) -> str: ...
    def exists(self) -> bool: ...
    def reset(self) -> None: ...
    def drop_attempts(self) -> None: ...
    def read_json(self, name: str) -> dict[str, Any] | None: ...
    def write_json(self, name: str, data: dict[str, Any]) -> None: ...
    def scratch(self, index: int) -> str: ...
    def commit(self, scratch: str, index: int, meta: dict[str, Any]) -> PartInfo: ...
    def completed(self, index: int) -> dict[str, Any] | None: ...
    def open_part(self, index: int) -> BinaryIO: ...
    def remove(self) -> None: ...


def parts_at(output: str, options: StorageOptions, cwd: str) -> Parts:
    """The parts of the run writing `output`: `output.parts` on the store or on disk."""
    if is_url(output):
        return StoreParts(output.rstrip("/") + ".parts", options)
    return LocalParts(os.path.join(cwd, output + ".parts"))


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalParts:
    """`OUT.parts/` on storage every node sees (NFS, a shared volume)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    @property
    def location(self) -> str:
        return self.directory

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def exists(self) -> bool:
        return os.path.exists(self.directory)

    def reset(self) -> None:
        if os.path.exists(self.directory):
            shutil.rmtree(self.directory)  # parts of other inputs are of no use
        os.makedirs(self.directory)

    def drop_attempts(self) -> None:
        for name in os.listdir(self.directory):
            if ".tmp-" in name:  # an attempt that died mid-shard
                os.remove(self._path(name))

    def read_json(self, name: str) -> dict[str, Any] | None:
        return read_manifest(self._path(name))

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        write_json_atomic(self._path(name), data)

    def scratch(self, index: int) -> str:
        return f"{self._path(part_name(index))}.tmp-{uuid.uuid4().hex}"

    def commit(self, scratch: str, index: int, meta: dict[str, Any]) -> PartInfo:
        _fsync(scratch)
        info = scan_part(scratch)
        os.replace(scratch, self._path(part_name(index)))
        self.write_json(meta_name(index), {**meta, "rows": info.rows, "sha256": info.sha256})
        return info

    def completed(self, index: int) -> dict[str, Any] | None:
        meta = self.read_json(meta_name(index))
        part = self._path(part_name(index))
        if meta is None or not os.path.exists(part):
            return None
        info = scan_part(part)
        return meta if (info.rows, info.sha256) == (meta["rows"], meta["sha256"]) else None

    def open_part(self, index: int) -> BinaryIO:
        return open(self._path(part_name(index)), "rb")

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


_SCRATCH = re.compile(r"adbatch-(\d+)-part-\d+\.jsonl\.tmp-\w+")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def sweep_scratch() -> None:
    """Remove the scratch files that senders killed on this node left in its temporary
    directory (their process is gone), so a node's disk does not fill up with dead
    attempts. A live sender's file, or another program's, is left alone."""
    directory = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            found = _SCRATCH.fullmatch(name)
            if found and not _alive(int(found.group(1))):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(directory, name))


class StoreParts:
    """`OUT.parts/` as objects under a prefix of the output's store."""

    def __init__(self, url: str, options: StorageOptions) -> None:
        self.url = url
        self._options = options
        self._fs: Any = None
        self._root = ""

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "options": self._options}  # a filesystem does not travel

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["options"])  # type: ignore[misc]

    @property
    def location(self) -> str:
        return self.url

    @property
    def options(self) -> StorageOptions:
        return self._options

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs, self._root = filesystem(self.url, self._options)
        return self._fs

    @property
    def root(self) -> str:
        if self._fs is None:
            self._fs, self._root = filesystem(self.url, self._options)
        return self._root

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self) -> bool:
        self.fs.invalidate_cache(self.root)
        return bool(self.fs.exists(self.root))

    def reset(self) -> None:
        if self.exists():
            self.fs.rm(self.root, recursive=True)  # parts of other inputs are of no use
        if is_local(self.fs):
            self.fs.makedirs(self.root, exist_ok=True)

    def drop_attempts(self) -> None:
        """Nothing to drop: an attempt's part lives on its node until it is put whole
        (a local disk's temporary names are not parts: nothing reads them)."""

    def read_json(self, name: str) -> dict[str, Any] | None:
        try:
            data = self.fs.cat_file(self._path(name))
        except FileNotFoundError:
            return None
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None  # not one of ours: the plan check says so
        return value if isinstance(value, dict) else None

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        self.fs.pipe_file(self._path(name), manifest_bytes(data))

    def scratch(self, index: int) -> str:
        sweep_scratch()
        fd, path = tempfile.mkstemp(prefix=f"adbatch-{os.getpid()}-{part_name(index)}.tmp-")
        os.close(fd)
        return path

    def part_key(self, index: int) -> str:
        """The part's path within its store (as the store's filesystem names it)."""
        return self._path(part_name(index))

    def commit(self, scratch: str, index: int, meta: dict[str, Any]) -> PartInfo:
        info = scan_part(scratch)
        part = self.part_key(index)
        # One upload: the object appears whole. A local disk (file://) could show half
        # a file, so there it goes through a temporary name and a rename.
        through = is_local(self.fs)
        target = f"{part}.tmp-{uuid.uuid4().hex}" if through else part
        try:
            self.fs.put_file(scratch, target)
            if through:
                self.fs.mv(target, part)
            stored = self._info(part)
            if stored is None:
                raise FileNotFoundError(part)  # an upload the store does not show
            meta = {**meta, "rows": info.rows, "sha256": info.sha256, **stored}
            self.write_json(meta_name(index), meta)
        except Exception as exc:  # the driver's own words, redacted, on one line
            where = f"{shown(self.url)}/{part_name(index)}"
            raise OutputError(f"cannot write part {where}: {reason(exc, self._options)}") from None
        finally:
            os.remove(scratch)
        return info

    def _info(self, path: str) -> dict[str, Any] | None:
        """The object's size and version as the store says now; None when it is absent."""
        self.fs.invalidate_cache(path)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        return {"size": int(info.get("size") or 0), "version": object_version(info)}

    def completed(self, index: int) -> dict[str, Any] | None:
        meta = self.read_json(meta_name(index))
        if meta is None:
            return None
        stored = self._info(self._path(part_name(index)))
        if stored is None or stored != {"size": meta.get("size"), "version": meta.get("version")}:
            return None
        return meta

    def open_part(self, index: int) -> BinaryIO:
        return self.fs.open(self._path(part_name(index)), "rb")  # type: ignore[no-any-return]

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.root, recursive=True)
