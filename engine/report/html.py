"""`adbatch report --html`: one self-contained page of the run's figures (pure).

Rules:
- One file, no network at view time: no script, no font, no stylesheet from elsewhere;
  the plots are inline SVG drawn here (a dozen lines of geometry beat a charting CDN).
- Plots: rate over time (calls, errors, dropped), latency percentiles over time (from
  the send and from the schedule), the latency histogram (log bins), status codes over
  time (stacked). Each mark has a <title>, so hovering shows the number.
- The run: start, target, mode and options (from a --series file's header), the
  target rate (calls scheduled per second) over the achieved one (sent per second, by
  send time, so a burst of late calls shows), calls in flight, the error table and the
  per-second figures by send time.
- Everything from the input is escaped (statuses and error kinds come from a file).
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from engine.core.values import fixed

_W, _H = 760, 260
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 62, 16, 14, 38
PALETTE = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#64748b")
_STATUS_COLORS = {
    "2": ("#16a34a", "#4ade80", "#166534"),
    "3": ("#0891b2", "#67e8f9"),
    "4": ("#ea580c", "#f59e0b", "#9a3412", "#fdba74"),
    "5": ("#dc2626", "#7f1d1d", "#f87171", "#be185d"),
}

Line = tuple[str, str, Sequence[tuple[float, float | None]], bool]  # name, colour, points, dashed


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (pure, tested)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


class _Frame:
    """Maps data to pixels and draws the axes of one plot."""

    def __init__(self, x_max: float, y_max: float, *, x_label: str, y_label: str) -> None:
        self.xt = nice_ticks(0.0, max(x_max, 1e-9))
        self.yt = nice_ticks(0.0, max(y_max, 1e-9))
        self.x_max, self.y_max = self.xt[-1], self.yt[-1]
        self.x_label, self.y_label = x_label, y_label

    def x(self, v: float) -> float:
        return _PAD_L + (_W - _PAD_L - _PAD_R) * v / self.x_max

    def y(self, v: float) -> float:
        return _H - _PAD_B - (_H - _PAD_T - _PAD_B) * min(v, self.y_max) / self.y_max

    def axes(self) -> list[str]:
        out = []
        for t in self.yt:
            y = self.y(t)
            out.append(
                f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}" class="grid"/>'
                f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
            )
        for t in self.xt:
            x = self.x(t)
            out.append(
                f'<text x="{x:.1f}" y="{_H - _PAD_B + 16}" text-anchor="middle">{_fmt(t)}</text>'
            )
        out.append(
            f'<line x1="{_PAD_L}" y1="{_H - _PAD_B}" x2="{_W - _PAD_R}" '
            f'y2="{_H - _PAD_B}" class="axis"/>'
            f'<text x="{(_PAD_L + _W - _PAD_R) / 2}" y="{_H - 4}" text-anchor="middle">'
            f"{escape(self.x_label)}</text>"
            f'<text x="14" y="{(_PAD_T + _H - _PAD_B) / 2}" text-anchor="middle" '
            f'transform="rotate(-90 14 {(_PAD_T + _H - _PAD_B) / 2})">{escape(self.y_label)}</text>'
        )
        return out


def _svg(body: list[str], label: str) -> str:
    return (
        f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(body)
        + "</svg>"
    )


def _legend(items: Sequence[tuple[str, str]]) -> str:
    return (
        '<div class="legend">'
        + "".join(f'<span><i style="background:{c}"></i>{escape(n)}</span>' for n, c in items)
        + "</div>"
    )


def line_chart(lines: Sequence[Line], *, x_label: str, y_label: str, label: str) -> str:
    xs = [x for _, _, pts, _ in lines for x, _ in pts]
    ys = [y for _, _, pts, _ in lines for _, y in pts if y is not None]
    if not xs or not ys:
        return '<p class="empty">no data</p>'
    frame = _Frame(max(xs), max(ys), x_label=x_label, y_label=y_label)
    body = frame.axes()
    n_axes = len(body)
    for name, colour, pts, dashed in lines:
        path: list[str] = []
        for x, y in pts:
            if y is None:
                continue
            path.append(f"{'M' if not path else 'L'}{frame.x(x):.1f},{frame.y(y):.1f}")
            body.append(
                f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="2" fill="{colour}">'
                f"<title>{escape(name)} at {x:g}s: {y:.3g}</title></circle>"
            )
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        body.insert(
            n_axes,
            f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>',
        )
    return _svg(body, label) + _legend([(n, c) for n, c, _, _ in lines])


def histogram_chart(bins: Sequence[Mapping[str, Any]], *, label: str) -> str:
    if not bins:
        return '<p class="empty">no data</p>'
    top = max(b["count"] for b in bins)
    lo = math.log10(bins[0]["low"])
    hi = math.log10(bins[-1]["high"])
    span = max(hi - lo, 1e-9)
    frame = _Frame(1.0, top, x_label="latency from send (ms, log scale)", y_label="calls")
    frame.xt = []
    body = frame.axes()
    plot_w = _W - _PAD_L - _PAD_R
    for b in bins:
        x0 = _PAD_L + plot_w * (math.log10(b["low"]) - lo) / span
        x1 = _PAD_L + plot_w * (math.log10(b["high"]) - lo) / span
        y = frame.y(b["count"])
        body.append(
            f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(1.0, x1 - x0 - 1):.1f}" '
            f'height="{_H - _PAD_B - y:.1f}" fill="{PALETTE[0]}">'
            f"<title>{b['low']:.3g}-{b['high']:.3g} ms: {b['count']} calls</title></rect>"
        )
    decade = math.floor(lo)
    while decade <= math.ceil(hi):
        if lo - 1e-9 <= decade <= hi + 1e-9:
            x = _PAD_L + plot_w * (decade - lo) / span
            body.append(
                f'<text x="{x:.1f}" y="{_H - _PAD_B + 16}" text-anchor="middle">'
                f"{_fmt(10.0**decade)}</text>"
            )
        decade += 1
    return _svg(body, label)


def status_chart(series: Sequence[Mapping[str, Any]], width: float, *, label: str) -> str:
    keys = sorted({k for p in series for k in p["statuses"]})
    if not keys:
        return '<p class="empty">no data</p>'
    colours: dict[str, str] = {}
    spare = itertools.cycle(PALETTE[3:])  # any number of other kinds (a hostile file's)
    used: Counter[str] = Counter()
    for k in keys:  # one hue per status class, a shade per code; other kinds apart
        shades = _STATUS_COLORS.get(k[0], ()) if k.isdigit() and len(k) == 3 else ()
        colours[k] = shades[used[k[0]] % len(shades)] if shades else next(spare)
        used[k[0]] += 1
    top = max(sum(p["statuses"].values()) / width for p in series)
    frame = _Frame(series[-1]["t"] + width, top, x_label="seconds", y_label="calls per second")
    body = frame.axes()
    bar = max(1.0, frame.x(width) - frame.x(0) - 1)
    for p in series:
        base = 0.0
        for k in keys:
            n = p["statuses"].get(k, 0)
            if not n:
                continue
            top_y, base_y = frame.y(base + n / width), frame.y(base)
            body.append(
                f'<rect x="{frame.x(p["t"]):.1f}" y="{top_y:.1f}" width="{bar:.1f}" '
                f'height="{base_y - top_y:.1f}" fill="{colours[k]}">'
                f"<title>{escape(k)} at {p['t']:g}s: {n}</title></rect>"
            )
            base += n / width
    return _svg(body, label) + _legend([(k, colours[k]) for k in keys])


def table(rows: Sequence[Sequence[str]]) -> str:
    head, *rest = rows
    return (
        "<table><tr>"
        + "".join(f"<th>{escape(c)}</th>" for c in head)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rest)
        + "</table>"
    )


def _ms(v: object) -> str:
    if not isinstance(v, int | float):
        return "-"
    return fixed(v, 1)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:800px;color:#0f172a;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:26px 0 6px}
.sub{color:#475569;margin:0 0 14px}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;text-align:right;
border-bottom:1px solid #e2e8f0}td:first-child,th:first-child{text-align:left}
svg text{font-size:11px;fill:#334155}.grid{stroke:#e2e8f0}.axis{stroke:#64748b}
.legend span{margin-right:14px;font-size:12px}.legend i{display:inline-block;width:10px;
height:10px;margin-right:4px;border-radius:2px}.cards{display:flex;gap:10px;flex-wrap:wrap}
.card{border:1px solid #e2e8f0;border-radius:8px;padding:8px 12px;min-width:100px}
.card b{display:block;font-size:18px}.empty{color:#94a3b8}
"""


