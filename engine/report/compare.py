"""`adbatch report A B`: two runs side by side, with the change between them (pure).

Rules:
- Rows are the figures a regression shows in: rate, errors and dropped as percentages,
  the latency percentiles from the send and from the schedule. Each row says which way
  is worse (`worse`: "up" for latency and errors, "down" for the rate), so the change
  is marked as worse or better, never left for the reader to work out.
- A change under 1% gets no verdict (two runs of the same build differ that much).
- A figure missing from a run (no calls) is "-" and its change is not computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from engine.core.values import fixed
from engine.report.html import PALETTE, Line, line_chart, page, table

_KEYS = ("p50", "p90", "p99", "p99.9", "max", "mean")


def _errors_pct(data: Mapping[str, Any]) -> float | None:
    sent = data["sent"]
    return 100.0 * data["failed"] / sent if sent else None  # dropped calls are apart


def _dropped_pct(data: Mapping[str, Any]) -> float | None:
    scheduled = data["sent"] + data["dropped"]
    return 100.0 * data["dropped"] / scheduled if scheduled else None


def _figures(data: Mapping[str, Any]) -> list[tuple[str, str, float | None, str]]:
    """(metric, unit, value, worse) of one run."""
    out: list[tuple[str, str, float | None, str]] = [
        ("rate", "/s", data["rate"], "down"),
        ("calls sent", "", float(data["sent"]), ""),
        ("errors", "%", _errors_pct(data), "up"),
        ("dropped", "%", _dropped_pct(data), "up"),
    ]
    for view, key in (("send", "latency_ms"), ("schedule", "corrected_latency_ms")):
        out += [(f"{k} from {view}", "ms", data[key].get(k), "up") for k in _KEYS]
    return out


def compare_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: {metric, unit, a, b, change, change_pct, verdict}."""
    rows = []
    for (metric, unit, va, worse), (_, _, vb, _) in zip(_figures(a), _figures(b), strict=True):
        change = None if va is None or vb is None else vb - va
        pct = None if change is None or not va else 100.0 * change / va
        verdict = ""
        # Under 1% is noise between two runs of the same thing, not a verdict.
        if change and worse and (pct is None or abs(pct) >= 1.0):
            verdict = "worse" if (change > 0) == (worse == "up") else "better"
        rows.append(
            {
                "metric": metric,
                "unit": unit,
                "a": va,
                "b": vb,
                "change": None if change is None else round(change, 3),
                "change_pct": None if pct is None else round(pct, 1),
                "verdict": verdict,
            }
        )
    return rows


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    text = fixed(value, 0 if unit == "" else 2 if unit == "%" else 1)
    return text + ("" if unit in ("", "ms") else unit)


def _change(row: Mapping[str, Any]) -> str:
    change = row["change"]
    if change is None:
        return "-"
    text = fixed(change, 2 if row["unit"] == "%" else 1, sign=True)
    if row["change_pct"] is not None and row["unit"] != "%":
        text += f" ({fixed(row['change_pct'], 1, sign=True)}%)"
    return text + (f" {row['verdict']}" if row["verdict"] else "")


def _cells(rows: Sequence[Mapping[str, Any]], names: tuple[str, str]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [("", "A", "B", "change B - A")]
    for row in rows:
        unit = " (ms)" if row["unit"] == "ms" else ""
        out.append(
            (
                row["metric"] + unit,
                _num(row["a"], row["unit"]),
                _num(row["b"], row["unit"]),
                _change(row),
            )
        )
    return out


def compare_text(
    a: Mapping[str, Any], b: Mapping[str, Any], *, names: tuple[str, str], bad_lines: int = 0
) -> str:
    cells = _cells(compare_rows(a, b), names)
    widths = [max(len(r[i]) for r in cells) for i in range(4)]
    lines = [f"A  {names[0]}", f"B  {names[1]}"]
    if bad_lines:
        lines.append(f"skipped {bad_lines} unreadable lines")
    lines.append("")
    for n, row in enumerate(cells):
        cells_n = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2])]
        lines.append("  " + "  ".join([*cells_n, row[3]]).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _overlay(
    a: Mapping[str, Any], b: Mapping[str, Any], pick: str, *, y_label: str, label: str
) -> str:
    lines: list[Line] = []
    for name, data, colour in (("A", a, PALETTE[0]), ("B", b, PALETTE[2])):
        points = data.get("sends") or data["series"]
        values = [(p["t"], p[pick] if pick == "rate" else p["latency_ms"]["p99"]) for p in points]
        lines.append((f"{name} {label}", colour, values, name == "A"))
    return line_chart(lines, x_label="seconds from the start", y_label=y_label, label=label)


def compare_html(
    a: Mapping[str, Any], b: Mapping[str, Any], *, names: tuple[str, str], title: str
) -> str:
    body = (
        f'<p class="sub">A: {escape(names[0])}<br>B: {escape(names[1])}</p>'
        f'<h2>A and B</h2><div id="compare">{table(_cells(compare_rows(a, b), names))}</div>'
        f"<h2>Calls per second (by send)</h2>"
        f"{_overlay(a, b, 'rate', y_label='calls per second', label='calls/s')}"
        f"<h2>p99 from send over time</h2>"
        f"{_overlay(a, b, 'p99', y_label='ms', label='p99 from send')}"
    )
    return page(title, body)
