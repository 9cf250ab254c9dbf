"""`adbatch report`: a run's figures recomputed from its output, as a text table (pure).

Rules:
- The figures come from the same accumulator as the live run (series.Figures), so the
  report of a file agrees with the run's `--summary`.
- Streaming: one record at a time; memory is the histograms and the bounded series.
- Lines are read by `records.parse_record`, the record format's one reader.
- A line that is not a JSON object (a torn last line after a crash) is counted and
  skipped, never fatal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from engine.core.figures import VIEW_KEYS
from engine.core.records import parse_record
from engine.core.series import Figures


def figures_from_lines(lines: Iterable[bytes]) -> tuple[Figures, int]:
    """(figures, number of unreadable lines) of an output file's lines."""
    figures = Figures()
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        record = parse_record(line)
        if record is None:
            bad += 1
            continue
        figures.add_record(record)
    return figures, bad


def _ms(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        out.append("  " + "  ".join(cells).rstrip())
        if n == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return out


def figures_text(block: Mapping[str, Any]) -> str:
    """core/figures.py's block as a compact text block (end of load/replay, the report)."""
    views = block["latency_ms"]
    rows: list[tuple[str, ...]] = [("latency (ms)", *VIEW_KEYS)]
    if views.get("schedule") is not None:
        rows.append(("from schedule", *(_ms(views["schedule"].get(k)) for k in VIEW_KEYS)))
    rows.append(("from send", *(_ms(views["send"].get(k)) for k in VIEW_KEYS)))
    lines = _table(rows)
    calls, ratio = block["calls"], block["success_ratio"]
    lines.append(
        f"  success  {'-' if ratio is None else f'{100 * ratio:.2f}%'} "
        f"({block['ok']} ok of {calls} calls; {block['errors']} errors, "
        f"{block['dropped']} dropped)"
    )
    lines.append(f"  bytes    in {_bytes(block['bytes_in'])}, out {_bytes(block['bytes_out'])}")
    statuses = block["statuses"]
    if statuses:
        lines.append("  status   " + ", ".join(f"{k} x{v}" for k, v in statuses.items()))
    if block["top_errors"]:
        lines.append("  top errors")
        width = len(str(block["top_errors"][0]["count"]))
        lines += [f"  {e['count']:>{width}}  {e['message']}" for e in block["top_errors"]]
    return "\n".join(lines)


def _bytes(figure: Mapping[str, Any]) -> str:
    if figure["total"] is None:
        return "- (not in the records)"
    mean = figure["mean"]
    return f"{figure['total']}" + ("" if mean is None else f" (mean {mean:g}/call)")


def text_report(data: Mapping[str, Any], *, bad_lines: int = 0) -> str:
    """The figures (`Figures.to_dict()`) as a few aligned tables."""
    lines = [
        f"records   {data['events']}  (sent {data['sent']}, ok {data['ok']}, "
        f"failed {data['failed'] - data['dropped']}, dropped {data['dropped']}, "
        f"invalid {data['invalid']})",
        f"duration  {data['elapsed_s']:.2f} s   rate {data['rate']:.1f}/s",
    ]
    if bad_lines:
        lines.append(f"skipped   {bad_lines} unreadable lines")
    lines.append("")
    lat, cor = data["latency_ms"], data["corrected_latency_ms"]
    keys = ("p50", "p90", "p99", "p99.9", "max", "mean")
    lines += _table(
        [
            ("latency (ms)", *keys),
            ("from send", *(_ms(lat.get(k)) for k in keys)),
            ("from schedule", *(_ms(cor.get(k)) for k in keys)),
        ]
    )
    lines.append("")
    statuses = data["statuses"]
    if statuses:
        total = sum(statuses.values())
        rows: list[tuple[str, ...]] = [("status", "calls", "share")]
        rows += [(k, str(v), f"{100 * v / total:.1f}%") for k, v in statuses.items()]
        lines += _table(rows)
        lines.append("")
    series = data["series"]
    if series:
        width = data["series_width_s"]
        rows = [("t (s)", "rate/s", "p50 ms", "p99 ms", "p99 sched", "errors", "dropped")]
        shown = series if len(series) <= 30 else series[:: -(-len(series) // 30)]
        rows += [
            (
                f"{p['t']:g}",
                f"{p['rate']:.1f}",
                _ms(p["latency_ms"]["p50"]),
                _ms(p["latency_ms"]["p99"]),
                _ms(p["corrected_latency_ms"]["p99"]),
                str(p["errors"]),
                str(p["dropped"]),
            )
            for p in shown
        ]
        lines.append(f"per {width:g} s" + (" (every few points)" if shown is not series else ""))
        lines += _table(rows)
        lines.append("")
    return "\n".join(lines)