def _cards(data: Mapping[str, Any]) -> str:
    lat, cor = data["latency_ms"], data["corrected_latency_ms"]
    cards = [
        ("calls sent", str(data["sent"])),
        ("rate", f"{data['rate']:.1f}/s"),
        ("ok", str(data["ok"])),
        ("errors", str(data["failed"])),
        ("dropped", str(data["dropped"])),
        ("p99 from send", f"{_ms(lat.get('p99'))} ms"),
        ("p99 from schedule", f"{_ms(cor.get('p99'))} ms"),
    ]
    return "".join(f'<div class="card">{escape(k)}<b>{escape(v)}</b></div>' for k, v in cards)


def _latency_table(data: Mapping[str, Any]) -> str:
    lat, cor = data["latency_ms"], data["corrected_latency_ms"]
    keys = ("p50", "p90", "p99", "p99.9", "max", "mean")
    return table(
        [
            ("latency (ms)", *keys),
            ("from send", *(_ms(lat.get(k)) for k in keys)),
            ("from schedule", *(_ms(cor.get(k)) for k in keys)),
        ]
    )


def _status_table(statuses: Mapping[str, int]) -> str:
    total = sum(statuses.values()) or 1
    return table(
        [("status", "calls", "share")]
        + [(k, str(v), f"{100 * v / total:.1f}%") for k, v in statuses.items()]
    )


