"""Pass/fail thresholds on a run's figures, k6 style (pure): `--threshold p99<250ms`.

Grammar: METRIC OP NUMBER UNIT, spaces allowed between the parts.

- METRIC: a latency (`min`, `mean`, `p50`, `p90`, `p95`, `p99`, `p99.9`, `max`) from the
  schedule, or the same from the send with `send.` in front (`send.p99`); `errors` and
  `dropped`, percentages of the calls (core/figures.py: invalid input lines are not
  calls; `errors` leaves the dropped calls out); `rate`, calls sent per second.
  `run` has no schedule: there a bare latency (`p99`) is the latency from the send.
- OP: `<`, `<=`, `>`, `>=`.
- UNIT: `ms` or `s` for a latency, `%` for errors and dropped, `/s` for rate.

A threshold is judged on the figure as the verdict shows it, rounded to 3 decimals of
its unit (`p99<=9.303ms` passes a p99 of 9.3034 ms: its line says "measured 9.303 ms"),
so a FAIL never shows a passing number. The limit is read in decimal (`0.009303s` is
9.303 ms, not a float a hair below it).
A threshold whose figure does not exist (no call was timed) fails. A text that does not
follow the grammar is a ConfigError naming it, with an example (exit 2). Units are
parsed here (core/units.py did not exist when this was written; its rate and duration
grammars also accept what a threshold must not, e.g. `/m`).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from engine.core.errors import ConfigError
from engine.core.shown import shown_text
from engine.core.stats import Summary

EXAMPLES = "e.g. p99<250ms, send.p99<0.2s, errors<1%, dropped<=0%, rate>=490/s"
LATENCIES = ("min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_FORM = re.compile(
    r"\s*(?P<metric>[a-z][a-z0-9.]*)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s|%|/s)?\s*"
)
#: Unit -> factor to the metric's base unit (ms, %, calls/s), per kind of metric.
_UNITS = {
    "latency": {"ms": 1, "s": 1000},
    "percent": {"%": 1},
    "rate": {"/s": 1},
}
#: Decimals of a verdict's value: what the line shows is what is judged.
SHOWN_DECIMALS = 3
_BASE = {"latency": "ms", "percent": "%", "rate": "/s"}


@dataclass(frozen=True, slots=True)
class Threshold:
    text: str  # as the user wrote it, stripped
    metric: str  # p99, send.p99, errors, dropped, rate
    op: str
    limit: float  # in the metric's base unit: ms, %, calls/s

    @property
    def kind(self) -> str:
        return _kind(self.metric) or "latency"

    def holds(self, value: float | None) -> bool:
        return value is not None and _OPS[self.op](value, self.limit)


def _kind(metric: str) -> str | None:
    if metric in LATENCIES or (metric.startswith("send.") and metric[5:] in LATENCIES):
        return "latency"
    if metric in ("errors", "dropped"):
        return "percent"
    if metric == "rate":
        return "rate"
    return None


def parse_threshold(text: str) -> Threshold:
    """`text` as a Threshold; ConfigError (one line, with examples) when it is not one."""
    shown = shown_text(text.strip())  # as every bad value is quoted: no `u:pw@h` in clear
    match = _FORM.fullmatch(text)
    if match is None:
        raise ConfigError(f"--threshold {shown!r}: write METRIC OP VALUE with a unit ({EXAMPLES})")
    metric, op, number, unit = match.group("metric", "op", "number", "unit")
    kind = _kind(metric)
    if kind is None:
        raise ConfigError(
            f"--threshold {shown!r}: unknown metric {metric!r}; use p50, p90, p95, p99, "
            f"p99.9, min, mean, max (send.p99, ... from the send), errors, dropped or rate "
            f"({EXAMPLES})"
        )
    units = _UNITS[kind]
    if unit not in units:
        wanted = " or ".join(units)
        raise ConfigError(
            f"--threshold {shown!r}: {metric} takes {wanted}"
            f"{', not ' + unit if unit else ' after its number'} ({EXAMPLES})"
        )
    return Threshold(shown, metric, op, float(Decimal(number) * units[unit]))


def parse_thresholds(texts: Iterable[str]) -> tuple[Threshold, ...]:
    return tuple(parse_threshold(t) for t in texts)


def measure(metric: str, figures: Mapping[str, Any], rate: float) -> float | None:
    """The value of `metric` in a run's figures (core/figures.py's block) and its rate."""
    kind = _kind(metric)
    if kind == "rate":
        return rate
    if kind == "percent":
        calls = figures.get("calls") or 0
        return 100.0 * figures.get(metric, 0) / calls if calls else None
    views = figures.get("latency_ms") or {}
    if metric.startswith("send."):
        view, key = views.get("send"), metric[5:]
    else:
        view, key = views.get("schedule") or views.get("send"), metric
    value = (view or {}).get(key)
    return None if value is None else float(value)


def evaluate(
    thresholds: Iterable[Threshold], figures: Mapping[str, Any], rate: float
) -> tuple[dict[str, Any], ...]:
    """One verdict per threshold: {"threshold", "value", "unit", "pass"}, in their order."""
    out = []
    for t in thresholds:
        value = measure(t.metric, figures, rate)
        shown = None if value is None else round(value, SHOWN_DECIMALS)
        out.append(
            {
                "threshold": t.text,
                "value": shown,
                "unit": _BASE[t.kind],
                "pass": t.holds(shown),  # the figure as shown: a FAIL never shows a pass
            }
        )
    return tuple(out)


def verdict_line(verdict: Mapping[str, Any]) -> str:
    """`threshold p99<250ms: pass (p99 12.3 ms)` for stderr."""
    value = verdict["value"]
    unit = verdict["unit"]
    if value is None:
        shown = "no value"
    else:
        number = f"{value:.{SHOWN_DECIMALS}f}".rstrip("0").rstrip(".")
        shown = f"{number} {unit}" if unit == "ms" else f"{number}{unit}"
    word = "pass" if verdict["pass"] else "FAIL"
    return f"threshold {verdict['threshold']}: {word} (measured {shown})"


def judged(summary: Summary, texts: Iterable[str]) -> Summary:
    """`summary` with the verdicts of the thresholds `texts` (its exit code becomes 4
    when one fails, unless the run was stopped or interrupted: Summary.exit_code)."""
    thresholds = parse_thresholds(texts)
    if not thresholds:
        return summary
    return replace(summary, thresholds=evaluate(thresholds, summary.figures, summary.rate))
