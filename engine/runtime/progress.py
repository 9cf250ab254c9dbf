"""What `run`'s live display says (one process or a --workers parent); runtime/display.py
draws it.

Rules:
- Where the run is in its input is read by bytes: `ReadCounts.bytes_read` (compressed
  bytes for gzip) against the size of the inputs, known when every input is a regular
  file (less the bytes a shard never reads: a Parquet shard's total is its row groups'
  share); stdin, a pipe or a process substitution shows counts and rates, no total. The
  reader runs ahead of the answers (a few hundred records, a whole small file): the
  bytes read count in the proportion of the records taken that are answered. That
  arithmetic is `core.tally.input_share`, which the observers' progress reads too.
- The ETA is the average pace so far applied to the bytes left; the rate shown is the
  last second's.
- It reads the run's figures and never changes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.core.events import ReadCounts
from engine.core.records import ErrorKind
from engine.core.tally import Tally, input_share
from engine.files.sources import input_size
from engine.net.auth import TokenProvider
from engine.runtime.display import Bar, RateMeter, Row, count, eta, size, span


@dataclass(frozen=True, slots=True)
class RunFigures:
    """What a run's driver knows while it runs (a --workers parent knows only `done`)."""

    done: int
    taken: int  # records taken from the input so far, answered or not
    ok: int | None = None
    failed: int | None = None
    invalid: int | None = None
    p99_ms: float | None = None


def tally_figures(tally: Tally, taken: int) -> RunFigures:
    """The figures of a --workers parent: its workers' LiveFigures summed."""
    ok = tally.ok
    done = tally.done
    invalid = tally.errors()[ErrorKind.INVALID]
    p99 = tally.latency.percentile(99)
    return RunFigures(done, taken, ok, done - ok - invalid, invalid, p99)


class RunView:
    """The rows of `run`'s display; `view(elapsed)` as display.show_live calls it."""

    def __init__(
        self,
        figures: Callable[[], RunFigures],
        counts: ReadCounts,
        total_bytes: int | None,
        *,
        note: str = "",
    ) -> None:
        self.figures = figures
        self.counts = counts
        self.total_bytes = total_bytes
        self.note = note
        self.meter = RateMeter()

    @classmethod
    def of_inputs(
        cls,
        figures: Callable[[], RunFigures],
        counts: ReadCounts | None,
        inputs: Sequence[str],
        *,
        note: str = "",
    ) -> RunView:
        """The view of a run reading `inputs` into `counts` (sized when they are files)."""
        total = input_size(inputs) if counts is not None else None
        return cls(figures, counts or ReadCounts(), total, note=note)

    def __call__(self, elapsed: float) -> list[Row]:
        f = self.figures()
        rate = self.meter.rate(elapsed, f.done)
        parts = [f"{count(f.done)} done", f"{rate:,.0f}/s"]
        if f.ok is not None:
            parts += [f"{count(f.ok)} ok", f"{count(f.failed or 0)} failed"]
            parts.append(f"{count(f.invalid or 0)} invalid")
        if f.ok is not None or f.p99_ms is not None:
            parts.append("p99 -" if f.p99_ms is None else f"p99 {f.p99_ms:,.0f} ms")
        if self.note:
            parts.append(self.note)
        rows: list[Row] = []
        if self.total_bytes:
            share = input_share(self.counts, self.total_bytes, f.taken, f.done)
            total = int(share.total)
            read = min(int(share.done), total)
            left = eta(read, total, elapsed)
            rows.append(
                Bar(
                    read / total,
                    f"{100 * read / total:3.0f}%  {size(read)} / {size(total)}  "
                    f"{span(elapsed)}, ETA {span(left)}",
                )
            )
        else:
            parts.append(span(elapsed))
        rows.append(" · ".join(parts))
        return rows


def token_state(tokens: TokenProvider) -> str:
    """The token in a few words: static, valid for how long, awaited, or given up."""
    lease = tokens.lease()
    if lease.failed is not None:
        return "failed"
    if lease.header is None:
        return "none" if lease.ttl is None and tokens.token_stats() is None else "awaited"
    if lease.ttl is None:
        return "static"
    stats = tokens.token_stats()
    renewals = "" if stats is None else f", {count(stats.renewals)} renewed"
    return f"valid {span(lease.ttl)}{renewals}"