def _rate_plot(series: Sequence[Mapping[str, Any]], width: float) -> str:
    t = [p["t"] for p in series]
    return line_chart(
        [
            ("calls/s", PALETTE[0], list(zip(t, [p["rate"] for p in series], strict=True)), False),
            (
                "errors/s",
                PALETTE[2],
                [(x, p["errors"] / width) for x, p in zip(t, series, strict=True)],
                False,
            ),
            (
                "dropped/s",
                PALETTE[4],
                [(x, p["dropped"] / width) for x, p in zip(t, series, strict=True)],
                True,
            ),
        ],
        x_label="seconds",
        y_label="per second",
        label="rate over time",
    )


def _latency_plot(series: Sequence[Mapping[str, Any]]) -> str:
    t = [p["t"] for p in series]
    lines: list[Line] = [
        (
            f"{q} from send",
            c,
            [(x, p["latency_ms"][q]) for x, p in zip(t, series, strict=True)],
            False,
        )
        for q, c in (("p50", PALETTE[1]), ("p90", PALETTE[0]), ("p99", PALETTE[3]))
    ]
    lines.append(
        (
            "p99 from schedule",
            PALETTE[2],
            [(x, p["corrected_latency_ms"]["p99"]) for x, p in zip(t, series, strict=True)],
            True,
        )
    )
    return line_chart(lines, x_label="seconds", y_label="ms", label="latency over time")


def _when(epoch: object) -> str:
    if not isinstance(epoch, int | float):
        return "-"
    try:
        return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):  # past year 9999 or before year 1
        return f"{epoch:g} s from the epoch"


def _run_info(data: Mapping[str, Any]) -> str:
    """Start, target host, mode and options (the --series header; secrets redacted there)."""
    run = data.get("run")
    if not isinstance(run, Mapping):
        return (
            f'<div id="run"><p>start {escape(_when(data.get("start")))}. Target, mode and '
            "options are not in call records: give the run --series FILE and report that "
            "file to see them.</p></div>"
        )
    options = run.get("options") or {}
    rows: list[tuple[str, str]] = [("option", "value")]
    rows += [(str(k), json.dumps(v) if not isinstance(v, str) else v) for k, v in options.items()]
    return (
        f'<div id="run"><p>start <b>{escape(_when(run.get("start")))}</b> · target '
        f"<b>{escape(str(run.get('target')))}</b> · mode <b>{escape(str(run.get('mode')))}</b>"
        f" · inputs {escape(', '.join(map(str, run.get('inputs') or [])))}</p>"
        + (table(rows) if len(rows) > 1 else "<p>all options at their defaults</p>")
        + "</div>"
    )


