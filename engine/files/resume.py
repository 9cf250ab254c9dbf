"""Resume: which events an earlier run's output already answers, and the output made
whole again once the run is over.

Rules:
- The records already in the output are indexed by `seq` (the event's ordinal over all
  inputs): a 32-bit checksum of its source position and id, and the line of its latest
  record, 8 bytes per input event. A checksum that differs means the input changed,
  which resume refuses. So does an input that ends before a record's seq (it lost lines
  at its end): that is known only once the whole input has been read (`input_read`),
  so `check_end` refuses it after the run, when the calls it made are answered and
  written (runtime/session.py): nothing sent is lost, nothing is written twice.
- An event is skipped when its latest record is final. One whose latest record is
  transient (`records.is_transient`: 401, 408, 429, 5xx, timeout, connect, network,
  disconnected, payload, internal) is sent again.
- A record that stands for lines a read error left unread ("input could not be read
  (...); the rest of this file is unread": the store failed mid-file) is transient too,
  and matches the event read there next time by its file alone: the line it named is
  read again (a valid event, with its id, perhaps after blank lines) and sent.
- Lines are read by `records.parse_record` (`record_seq` when only the seq is needed),
  the one reader of the record format.
- A torn (or garbled) tail, what a crash leaves, is cut off the file before the run
  appends to it; a line that is not an adbatch record anywhere before the tail is an
  error, never skipped.
- When the run ends (however: done, stopped, interrupted, failed), `compact` leaves one
  line per event, its latest: an old line goes when the run appended a newer record of
  its event, or when a later old line had (a resume that crashed before compacting).
  Only when a line must go is the file rewritten: streamed into a new temporary file
  in the same directory (mkstemp: never an existing file, an input say), fsynced,
  renamed over the output, and the directory fsynced, so a crash at any point leaves
  the old file or the new one, whole. The lines to keep are
  known from the index (no record is held in memory).
"""

from __future__ import annotations

import os
import stat
import zlib
from array import array
from collections.abc import Iterator
from typing import BinaryIO

from engine.core.records import ErrorKind, RecordLine, is_transient, parse_record, record_seq
from engine.errors import FatalError, InputError, OutputError
from engine.files.unread import is_unread_error


def _checksum(source: str, event_id: str | None) -> int:
    key = f"{source}\x00{event_id}" if event_id is not None else source
    # backslashreplace: a lone surrogate (a path's undecodable byte) sums as the escape
    # the record holds it as (records.Result.to_json), so resume finds the event again.
    return zlib.crc32(key.encode("utf-8", "backslashreplace")) or 1


def _unread_checksum(source: str) -> int:
    """The checksum of an unread record: its file (`source` without `:line`) alone."""
    return _checksum(f"{source.rpartition(':')[0]}\x00unread", None)


def unread(record: RecordLine) -> bool:
    """Whether `record` stands for input the run could not read (see the module's rules):
    not the line's fault, so not its answer."""
    return (
        record.fields.get("error_kind") == ErrorKind.INVALID
        and record.id is None
        and is_unread_error(record.fields.get("error"))
    )


#: In `ResumeIndex._last`: the latest record of that seq is transient (sent again).
_TRANSIENT = 1 << 31
_LINE = _TRANSIENT - 1


