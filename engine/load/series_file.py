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
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit

import orjson

from engine.config import Config
from engine.core.records import Result
from engine.core.secrets import Secrets
from engine.core.serieslog import HEADER_KEY, VERSION, SecondLog
from engine.errors import OutputError

#: Options never shown, whatever their value (their presence is).
_HIDDEN = frozenset({"token", "client_secret", "proxy"})
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
        if name in _HIDDEN:
            out[name] = "(redacted)"
        elif name == "headers":
            out[name] = [h.split(":", 1)[0] + ": (redacted)" for h in value]
        elif isinstance(value, str):
            out[name] = secrets.redact(value)
        elif isinstance(value, tuple):
            out[name] = [secrets.redact(v) if isinstance(v, str) else v for v in value]
        else:
            out[name] = value
    return out


def header(config: Config, secrets: Secrets, *, mode: str, start: float | None) -> dict[str, Any]:
    url = urlsplit(config.endpoint)
    return {
        HEADER_KEY: VERSION,
        "start": start,
        "mode": mode,
        "target": url.hostname if not config.mock else "embedded mock",
        "inputs": [secrets.redact(path) for path in config.inputs],
        "options": report_options(config, secrets),
    }


class SeriesWriter:
    """Buckets in, lines out: `add` each batch of results, `close` at the end."""

    def __init__(self, path: str, head: dict[str, Any], *, horizon: float) -> None:
        try:
            self._file = open(path, "wb")
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
            self._write([{**self._head, "start": origin}])
        for result in batch:
            self._log.add(result)
        now = time.time()
        if now - self._flushed >= 1.0:
            self._flushed = now
            self._write(self._log.take(now - self._horizon))

    def close(self, *, elapsed_s: float, events: int, invalid: int) -> None:
        if self._log is None:
            self._write([self._head])
        else:
            self._write(self._log.take_all())
        end = {"end": True, "elapsed_s": round(elapsed_s, 6), "events": events, "invalid": invalid}
        self._write([end])
        self._file.close()

    def _write(self, lines: list[dict[str, Any]]) -> None:
        if not lines:
            return
        data = b"".join(
            orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
            for line in lines
        )
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            raise OutputError(f"cannot write --series: {exc.strerror or exc}") from None