def _target_plot(data: Mapping[str, Any]) -> str:
    series, sends = data["series"], data.get("sends") or []
    lines: list[Line] = [
        (
            "target (scheduled calls/s)",
            PALETTE[7],
            [(p["t"], p.get("scheduled")) for p in series],
            True,
        ),
        (
            "achieved (sent calls/s, by send)",
            PALETTE[0],
            [(p["t"], p["rate"]) for p in sends],
            False,
        ),
    ]
    return line_chart(lines, x_label="seconds", y_label="calls per second", label="target rate")


def _in_flight_plot(sends: Sequence[Mapping[str, Any]]) -> str:
    points = [(p["t"], p["in_flight"]) for p in sends]
    return line_chart(
        [("calls in flight (mean)", PALETTE[3], points, False)],
        x_label="seconds",
        y_label="calls in flight",
        label="calls in flight",
    )


def _error_table(data: Mapping[str, Any]) -> str:
    messages = data.get("top_errors") or (data.get("figures") or {}).get("top_errors")
    if messages:
        rows = [("error message", "calls")] + [
            (str(e["message"]), str(e["count"])) for e in messages
        ]
        return f'<div id="errors">{table(rows)}</div>'
    kinds = data.get("errors") or {}
    if not kinds:
        return '<div id="errors"><p class="empty">no errors</p></div>'
    rows = [("error", "calls")] + [(str(k), str(v)) for k, v in kinds.items()]
    return f'<div id="errors">{table(rows)}</div>'


def _sends_table(sends: Sequence[Mapping[str, Any]], width: float) -> str:
    shown = sends if len(sends) <= 60 else sends[:: -(-len(sends) // 60)]
    rows: list[tuple[str, ...]] = [("t (s)", "sent/s", "in flight", "errors", "p50 ms", "p99 ms")]
    rows += [
        (
            f"{p['t']:g}",
            f"{p['rate']:.1f}",
            f"{p['in_flight']:.1f}",
            str(p["errors"]),
            _ms(p["latency_ms"]["p50"]),
            _ms(p["latency_ms"]["p99"]),
        )
        for p in shown
    ]
    note = f"per {width:g} s" + (" (every few points)" if shown is not sends else "")
    return f'<div id="sends"><p class="sub">{note}</p>{table(rows)}</div>'


def page(title: str, body: str) -> str:
    """A whole self-contained page around `body`."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{escape(title)}</title><style>{_CSS}</style></head><body>
<h1>{escape(title)}</h1>
{body}
</body></html>
"""


def html_report(data: Mapping[str, Any], *, title: str) -> str:
    """The whole page for `Figures.to_dict()` output (with "run": a --series header)."""
    series = data["series"]
    sends = data.get("sends") or []
    width = float(data.get("series_width_s") or 1.0)
    sends_width = float(data.get("sends_width_s") or width)
    return page(
        title,
        f"""{_run_info(data)}
<p class="sub">{data["events"]} calls over {data["elapsed_s"]:.2f} s; series per {width:g} s.
Latency "from schedule" counts the wait before a late send (coordinated omission corrected).</p>
<div class="cards">{_cards(data)}</div>
<h2>Latency</h2>{_latency_table(data)}
<h2>Target rate and achieved rate</h2>{_target_plot(data)}
<h2>Rate over time (by scheduled time)</h2>{_rate_plot(series, width)}
<h2>Calls in flight</h2>{_in_flight_plot(sends)}
<h2>Latency percentiles over time</h2>{_latency_plot(series)}
<h2>Latency histogram</h2>{histogram_chart(data["latency_histogram"], label="latency histogram")}
<h2>Status codes over time</h2>{status_chart(series, width, label="status codes over time")}
<h2>Status codes</h2>{_status_table(data["statuses"])}
<h2>Errors</h2>{_error_table(data)}
<h2>Per second by send time</h2>{_sends_table(sends, sends_width)}""",
    )
