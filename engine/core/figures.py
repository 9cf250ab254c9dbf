"""The end-of-run figures, `vegeta report`'s and more (pure): one place computes them.

`figures(...)` turns a run's counters and histograms into one JSON-able block:

    {"calls", "ok", "errors", "dropped", "success_ratio",
     "latency_ms": {"send": VIEW, "schedule": VIEW | None},
     "bytes_in": {"total", "mean"}, "bytes_out": {"total", "mean"},
     "statuses": {"200": n, ..., "none": n}, "top_errors": [{"message", "count"}, ...]}

where VIEW is {"min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max"} in ms (None
when no call was timed). It is `Summary.figures` (run, load, replay, --workers: the
end-of-run text and `--summary` JSON) and the `figures` of `adbatch report`'s data, so
the text report, the HTML report and `report A B` read the same numbers: render this
block, never recompute it.

Rules:
- `calls` are the records that are not invalid input lines (dropped calls included);
  `errors` the calls that failed, dropped ones not counted (`dropped` has them);
  `success_ratio` is ok / calls.
- `schedule` is the latency from the scheduled time (load and replay); `run` has no
  schedule: None there.
- Bytes are counted where they are known at no cost (engine: the answer body's length
  and the request's URL and header lengths, per attempt; a report from a file: the
  length of each record's `response` text, and no bytes out; a `--series` file: none).
  `mean` is per call that was sent.
- Error messages are counted as the record's error text cut at MESSAGE_CHARS, at most
  MAX_MESSAGES distinct ones (the rest under OTHER_MESSAGES): memory stays bounded when
  every message names an id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.core.query import Request


class Histogram(Protocol):
    """What the figures read of a latency histogram (core/stats.Histogram, which imports
    this module: a protocol here keeps the two out of an import cycle)."""

    count: int
    total: float
    min: float
    max: float

    def percentile(self, q: float) -> float | None: ...


VIEW_KEYS = ("min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max")
MESSAGE_CHARS = 100
MAX_MESSAGES = 1000
OTHER_MESSAGES = "(other messages)"
TOP_ERRORS = 10
NO_STATUS = "none"


def count_message(messages: Counter[str], error: str) -> None:
    """Count one error text (cut short) into `messages`, keeping it bounded."""
    text = error[:MESSAGE_CHARS]
    if text in messages or len(messages) < MAX_MESSAGES:
        messages[text] += 1
    else:
        messages[OTHER_MESSAGES] += 1


def request_bytes(request: Request) -> int:
    """What one attempt of `request` sends, roughly: its URL (the query carries the
    event) and its headers ("Name: value\\r\\n"), Authorization left out."""
    size = len(request.url)
    for name, value in request.headers.items():
        size += len(name) + len(value) + 4
    return size


def latency_view(hist: Histogram) -> dict[str, float | None]:
    """min, mean, p50 ... p99.9, max of `hist` in ms (rounded to the µs)."""
    if not hist.count:
        return dict.fromkeys(VIEW_KEYS)
    out: dict[str, float | None] = {
        "min": hist.min,
        "mean": hist.total / hist.count,
    }
    for key in VIEW_KEYS[2:-1]:
        out[key] = hist.percentile(float(key[1:]))
    out["max"] = hist.max
    return {k: None if v is None else round(v, 3) for k, v in out.items()}


def figures(
    *,
    send: Histogram,
    schedule: Histogram | None,
    calls: int,
    ok: int,
    dropped: int,
    statuses: Mapping[int, int] | Mapping[str, int],
    messages: Mapping[str, int],
    bytes_in: int | None,
    bytes_out: int | None,
) -> dict[str, Any]:
    """The block described in the module's docstring."""
    sent = calls - dropped
    table = {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))}
    unanswered = calls - sum(table.values())
    if unanswered > 0:
        table[NO_STATUS] = unanswered
    top = sorted(messages.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ERRORS]
    return {
        "calls": calls,
        "ok": ok,
        "errors": calls - ok - dropped,
        "dropped": dropped,
        "success_ratio": round(ok / calls, 6) if calls else None,
        "latency_ms": {
            "send": latency_view(send),
            "schedule": None if schedule is None else latency_view(schedule),
        },
        "bytes_in": _bytes(bytes_in, sent),
        "bytes_out": _bytes(bytes_out, sent),
        "statuses": table,
        "top_errors": [{"message": m, "count": n} for m, n in top],
    }


def _bytes(total: int | None, sent: int) -> dict[str, float | None]:
    if total is None:
        return {"total": None, "mean": None}
    return {"total": total, "mean": round(total / sent, 1) if sent > 0 else None}
