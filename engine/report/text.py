"""`adbatch report`: a run's figures recomputed from its output, as a text table (pure).

Rules:
- The figures come from the same accumulator as the live run (series.Figures), so the
  report of a file agrees with the run's `--summary`.
- Streaming: one record at a time; memory is the histograms and the bounded series.
- Lines are read by `records.parse_record`, the record format's one reader.
- A line that is not a JSON object (a torn last line after a crash) is counted and
  skipped, never fatal.
- The figures block (core/figures.py, as load/replay print it at the end) is built from
  the same counters: bytes in are the length of each record's `response` as written
  (compact JSON, or the text); bytes out are not in a file (a request's headers are not
  recorded). A `--series` file keeps neither bytes nor error texts: its top errors are
  the error kinds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.core.figures import VIEW_KEYS, count_message, figures
from engine.core.records import ErrorKind, RecordLine, parse_record
from engine.core.series import Figures
from engine.core.stats import plural
from engine.core.values import fixed, terminal_safe


@dataclass(slots=True)
class FileTally:
    """What a records file tells beyond series.Figures: bytes in, error texts, and
    whether the calls had a schedule (load, replay) or not (run)."""

    bytes_in: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    scheduled: bool = False

    def add(self, record: RecordLine) -> None:
        response = record.fields.get("response")
        if isinstance(response, str):
            self.bytes_in += len(response.encode("utf-8", "surrogatepass"))
        elif response is not None:
            self.bytes_in += len(orjson.dumps(response))
        error = record.fields.get("error")
        if not record.ok and record.error_kind != ErrorKind.INVALID and isinstance(error, str):
            count_message(self.messages, error)
        self.scheduled = self.scheduled or record.scheduled_at is not None


def figures_from_lines(
    lines: Iterable[bytes], *, tally: FileTally | None = None
) -> tuple[Figures, int]:
    """(figures, number of unreadable lines) of an output file's lines; `tally` counts
    bytes and error texts too."""
    acc = Figures()
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        record = parse_record(line)
        if record is None:
            bad += 1
            continue
        acc.add_record(record)
        if tally is not None:
            tally.add(record)
    return acc, bad


def file_figures(acc: Figures, tally: FileTally | None) -> dict[str, Any]:
    """core/figures.py's block of a records file (`tally` from it) or, `tally` None, of
    a `--series` file (always scheduled; no bytes; error kinds for messages)."""
    return figures(
        send=acc.latency,
        schedule=acc.corrected if tally is None or tally.scheduled else None,
        calls=acc.events - acc.invalid,
        ok=acc.ok,
        dropped=acc.dropped,
        # Figures keys an unanswered call by its error kind; the block counts it "none".
        statuses={k: v for k, v in acc.statuses.items() if k.isdigit()},
        messages=acc.errors if tally is None else tally.messages,
        bytes_in=None if tally is None else tally.bytes_in,
        bytes_out=None,
    )


def _ms(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return fixed(value, 1)


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
        f"({block['ok']} ok of {plural(calls, 'call')}; {plural(block['errors'], 'error')}, "
        f"{block['dropped']} dropped)"
    )
    lines.append(f"  bytes    in {_bytes(block['bytes_in'])}, out {_bytes(block['bytes_out'])}")
    statuses = block["statuses"]
    if statuses:
        lines.append("  status   " + ", ".join(f"{k} x{v}" for k, v in statuses.items()))
    if block["top_errors"]:
        lines.append("  top errors")
        width = len(str(block["top_errors"][0]["count"]))
        # One line each, whatever a (hand-made) record's error holds: \n cannot forge one.
        lines += [
            f"  {e['count']:>{width}}  {terminal_safe(str(e['message']), line=True)}"
            for e in block["top_errors"]
        ]
    return "\n".join(lines)


def _bytes(figure: Mapping[str, Any]) -> str:
    if figure["total"] is None:
        return "n/a (not in the file)"
    mean = figure["mean"]
    return f"{figure['total']}" + ("" if mean is None else f" (mean {mean:g}/call)")


def text_report(data: Mapping[str, Any], *, bad_lines: int = 0) -> str:
    """The figures (`Figures.to_dict()`, with `file_figures`'s block under "figures")
    as a few aligned tables."""
    lines = [
        f"records   {data['events']}  (sent {data['sent']}, ok {data['ok']}, "
        f"failed {data['failed']}, dropped {data['dropped']}, invalid {data['invalid']})",
        f"duration  {data['elapsed_s']:.2f} s   rate {data['rate']:.1f}/s (sent over "
        f"{data['sent_s']:.2f} s)   throughput {data['throughput']:.1f}/s",
    ]
    if bad_lines:
        lines.append(f"skipped   {plural(bad_lines, 'unreadable line')}")
    lines.append("")
    block = data.get("figures")
    if block is not None:
        lines += ["figures", figures_text(block)]
        if data.get("run") is not None:
            lines.append("  (a --series file keeps error kinds, not messages, and no bytes)")
        lines.append("")
    series = data["series"]
    if series:
        width = data["series_width_s"]
        rows: list[tuple[str, ...]] = [
            ("t (s)", "rate/s", "p50 ms", "p99 ms", "p99 sched", "errors", "dropped")
        ]
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
