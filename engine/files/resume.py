"""Resume: which events an earlier run's output already answers.

Rules:
- The records already in the output are indexed by `seq` (the event's ordinal over all
  inputs) with a 32-bit checksum of its source position and id, 4 bytes per input
  event. An event is skipped when its seq is answered; a checksum that differs means
  the input changed, which resume refuses.
- Lines are read by `records.parse_record`, the one reader of the record format.
- A torn (or garbled) tail, what a crash leaves, is cut off the file before the run
  appends to it; a line that is not an adbatch record anywhere before the tail is an
  error, never skipped.
"""

from __future__ import annotations

import os
import zlib
from array import array

from engine.core.records import parse_record
from engine.errors import FatalError, InputError


def _checksum(source: str, event_id: str | None) -> int:
    key = f"{source}\x00{event_id}" if event_id is not None else source
    # backslashreplace: a lone surrogate (a path's undecodable byte) sums as the escape
    # the record holds it as (records.Result.to_json), so resume finds the event again.
    return zlib.crc32(key.encode("utf-8", "backslashreplace")) or 1


class ResumeIndex:
    """Which events (by seq) an earlier run's output already answers."""

    __slots__ = ("_sums", "records", "repaired_bytes")

    def __init__(self) -> None:
        self._sums = array("I")
        self.records = 0
        self.repaired_bytes = 0

    def add(self, seq: int, source: str, event_id: str | None) -> None:
        sums = self._sums
        if seq >= len(sums):
            missing = seq + 1 - len(sums)
            sums.frombytes(bytes(sums.itemsize * max(missing, len(sums) // 2)))
        sums[seq] = _checksum(source, event_id)
        self.records += 1

    def holds(self, seq: int) -> bool:
        """True when the output has a record for this seq (`answered` checks it is this event)."""
        return seq < len(self._sums) and self._sums[seq] != 0

    def answered(self, seq: int, source: str, event_id: str | None) -> bool:
        """True when the output holds this event; FatalError when the input changed."""
        if seq >= len(self._sums) or self._sums[seq] == 0:
            return False
        if self._sums[seq] != _checksum(source, event_id):
            raise FatalError(
                f"input changed since the output was written: event {seq + 1} ({source}) "
                "does not match its record; --resume needs the same inputs, named the same way"
            )
        return True


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
            index.add(record.seq, record.source, record.id)
            good_end += len(line)
        size = f.tell()
    if good_end < size:  # the torn (or garbled) tail of a crash: drop it
        try:
            os.truncate(path, good_end)
        except OSError as exc:
            raise InputError(f"cannot repair output {path}: {exc.strerror or exc}") from None
        index.repaired_bytes = size - good_end
    return index
