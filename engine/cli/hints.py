"""Hints after a run's summary: what the user most likely got wrong, in one line each.

Each looks at what the run already had (its config, its summary, the first bytes of
stdin, left in stdin's buffer for the run to read); none changes what the run does.
"""

from __future__ import annotations

import select
import sys
from collections.abc import Iterable, Iterator

import orjson

from engine.config import Config
from engine.core.stats import Summary
from engine.errors import InputError
from engine.files.sources import STDIN

_GZIP_MAGIC = b"\x1f\x8b"
#: How long the CSV hint waits for stdin's first bytes (seconds).
_PEEK_WAIT = 0.2


def stdin_looks_like_csv(config: Config) -> bool:
    """stdin is an input read as JSONL (no --format) and its first line is not JSON but
    holds commas. Peeked, not read: the bytes stay in stdin's buffer for the run.
    Only bytes that come within `_PEEK_WAIT`: a silent pipe must not hold the run's
    start (nor a SIGINT, whose handler the run installs)."""
    if STDIN not in config.inputs or config.input_format != "auto":
        return False
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None or sys.stdin.isatty() or not hasattr(stream, "peek"):
        return False
    try:
        ready, _, _ = select.select([stream], [], [], _PEEK_WAIT)
        if not ready:
            return False
        head = stream.peek(1 << 16)
    except (OSError, ValueError):
        return False
    line, newline, _ = head.partition(b"\n")
    if not newline or head.startswith(_GZIP_MAGIC) or b"," not in line:
        return False
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return True
    return False


CSV_HINT = "hint: stdin looks like CSV: add --format csv"


def after_summary(summary: Summary, *, csv_stdin: bool = False) -> list[str]:
    """The hint lines to print after `summary`."""
    hints = []
    if csv_stdin and summary.invalid:
        hints.append(CSV_HINT)
    if summary.statuses and set(summary.statuses) == {"404"}:
        hints.append(
            "hint: every call was answered 404: check the path of --endpoint "
            "(Criteo's is /delivery/retailmedia)"
        )
    return hints


class RecordCount:
    """Counts, as lines go by, those that are records of a run (with `ok`), so
    `report` can refuse a file of input events."""

    def __init__(self, lines: Iterable[bytes]) -> None:
        self._lines = lines
        self.lines = 0
        self.records = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self._lines:
            if line.strip():
                self.lines += 1
                if not self.records and _is_record(line):
                    self.records += 1
            yield line

    def refuse_inputs(self, path: str) -> None:
        """An InputError (exit 2) when lines went by and none was a record."""
        if self.lines and not self.records:
            name = "stdin" if path == "-" else path
            raise InputError(
                f"{name} holds no records of a run (lines with an ok field): report reads "
                "what run, load or replay wrote, not their input"
            )


def _is_record(line: bytes) -> bool:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    # Every record says `ok` (true or false); an input event has no reason to.
    return isinstance(obj, dict) and type(obj.get("ok")) is bool
