"""What a `--workers` parent hands out: the input as parcels, each sent whole to one
worker, numbered as a 1-process run numbers its records.

- Local, uncompressed JSONL files go as `Span`s (files/spans.py): the parent only finds
  where the records are; each worker reads its spans' lines itself. Reading and pickling
  every line here cost the parent ~1 µs of CPU per event more (issue 18; the workers
  spend the same either way).
- Any other input (stdin, gzip, CSV, Parquet, a URL, a network filesystem), and every
  `--resume` (whose check needs each record's id), goes as `Units`: the records read
  here (`sources.read_units`), parsed by the workers.
- A parcel holds up to `BATCH` records. A shorter one (the end of an input, a slow stdin)
  is shared out among the workers, so a short input still runs on every one.
- With `--rate R` a parcel holds no more than a worker sends in `RATE_PARCEL_S` (R/N x
  0.05 s, at least 1): each worker is held to R/N, so the records one holds that the
  others cannot take are sent at R/N. With 256 records a parcel, 300 events at
  `--rate 100 --workers 2` ran at 59/s (one worker held 278 of them); a worker is now at
  most one parcel (~0.05 s of its calls) ahead of the others at the end. Small parcels cost
  the parent a message each, but at most N / `RATE_PARCEL_S` of them a second (`BATCH`
  is the most whatever the rate); without `--rate` a parcel is `BATCH` records as before.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from contextlib import aclosing

from engine.files.sources import Unit, read_units, unit_item
from engine.files.spans import HeldFiles, Span, can_span, input_spans
from engine.multiproc.messages import Parcel, Units
from engine.runtime.feeds import event_defaults, reads_inline, thread_batches
from engine.runtime.loop import connection_budget
from engine.runtime.session import RunSession

BATCH = 256
#: With --rate: a parcel holds at most what one worker sends in this time.
RATE_PARCEL_S = 0.05


def parcel_size(rate: float | None, workers: int) -> int:
    """The most records a parcel holds: `BATCH`, or with a rate what a worker sends (at
    rate / workers) in `RATE_PARCEL_S`, at least one."""
    if rate is None:
        return BATCH
    return max(1, min(BATCH, math.ceil(rate / workers * RATE_PARCEL_S)))


class Parcels:
    """The run's input as parcels (`all`), and how many records were read and skipped."""

    def __init__(self, session: RunSession) -> None:
        self.session = session
        self.read = 0  # input records read
        self.resumed = 0  # records skipped: the output answers them (--resume)
        self.held = HeldFiles()  # the span's files, open until the run ends (`close`)
        self.size = parcel_size(session.config.rate, session.config.workers)

    def close(self) -> None:
        """The run is over: no worker reads a span any more."""
        self.held.close()

    def all(self) -> AsyncGenerator[Parcel, None]:
        config = self.session.config
        if self.session.resume is None and can_span(
            config.inputs, config.input_format, connection_budget(config)
        ):
            return self._spans()
        return self._units()

    async def _spans(self) -> AsyncGenerator[Span, None]:
        config = self.session.config
        cut = input_spans(
            config.inputs,
            self.size,
            config.workers,
            max_line_bytes=config.max_line_bytes,
            counts=self.session.counts,
            held=self.held,
        )
        async with aclosing(thread_batches(cut, 1, inline=True)) as batches:
            async for (span,) in batches:
                self.read += span.count
                yield span

    async def _units(self) -> AsyncGenerator[Units, None]:
        config = self.session.config
        units = read_units(
            config.inputs,
            input_format=config.input_format,
            max_line_bytes=config.max_line_bytes,
            counts=self.session.counts,
            storage_options=config.storage_options,
        )
        inline = reads_inline(config)  # a local file: in this thread (feeds.py)
        async with aclosing(thread_batches(units, BATCH, inline=inline)) as batches:
            async for batch in batches:
                self.read += len(batch)
                # A full batch goes to one worker (fewer, larger messages keep every
                # worker's pool full), in parcels of `size` with a rate; a short one is
                # shared out.
                full = len(batch) == BATCH
                share = self.size if full else math.ceil(len(batch) / config.workers)
                part_size = min(self.size, share)
                if self.session.resume is not None:
                    batch = self._unanswered(batch)
                for start in range(0, len(batch), part_size):
                    yield Units.of(batch[start : start + part_size])
        if self.session.resume is not None:  # read to its end: its events are known
            self.session.resume.input_read(self.read)

    def _unanswered(self, batch: list[Unit]) -> list[Unit]:
        """--resume: drop what the output answers. Only those records are parsed here (for
        their id, which the check needs); the others go to the workers unparsed."""
        index = self.session.resume
        assert index is not None
        defaults = event_defaults(self.session.config)
        kept = []
        for unit in batch:
            seq = unit.seq
            if index.recorded(seq) and index.answered(
                seq, unit.source, unit_item(unit, defaults).id
            ):
                continue
            kept.append(unit)
        self.resumed += len(batch) - len(kept)
        return kept
