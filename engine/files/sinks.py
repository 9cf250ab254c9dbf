"""Where records go: a JSONL file or stdout, written in batches of whole lines.

Each batch is written with one `write` of complete lines and handed to the OS at once,
so a crash leaves at most a torn last line, never a half-written record in the middle.
A record is written only once its call is over, so an event is in the file whole or not
at all. The file is fsynced when the run ends (a power loss mid-run may cost the tail
of the file, never lines in the middle: resume, files/resume.py, repairs a torn tail).
An output file deleted or replaced (renamed over) during the run is noticed (`check`,
at most once a second from `write`, and at `close`): the run ends with exit 3, as the
records it goes on writing would reach no file anyone can read.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from engine.errors import OutputError

if TYPE_CHECKING:
    from engine.core.records import Result


def kept(batch: list[Result], which: str) -> list[Result]:
    """The records `--records` keeps: all, errors (the calls not answered 2xx, the
    invalid lines), or none."""
    if which == "all":
        return batch
    if which == "none":
        return []
    return [r for r in batch if not r.ok]


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


#: Bytes written to a file between two background syncs.
SYNC_EVERY = 16 << 20
#: Seconds between two looks at whether the output file is still the one being written.
CHECK_EVERY_S = 1.0


class JsonlSink:
    """Appends whole JSONL lines to a file (or stdout when path is None or '-').

    A file is synced to disk in the background every SYNC_EVERY bytes (one `fsync` on
    a thread, never two at once), so the sync at `close` has little left to wait for:
    the disk works while the run does (on the benchmark machine, 150 MB took 0.28 s to
    sync at the end, I/O wait, not CPU), and a crash loses at most the last stretch."""

    __slots__ = ("_fd", "_identity", "_next_check", "_owned", "_sync", "_unsynced", "name")

    def __init__(self, path: str | None, *, append: bool = False, watch: bool = True) -> None:
        """`watch`: check from `write` that the file is still there (False in a --workers
        child: the parent watches the output it owns)."""
        self._unsynced = 0
        self._sync: threading.Thread | None = None
        self._identity: tuple[int, int] | None = None
        self._next_check = 0.0
        if path is None or path == "-":
            sys.stdout.flush()
            self._fd = sys.stdout.fileno()
            self._owned = False
            self.name = "<stdout>"
            return
        # Emptied (not --resume) only once it is known that no other run writes it.
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0)
        try:
            self._fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise OutputError(
                f"cannot write output {path}: {exc.strerror or exc}", before_run=True
            ) from None
        self._owned = True
        self.name = path
        info = os.fstat(self._fd)
        if not stat.S_ISREG(info.st_mode):  # a pipe or a device: no file to lose or empty
            return
        if watch:  # the run's owner (not a --workers child appending): held, and watched
            self._hold(path)
            self._identity = (info.st_dev, info.st_ino)
            self._next_check = time.monotonic() + CHECK_EVERY_S
        if not append:
            os.ftruncate(self._fd, 0)

    def _hold(self, path: str) -> None:
        """Lock the file for this run (flock, released when it closes): two runs writing
        one output (two --resume at once) would each write what the other sends."""
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise OutputError(
                f"output {path} is being written by another adbatch run: let it end "
                "(then --resume, if it stopped), or give another -o",
                before_run=True,
            ) from None
        except OSError:
            pass  # a filesystem without locks: written as before

    def check(self) -> None:
        """Raise OutputError (exit 3) when the output file was deleted or replaced since
        it was opened: the path no longer names the file this sink writes."""
        if self._identity is None:
            return
        try:
            info = os.stat(self.name)
        except FileNotFoundError:
            raise OutputError(f"output {self.name} was deleted during the run") from None
        except OSError:
            return  # cannot look (a directory's permissions changed): keep writing
        if (info.st_dev, info.st_ino) != self._identity:
            raise OutputError(
                f"output {self.name} was replaced by another file during the run"
            ) from None

    def is_regular_file(self) -> bool:
        """A file several processes can append whole lines to (not a pipe or a tty)."""
        try:
            return stat.S_ISREG(os.fstat(self._fd).st_mode)
        except OSError:
            return False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except BrokenPipeError:
            raise OutputError(f"output {self.name} was closed by the reader") from None
        except OSError as exc:
            raise OutputError(
                f"cannot write output {self.name}: {exc.strerror or exc}", kept=self._owned
            ) from None
        if self._owned:
            if self._identity is not None and (now := time.monotonic()) >= self._next_check:
                self._next_check = now + CHECK_EVERY_S
                self.check()
            self._unsynced += len(data)
            if self._unsynced >= SYNC_EVERY and (self._sync is None or not self._sync.is_alive()):
                self._unsynced = 0
                self._sync = threading.Thread(
                    target=_sync_quietly, args=(self._fd,), name="adbatch-sync", daemon=True
                )
                self._sync.start()

    def close(self, *, check: bool = False) -> None:
        """Sync and close the file; `check`: then raise OutputError if it was deleted or
        replaced during the run (a run that ended well must not claim an output that is
        gone)."""
        if self._owned:
            if self._sync is not None:
                self._sync.join()  # before the descriptor goes
            try:
                if check:
                    self.check()
            finally:
                _sync_quietly(self._fd)
                os.close(self._fd)


def refuse_if_held(path: str, *, before_run: bool = True) -> None:
    """OutputError when another adbatch run holds `path` as its output (JsonlSink locks
    it for its run): a --summary, a --series or a merge written over it would lose that
    run's records. A file without locks, or no file, is no refusal."""
    import fcntl

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released as it closes
    except BlockingIOError:
        raise OutputError(
            f"{path} is being written by another adbatch run (its -o): let it end, or give "
            "another path",
            before_run=before_run,
        ) from None
    except OSError:
        pass
    finally:
        os.close(fd)


def create_output(path: str) -> None:
    """An empty file at `path` (a file that cannot be written fails before the run)."""
    refuse_if_held(path)
    try:
        with open(path, "wb"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}", before_run=True) from None


def _sync_quietly(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:
        pass  # a pipe or a special file: nothing to sync


class TickWriter:
    """Records handed over during one event-loop tick, written together when it ends.

    One write (and one redaction scan) per tick instead of per record, and still no
    buffer across ticks: whatever was answered is on its way to the file before the loop
    waits for more. A write error is kept and raised to the next caller of `add` (a
    callback cannot raise into the run) and by `close`.
    """

    __slots__ = ("_loop", "_pending", "_write", "error")

    def __init__(self, write: Callable[[list[Result]], None]) -> None:
        self._write = write
        self._pending: list[Result] = []
        self._loop = asyncio.get_running_loop()
        self.error: BaseException | None = None

    def add(self, result: Result) -> None:
        if self.error is not None:
            raise self.error
        pending = self._pending
        pending.append(result)
        if len(pending) == 1:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        if not self._pending or self.error is not None:
            return
        batch, self._pending = self._pending, []
        try:
            self._write(batch)
        except Exception as exc:  # raised to the run by `add` or `close`
            self.error = exc

    def close(self) -> None:
        """Write what is left; raise a write error no worker saw yet."""
        self.flush()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