class ResumeIndex:
    """Which events (by seq) an earlier run's output already answers, and where.

    `_last[seq]` is 1 + the line number of the seq's latest record (0: none), with
    `_TRANSIENT` set when that record is transient.
    """

    __slots__ = (
        "_last",
        "_sums",
        "duplicates",
        "end",
        "identity",
        "input_events",
        "records",
        "repaired_bytes",
        "top",
        "transient",
    )

    def __init__(self) -> None:
        self._sums = array("I")
        self._last = array("I")
        self.records = 0  # lines indexed
        self.repaired_bytes = 0
        self.duplicates = 0  # old lines whose event has a later line: compact drops them
        self.transient = 0  # events whose latest record is transient
        self.end = 0  # where the indexed lines end (the run appends after)
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the output
        self.top = 0  # 1 + the highest seq indexed
        self.input_events: int | None = None  # the input's events, once read to its end

    def add(
        self,
        seq: int,
        source: str,
        event_id: str | None,
        *,
        transient: bool = False,
        unread: bool = False,
    ) -> None:
        """Index the next line of the output: the latest record of `seq` so far (`unread`:
        one that stands for input a read error left unread, transient)."""
        sums, last = self._sums, self._last
        if seq >= self.top:
            self.top = seq + 1
        if seq >= len(sums):
            grow = bytes(sums.itemsize * max(seq + 1 - len(sums), len(sums) // 2))
            sums.frombytes(grow)
            last.frombytes(grow)
        previous = last[seq]
        if previous:
            self.duplicates += 1
            self.transient -= bool(previous & _TRANSIENT)
        sums[seq] = _unread_checksum(source) if unread else _checksum(source, event_id)
        transient = transient or unread
        self.records += 1
        last[seq] = self.records | (_TRANSIENT if transient else 0)
        self.transient += transient

    def recorded(self, seq: int) -> bool:
        """True when the output has a record for this seq, final or transient."""
        return seq < len(self._last) and self._last[seq] != 0

    def holds(self, seq: int) -> bool:
        """True when the output answers this seq for good (its latest record is final;
        `answered` checks it is this event)."""
        return seq < len(self._last) and self._last[seq] != 0 and not self._last[seq] & _TRANSIENT

    def answered(self, seq: int, source: str, event_id: str | None) -> bool:
        """True when the output answers this event for good (not to be sent again);
        FatalError when the input changed."""
        if seq >= len(self._sums) or self._sums[seq] == 0:
            return False
        if self._sums[seq] != _checksum(source, event_id):
            if self._last[seq] & _TRANSIENT and self._sums[seq] == _unread_checksum(source):
                return False  # its line, unread then, is read now: sent
            raise FatalError(
                f"input changed since the output was written: event {seq + 1} ({source}) "
                "does not match its record; --resume needs the same inputs, named the same way"
            )
        return not self._last[seq] & _TRANSIENT

    def input_read(self, events: int) -> None:
        """The whole input has been read: it holds `events` events (seq 0..events-1)."""
        self.input_events = events

    def check_end(self) -> None:
        """FatalError when the input, read to its end, has fewer events than the output
        has records for (it lost lines at its end); nothing when it was not read to its
        end (a run stopped early)."""
        events = self.input_events
        if events is None or self.top <= events:
            return
        past = self._last[events : self.top]
        count = len(past) - past.count(0)
        if not count:
            return
        first = events + next(i for i, line in enumerate(past) if line)
        raise FatalError(
            f"input changed since the output was written: the input has {events} events, "
            f"yet the output holds records for {count} more (event {first + 1} on); "
            "--resume needs the same inputs, named the same way (what this run sent is "
            "written: resume with the inputs the output was written from, or write a new "
            "output without --resume)"
        )

    def _keeps(self, line_no: int, seq: int | None) -> bool:
        """Whether old line `line_no` (1-based) is the one to keep for its `seq`."""
        return seq is not None and seq < len(self._last) and self._last[seq] & _LINE == line_no

    def _supersede(self, seq: int) -> bool:
        """The run appended a record of `seq`: its old lines go. True when it had some."""
        if seq < len(self._last) and self._last[seq]:
            self._last[seq] = 0
            return True
        return False


_SLACK = 1_000_000  # how far a record's seq may run ahead of the records before it


def open_resume(path: str | None) -> ResumeIndex:
    """Index the records of `path`, cutting a torn last line off the file first."""
    index = ResumeIndex()
    if path is None or path == "-":
        return index
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return index
    except OSError as exc:
        raise InputError(f"cannot read output {path}: {exc.strerror or exc}") from None
    good_end = 0
    line_no = 0
    bad = False
    with f:
        info = os.fstat(f.fileno())
        index.identity = (info.st_dev, info.st_ino)
        for line in f:
            line_no += 1
            if bad:
                raise InputError(
                    f"cannot resume: output {path} line {line_no - 1}: not an adbatch record"
                )
            record = parse_record(line) if line.endswith(b"\n") else None
            if record is None or record.seq is None or record.seq > index.records + _SLACK:
                bad = True
                continue
            transient = is_transient(record.status, record.error_kind)
            index.add(
                record.seq, record.source, record.id, transient=transient, unread=unread(record)
            )
            good_end += len(line)
        size = f.tell()
    if good_end < size:  # the torn (or garbled) tail of a crash: drop it
        try:
            os.truncate(path, good_end)
        except OSError as exc:
            raise InputError(f"cannot repair output {path}: {exc.strerror or exc}") from None
        index.repaired_bytes = size - good_end
    index.end = good_end
    return index


# -- compaction ---------------------------------------------------------------------------


def _lines(f: BinaryIO, start: int, stop: int | None) -> Iterator[bytes]:
    """The lines of `f` from byte `start` to `stop` (None: the end)."""
    f.seek(start)
    left = None if stop is None else stop - start
    for line in f:
        if left is not None:
            if left <= 0:
                return
            left -= len(line)
        yield line


def compact(path: str, index: ResumeIndex) -> bool:
    """Leave one line per event in the output `path`: its latest record (see the module's
    rules). True when the file was rewritten; OutputError when it could not be (the file
    is then as the run left it: every record there, the superseded ones too)."""
    if index.records == 0:
        return False  # a fresh run: nothing old to supersede
    target = os.path.realpath(path)  # a link to the output stays a link
    try:
        with open(target, "rb") as f:
            info = os.fstat(f.fileno())
            if (info.st_dev, info.st_ino) != index.identity:
                return False  # not the file indexed (replaced meanwhile): not ours to touch
            # Lines a --workers child tore (it died mid-write) go too.
            torn = superseded = 0
            for line in _lines(f, index.end, None):
                seq = record_seq(line) if line.endswith(b"\n") else None
                if seq is None:
                    torn += 1
                else:
                    superseded += index._supersede(seq)
            if not (torn or superseded or index.duplicates):
                return False
            _rewrite(f, target, index, stat.S_IMODE(info.st_mode), torn=torn > 0)
    except OSError as exc:
        raise OutputError(
            f"cannot rewrite output {path} without its superseded lines: "
            f"{exc.strerror or exc}; every record is there, run --resume again to finish"
        ) from None
    return True


def _rewrite(f: BinaryIO, target: str, index: ResumeIndex, mode: int, *, torn: bool) -> None:
    import tempfile  # (here: only a --resume that compacts needs it)

    directory, name = os.path.split(target)
    # A new file (mkstemp: O_EXCL, a random name), never an existing one.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".compact", dir=directory or ".")
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            line_no = 0
            for line in _lines(f, 0, index.end):  # read (and checked) by open_resume
                line_no += 1
                if index._keeps(line_no, record_seq(line, checked=True)):
                    out.write(line)
            for line in _lines(f, index.end, None):  # this run's: all whole but the torn
                if not torn or (line.endswith(b"\n") and record_seq(line) is not None):
                    out.write(line)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
