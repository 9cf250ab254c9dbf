"""Records to object storage: `-o URL` written as parts, since an object cannot be appended to.

    records -> the filling part (memory) -> uploader thread -> URL.parts/part-NNNNN-RUNID.jsonl
                                                  run ends -> join into URL + URL.manifest.json

Rules:
- A part is a complete object of whole lines: up to `--part-size` bytes (a single record
  larger than that is a part of its own), or the records of `--part-seconds`, whichever
  comes first. It is uploaded when full, on the timer, and when the run ends, by one PUT
  (whole or absent; on a local `file://` store through a temporary name and a rename).
  A kill -9 so loses the part being filled, never a record of an uploaded part; the
  events it held have no record anywhere, and `--resume` sends them.
- Uploads run on one background thread, in part order: the event loop never waits on the
  store, except when a full part is already waiting behind the one uploading (then the
  writer waits: memory stays within 3 x --part-size).
- Names sort in the order parts were written: NNNNN counts on from the highest part
  already there (a resumed run's parts follow the earlier run's), RUNID is random, so
  two writers can never overwrite each other's part.
- A failed upload is an OutputError (exit 3) raised to the next `write`, `check` or
  `close`; the parts already uploaded stay for `--resume`.
- When the run ends well (`close(check=True)`: done, stopped, interrupted; not a crash),
  the parts are joined into the one object (files/partjoin.py) and its manifest written.
"""

from __future__ import annotations

import hashlib
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.errors import OutputError
from engine.files.manifests import PartInfo
from engine.files.storage import is_local as is_local  # re-exported
from engine.files.storage import put_whole as put_whole  # re-exported
from engine.files.storage import reason, shown

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

PARTS_SUFFIX = ".parts"
_PART = re.compile(r"part-(\d+)-([0-9a-f]+)\.jsonl")


def parts_dir(path: str) -> str:
    """Where the parts of the output at `path` (a store's path) live."""
    return path + PARTS_SUFFIX


def part_name(index: int, run_id: str) -> str:
    return f"part-{index:05d}-{run_id}.jsonl"


def list_parts(fs: AbstractFileSystem, path: str) -> list[str]:
    """The parts of the output at `path`, in the order they were written (a temporary
    name, of an upload that died, is not a part)."""
    folder = parts_dir(path)
    fs.invalidate_cache(folder)
    try:
        names = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    found: list[tuple[int, str, str]] = []
    for name in names:
        match = _PART.fullmatch(str(name).rstrip("/").rpartition("/")[2])
        if match:
            found.append((int(match.group(1)), match.group(2), str(name)))
    return [name for _, _, name in sorted(found)]


def next_index(parts: list[str]) -> int:
    """The number of the next part after `parts` (list_parts' order)."""
    if not parts:
        return 0
    match = _PART.fullmatch(parts[-1].rpartition("/")[2])
    assert match is not None
    return int(match.group(1)) + 1


@dataclass(frozen=True, slots=True)
class PartLimits:
    """When a part is full: bytes, or seconds since its first record."""

    size: int = 64 << 20
    seconds: float = 60.0


class PartSink:
    """The records of a run as parts of the output at `path` on `fs` (the module's rules).

    `first_index`: the number of the first part (after an earlier run's). `digest`: the
    sha256 of what comes before this run's parts in the joined output (an earlier run's
    records), continued over every part uploaded. `finish`: called by `close(check=True)`
    with this run's parts, to join them."""

    def __init__(
        self,
        fs: AbstractFileSystem,
        path: str,
        *,
        name: str,
        limits: PartLimits = PartLimits(),
        first_index: int = 0,
        digest: hashlib._Hash | None = None,
        finish: Callable[[PartSink], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fs = fs
        self.path = path
        self.name = name
        self.limits = limits
        self.digest = digest or hashlib.sha256()
        self.parts: list[PartInfo] = []  # uploaded by this run, in order
        self.error: OutputError | None = None
        self._finish = finish
        self._clock = clock
        self._run_id = uuid.uuid4().hex[:12]
        self._index = first_index
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._started = 0.0
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None

    # -- the writer's side (the event loop) -------------------------------------------

    def write(self, data: bytes) -> None:
        """Add whole lines; a part that fills is handed to the uploader."""
        self.check()
        if self._thread is None:
            self._thread = threading.Thread(target=self._upload_loop, name="adbatch-parts")
            self._thread.daemon = True
            self._thread.start()
        with self._lock:
            if not self._buffer:
                self._started = self._clock()
            room = self.limits.size - len(self._buffer)
            while len(data) > room:
                cut = data.rfind(b"\n", 0, room) + 1  # the whole lines that fit
                if cut == 0 and not self._buffer:
                    cut = data.find(b"\n") + 1 or len(data)  # one line over the size
                self._buffer += data[:cut]
                data = data[cut:]
                self._rotate()
                self._started = self._clock()
                room = self.limits.size
            self._buffer += data
            if len(self._buffer) >= self.limits.size:
                self._rotate()

    def check(self) -> None:
        """Raise the error of a failed upload (exit 3)."""
        if self.error is not None:
            raise self.error

    def is_regular_file(self) -> bool:
        """Not a file several processes may append to: with --workers the parent writes."""
        return False

    def close(self, *, check: bool = False) -> None:
        """Upload the part being filled, wait for every upload; `check` (the run ended
        well): then join the parts (`finish`)."""
        with self._lock:
            self._rotate()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        self.check()
        if check and self._finish is not None:
            self._finish(self)

    # -- the uploader thread ------------------------------------------------------------

    def _rotate(self) -> None:
        """Hand the filling part to the uploader (the lock held)."""
        if not self._buffer:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        name = part_name(self._index, self._run_id)
        self._index += 1
        if self._thread is None:  # nothing started yet: no one to hand it to
            self._upload(name, data)
        else:
            self._queue.put((name, data))

    def _upload_loop(self) -> None:
        tick = min(self.limits.seconds / 4, 1.0)
        while True:
            try:
                item = self._queue.get(timeout=tick)
            except queue.Empty:
                self._rotate_on_time()
                continue
            if item is None:
                return
            self._upload(*item)

    def _rotate_on_time(self) -> None:
        """Upload the filling part when it is older than the limit. Only with the queue
        empty (parts go up in order) and without waiting for the lock (a writer holding
        it may be waiting for this thread to take a part)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if not self._buffer or not self._queue.empty():
                return
            if self._clock() - self._started < self.limits.seconds:
                return
            data, self._buffer = bytes(self._buffer), bytearray()
            name = part_name(self._index, self._run_id)
            self._index += 1
        finally:
            self._lock.release()
        self._upload(name, data)

    def _upload(self, name: str, data: bytes) -> None:
        if self.error is not None:
            return  # the run is ending with that error; later parts would leave a gap
        path = f"{parts_dir(self.path)}/{name}"
        try:
            put_whole(self.fs, path, data)
        except Exception as exc:
            self.error = OutputError(
                f"cannot write part {name} of output {shown(self.name)}: {reason(exc)}; "
                "the parts written are kept: --resume sends the rest"
            )
            return
        self.digest.update(data)
        rows = data.count(b"\n")
        self.parts.append(PartInfo(path, rows, hashlib.sha256(data).hexdigest(), len(data)))
