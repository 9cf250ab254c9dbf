"""`--series FILE`: a long test's figures in a small file, one line per second and view.

Rules:
- The first line is the header: `{"adbatch_series": 1, "start", "mode", "target",
  "options"}`, the options that differ from their defaults, secrets redacted (the token,
  the client secret and a proxy's credentials are never named, header values are left
  out, every other value goes through the run's Secrets). `adbatch report` shows it.
- Then the buckets (core/serieslog.py), written once a second when the seconds that
  ended a call's longest time ago are complete; the last line is `{"end": true, ...}`.
- Written as the run goes, flushed to the OS each time: a test stopped half-way leaves
  the seconds it ran (`adbatch report` reads a file without its end line).
- `--workers N` (`open_shared`, `SeriesWriter(head=None)`): the parent writes the header
  before the workers start and the end line after they stopped; each worker appends its
  own seconds between (O_APPEND, one write per batch of lines: each lands whole). Two
  workers' lines for the same second are added up by the reader, as a straggler's are.
  A regular file only: a pipe would mix lines longer than its atomic write.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit

import orjson

from engine.config import Config
from engine.core.errors import ConfigError
from engine.core.records import Result
from engine.core.secrets import Secrets
from engine.core.serieslog import HEADER_KEY, VERSION, SecondLog
from engine.core.shown import shown_value
from engine.core.urls import written
from engine.errors import OutputError
from engine.files.sinks import refuse_if_held

#: Options of no use in a report.
_SKIPPED = frozenset({"progress", "summary", "series", "output", "inputs"})


def report_options(config: Config, secrets: Secrets) -> dict[str, Any]:
    """The options that differ from the defaults, fit to show: secrets redacted."""
    default = Config()
    out: dict[str, Any] = {}
    for f in fields(Config):
        name = f.name
        value = getattr(config, name)
        if name in _SKIPPED or value == getattr(default, name):
            continue
        shown = shown_value(name, value)  # config --show's rules (core/shown.py)
        if isinstance(shown, str):
            out[name] = secrets.redact(shown)
        elif isinstance(shown, tuple | list):
            out[name] = [secrets.redact(v) if isinstance(v, str) else v for v in shown]
        else:
            out[name] = shown
    return out


def header(config: Config, secrets: Secrets, *, mode: str, start: float | None) -> dict[str, Any]:
    url = urlsplit(config.endpoint)
    return {
        HEADER_KEY: VERSION,
        "start": start,
        "mode": mode,
        "target": url.hostname if not config.mock else "embedded mock",
        "inputs": [written(secrets.redact(path)) for path in config.inputs],
        "options": report_options(config, secrets),
    }


def _dumps(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(
        orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
        for line in lines
    )


def _append(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def open_shared(path: str, head: dict[str, Any], *, workers: int) -> None:
    """--series with --workers N: the file made empty, with its header (`head` has the
    schedule's start), before the workers append their seconds to it."""
    refuse_if_held(path)  # another run's -o
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write --series {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(
                f"--series {path} is not a regular file: with --workers {workers} each "
                "worker appends its own lines to it; give a file"
            )
        _append(fd, _dumps([head]))
    except OSError as exc:
        raise OutputError(f"cannot write --series {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def close_shared(path: str, *, elapsed_s: float, events: int, invalid: int) -> None:
    """--series with --workers N: the end line, once every worker has stopped."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            _append(fd, _dumps([_end(elapsed_s, events, invalid)]))
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write --series {path}: {exc.strerror or exc}") from None


def _end(elapsed_s: float, events: int, invalid: int) -> dict[str, Any]:
    return {"end": True, "elapsed_s": round(elapsed_s, 6), "events": events, "invalid": invalid}


class SeriesWriter:
    """Buckets in, lines out: `add` each batch of results, `close` at the end.

    `head` None: one worker of a --workers run, appending its seconds to the file the
    parent opened (`open_shared`); it writes neither the header nor the end line."""

    def __init__(self, path: str, head: dict[str, Any] | None, *, horizon: float) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if head is not None else os.O_APPEND)
        if head is not None:
            refuse_if_held(path)  # another run's -o
        try:
            self._fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write --series {path}: {exc.strerror or exc}") from None
        self._head = head
        self._horizon = horizon
        self._log: SecondLog | None = None
        self._flushed = 0.0

    def add(self, batch: list[Result], *, origin: float | None) -> None:
        if self._log is None:
            if origin is None:
                return  # nothing scheduled yet: the results are invalid lines
            self._log = SecondLog(origin=origin)
            if self._head is not None:
                self._write([{**self._head, "start": origin}])
        for result in batch:
            self._log.add(result)
        now = time.time()
        if now - self._flushed >= 1.0:
            self._flushed = now
            self._write(self._log.take(now - self._horizon))

    def close(self, *, elapsed_s: float = 0.0, events: int = 0, invalid: int = 0) -> None:
        """The seconds not yet written, then (not in a worker) the end line."""
        try:
            if self._log is None:
                if self._head is not None:
                    self._write([self._head])
            else:
                self._write(self._log.take_all())
            if self._head is not None:
                self._write([_end(elapsed_s, events, invalid)])
        finally:
            os.close(self._fd)

    def _write(self, lines: list[dict[str, Any]]) -> None:
        if not lines:
            return
        try:
            _append(self._fd, _dumps(lines))  # one write: lands whole with O_APPEND
        except OSError as exc:
            raise OutputError(f"cannot write --series: {exc.strerror or exc}") from None
