"""Join shard outputs into one file and check they cover the input exactly once.

Rules:
- A part is read as whole lines; a last line without its newline (a process killed
  mid-write) is never copied, and is reported. Lines are read by `records.parse_record`,
  the record format's one parser. A line longer than any record of the run (its
  manifest's `max_record_bytes`, else the default limits') ends the part, never held
  whole. Memory follows what the parts hold, never a value read from them: a seq of
  1e11, a manifest's `records` or shard count.
- A manifest merge cannot use (a hand edit: `shard` not [I, N]) is one problem line,
  and the parts are joined as without manifests.
- Static shards (`adbatch run --shard I/N -o part`) leave a manifest beside their output
  (files/manifests.py). `merge` checks the manifests (every shard 0..N-1 once, same
  input, part unchanged) and the records themselves: each `seq` of 0..records-1 exactly
  once. A duplicate is not copied twice; a missing record is named. Without manifests
  it checks that the seqs have no duplicate and no gap.
- The merged file gets its own manifest (`OUT.manifest.json`): rows per part, in the
  order they were joined. The Ray backend writes the same kind.
- With `handle_signals` (the CLI) a SIGINT/SIGTERM stops the merge at once
  (runtime/shutdown.py's Interrupted): the output is left as it was, its upload aborted
  (files/urlmerge.py).
- A shard's counters travel as plain JSON (`stats_to_dict`, `add_stats`): every counter
  of `RunStats`, so a sharded run's summary says what one process would have said.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from engine.config import DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_RESPONSE_BYTES
from engine.core.events import ReadCounts
from engine.core.records import parse_record
from engine.core.stats import Histogram, RunStats, plural
from engine.core.values import terminal_safe
from engine.errors import ConfigError, InputError
from engine.files.manifests import manifest_path, read_manifest, record_bytes_limit, scan_part
from engine.files.paths import check_outputs
from engine.files.position import Counted
from engine.files.storage import StorageOptions, is_url, open_read
from engine.files.urlmerge import MergeOutput, expand_parts
from engine.runtime.shutdown import interruptible

_EXAMPLES = 5


@dataclass(slots=True)
class Coverage:
    """Which seqs were seen: a byte per seq while the seqs are no larger than the bytes
    read so far (`budget`: a record takes more than a byte), a set for the others; so
    memory follows what the parts hold, never a seq's value (`"seq": 100000000000`
    costs a set entry, not 100 GB)."""

    seen: bytearray = field(default_factory=bytearray)
    sparse: set[int] = field(default_factory=set)
    budget: int = 1 << 20
    duplicates: int = 0
    duplicate_examples: list[int] = field(default_factory=list)

    def add(self, seq: int) -> bool:
        """Record `seq`; False when it was seen before (a duplicate)."""
        seen = self.seen
        if len(seen) <= seq < self.budget:
            self._grow(seq)
        if seq < len(seen):
            twice = seen[seq] == 1
            seen[seq] = 1
        else:
            twice = seq in self.sparse
            self.sparse.add(seq)
        if twice:
            self.duplicates += 1
            if len(self.duplicate_examples) < _EXAMPLES:
                self.duplicate_examples.append(seq)
        return not twice

    def _grow(self, seq: int) -> None:
        seen = self.seen
        seen.extend(bytes(min(max(seq + 1, 2 * len(seen)), self.budget) - len(seen)))
        for low in [s for s in self.sparse if s < len(seen)]:
            seen[low] = 1
            self.sparse.discard(low)

    def missing(self, records: int | None) -> tuple[int, list[int]]:
        """(how many of 0..records-1 were not seen, the first few); records None: up to max."""
        seen, sparse = self.seen, self.sparse
        if records is None:
            records = max(len(seen.rstrip(b"\0")), max(sparse, default=-1) + 1)
        dense = min(records, len(seen))
        count = records - seen.count(1, 0, dense) - sum(1 for s in sparse if s < records)
        examples: list[int] = []
        pos = seen.find(0, 0, dense)
        while pos >= 0 and len(examples) < _EXAMPLES:
            examples.append(pos)
            pos = seen.find(0, pos + 1, dense)
        pos = dense  # past the bytes: not in the set (a few steps: the set is small)
        while pos < records and len(examples) < _EXAMPLES:
            if pos not in sparse:
                examples.append(pos)
            pos += 1
        return count, examples

    def beyond(self, records: int) -> int:
        return self.seen.count(1, records) + sum(1 for s in self.sparse if s >= records)


@dataclass(slots=True)
class MergeReport:
    """What `merge_outputs` found; `exactly_once` when there is nothing to say."""

    rows: int = 0
    parts: int = 0
    records: int | None = None
    duplicates: int = 0
    missing: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def exactly_once(self) -> bool:
        return not self.problems

    def line(self) -> str:
        head = f"merged {plural(self.rows, 'row')} from {plural(self.parts, 'part')}"
        if self.exactly_once:
            total = "" if self.records is None else f" of {self.records}"
            return f"{head}: every record{total} exactly once"
        return f"{head}; " + "; ".join(self.problems)


def _input_names(inputs: object) -> tuple[str, ...] | None:
    """The file names of a shard's inputs, in order: by name, not path, since each shard
    may have run on a machine of its own that mounts the input elsewhere."""
    if not isinstance(inputs, list):
        return None
    return tuple(str(i).rstrip("/").rpartition("/")[2] for i in inputs)


#: The longest line read when no manifest says more: a record of a run with the default
#: --max-response-bytes and --max-line-bytes. A longer line is no record: the part is
#: torn or not a part, and its rest is not merged (never held whole: `merge /dev/zero`).
LINE_LIMIT = record_bytes_limit(DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_MAX_LINE_BYTES)
#: The most a manifest's `max_record_bytes` raises it to (a hand-edited 2**40 would read
#: a part without newlines whole).
LINE_CEILING = 1 << 30


def _unreadable(manifest: dict[str, Any]) -> str | None:
    """What a shard's manifest holds that merge cannot use (a hand edit); None if fine.
    Never its value: it may be anything, of any length."""
    shard = manifest.get("shard")
    if not (
        type(shard) is list
        and len(shard) == 2
        and all(type(v) is int for v in shard)
        and 0 <= shard[0] < shard[1]
    ):
        return "its shard is not [I, N] with 0 <= I < N"
    for key, kind in (("records", int), ("rows", int), ("max_record_bytes", int)):
        value = manifest.get(key)
        if value is not None and (type(value) is not kind or value < 0):
            return f"its {key} is not a count"
    if not isinstance(manifest.get("sha256"), str):
        return "its sha256 is not a checksum"
    if not isinstance(manifest.get("by"), str | None):
        return "its by is not a --shard-by"
    for key in ("inputs", "input_identity"):
        if not isinstance(manifest.get(key), list | None):
            return f"its {key} is not a list"
    return None


def _other_inputs(parts: Sequence[str], shards: list[dict[str, Any]]) -> str | None:
    """An input of one name that is not the same file in two parts (its size or the
    sample of its bytes differ), where both manifests say (older ones do not)."""
    first: dict[int, tuple[str, str]] = {}
    for path, m in zip(parts, shards, strict=True):
        for i, found in enumerate(m.get("input_identity") or ()):
            if found is None:
                continue
            key = json.dumps(found, sort_keys=True)
            held = first.setdefault(i, (path, key))
            if held[1] != key:
                names = _input_names(m.get("inputs")) or ()
                name = terminal_safe(names[i]) if i < len(names) else f"input {i + 1}"
                return (
                    f"the parts come from different inputs: {name} of {held[0]} and "
                    f"of {path} are not the same file (size or content)"
                )
    return None


def _check_manifests(
    parts: Sequence[str], report: MergeReport, options: StorageOptions = ()
) -> tuple[list[str], int]:
    """The parts in shard order when every part has a manifest, and the longest record
    line they may hold; checks the manifests agree."""
    found = [read_manifest(manifest_path(p), options) for p in parts]
    # Only a shard's manifest says which shard a part is (a joined -o URL has another).
    manifests = [m if m and m.get("adbatch") == "shard" else None for m in found]
    if not any(manifests):
        return list(parts), LINE_LIMIT
    if not all(manifests):
        lacking = [p for p, m in zip(parts, manifests, strict=True) if not m]
        report.problems.append(f"no manifest beside {', '.join(lacking)}")
        return list(parts), LINE_LIMIT
    shards: list[dict[str, Any]] = [m for m in manifests if m]
    for path, m in zip(parts, shards, strict=True):
        if (why := _unreadable(m)) is not None:
            report.problems.append(f"{manifest_path(path)} cannot be used: {why}")
            return list(parts), LINE_LIMIT
    limit = max(LINE_LIMIT, *(m.get("max_record_bytes") or 0 for m in shards))
    limit = min(limit, LINE_CEILING)  # a manifest's word, bounded: it may be edited
    by_shard: dict[int, str] = {}
    counts = {m["shard"][1] for m in shards}
    records = {m.get("records") for m in shards}
    modes = {m.get("by") for m in shards}
    inputs = {_input_names(m.get("inputs")) for m in shards}
    if len(counts) != 1 or len(records) != 1 or len(modes) != 1 or len(inputs) != 1:
        report.problems.append("the parts come from different shardings or inputs")
        return list(parts), limit
    if (other := _other_inputs(parts, shards)) is not None:
        report.problems.append(other)
        return list(parts), limit
    count = counts.pop()
    record_count = records.pop()
    report.records = record_count if isinstance(record_count, int) else None
    for path, m in zip(parts, shards, strict=True):
        index = m["shard"][0]
        if index in by_shard:
            report.problems.append(f"shard {index}/{count} given twice ({by_shard[index]}, {path})")
            continue
        by_shard[index] = path
        info = scan_part(path, options)
        if (info.rows, info.sha256) != (m.get("rows"), m.get("sha256")):
            report.problems.append(f"{path} changed after its shard finished (rows or checksum)")
    if len(by_shard) < count:
        absent = (str(i) for i in range(count) if i not in by_shard)
        shown = ", ".join(itertools.islice(absent, _EXAMPLES))
        more = count - len(by_shard) - _EXAMPLES
        report.problems.append(
            f"shard {shown}{f' and {more} more' if more > 0 else ''} of {count} not given"
        )
    return [by_shard[i] for i in sorted(by_shard)], limit


def _open_part(path: str, options: StorageOptions) -> BinaryIO:
    """A part, buffered for bounded `readline` (an object is read by ranged reads)."""
    try:  # an output on object storage (`s3://b/out.jsonl`) is read where it is
        if is_url(path):
            return io.BufferedReader(Counted(open_read(path, options), ReadCounts()), 1 << 16)
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read part {path}: {exc.strerror or exc}") from None


def _join_part(
    path: str,
    out: BinaryIO,
    coverage: Coverage,
    report: MergeReport,
    *,
    options: StorageOptions = (),
    limit: int = LINE_LIMIT,
) -> int:
    """Copy the records of `path` not seen before to `out`; the number of lines unread."""
    rows = unreadable = 0
    with _open_part(path, options) as f:
        read = f.readline
        while line := read(limit + 1):
            if not line.endswith(b"\n"):
                if len(line) > limit:
                    size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
                    report.problems.append(
                        f"{path} holds a line longer than a record can be ({size}): "
                        "torn or not a part; the rest of it is not merged"
                    )
                else:
                    report.problems.append(f"{path} ends with a torn line (not merged)")
                break
            coverage.budget += len(line)
            record = parse_record(line)
            seq = None if record is None else record.seq
            if seq is None:
                unreadable += 1
                continue
            if coverage.add(seq):
                out.write(line)
                rows += 1
    report.rows += rows
    return unreadable


def _coverage_problems(coverage: Coverage, report: MergeReport) -> None:
    """Say what the seqs seen lack or hold twice, against the input's record count."""
    if coverage.duplicates:
        report.duplicates = coverage.duplicates
        shown = ", ".join(map(str, coverage.duplicate_examples))
        report.problems.append(
            f"{coverage.duplicates} records given more than once (seq {shown}...; kept the first)"
        )
    missing, examples = coverage.missing(report.records)
    if missing:
        report.missing = missing
        report.problems.append(
            f"{missing} records missing (seq {', '.join(map(str, examples))}"
            f"{'...' if missing > len(examples) else ''})"
        )
    if report.records is not None and (extra := coverage.beyond(report.records)):
        report.problems.append(f"{extra} records lie beyond the input's {report.records}")


def _file(path: str) -> str:
    return "./-" if path == "-" else path


def merge_outputs(
    parts: Sequence[str],
    output: str,
    *,
    options: StorageOptions = (),
    handle_signals: bool = False,
) -> MergeReport:
    """Join static-shard outputs into `output` (each record once) and check coverage.
    Parts and output may be URLs (a URL part may be a glob or a prefix: its objects).
    `handle_signals` (the CLI, main thread): SIGINT/SIGTERM raise Interrupted."""
    with interruptible(handle_signals):
        return _merge(parts, output, options)


def _merge(parts: Sequence[str], output: str, options: StorageOptions) -> MergeReport:
    if not parts:
        raise ConfigError("merge: no part given")
    parts = expand_parts(tuple(parts), options)  # a glob's manifests are not parts
    # Before anything is written: neither the output nor its manifest is a part or the
    # manifest of one (read by _check_manifests).
    # `-` is a file of that name here, not stdin or stdout.
    written = [("-o", _file(output)), ("the manifest of -o", manifest_path(output))]
    read = [("input", _file(p)) for p in parts]
    read += [("the manifest of a part", manifest_path(p)) for p in parts]
    check_outputs(read, written)
    report = MergeReport(parts=len(parts))
    ordered, limit = _check_manifests(parts, report, options)
    coverage = Coverage()
    unreadable = 0
    entries: list[dict[str, Any]] = []
    target = MergeOutput(output, options)
    with target.open() as out:
        for path in ordered:
            before = report.rows
            unreadable += _join_part(path, out, coverage, report, options=options, limit=limit)
            entries.append({"part": path, "rows": report.rows - before})
    if unreadable:
        report.problems.append(f"{unreadable} lines are not adbatch records (not merged)")
    _coverage_problems(coverage, report)
    target.write_manifest(
        entries,
        records=report.records,
        sha256=target.sha256(),
        exactly_once=report.exactly_once,
    )
    return report


# -- stats of many shards --------------------------------------------------------------

_COUNTERS = (
    "events", "ok", "failed", "invalid", "blank_lines", "unauthorized", "attempts",
    "bytes_in", "bytes_out",
)  # fmt: skip


def stats_to_dict(stats: RunStats) -> dict[str, Any]:
    """A shard's counters and latency histogram as JSON-able data (shard manifests, Ray)."""
    return {
        **{name: getattr(stats, name) for name in _COUNTERS},
        "statuses": {str(k): v for k, v in stats.statuses.items()},
        "errors": dict(stats.errors),
        "retries": dict(stats.retries),
        "latency": stats.latency.to_dict(),
        "failures": [[status, kind, n] for (status, kind), n in stats.failures.items()],
        "messages": dict(stats.messages),
    }


def add_stats(total: RunStats, data: dict[str, Any]) -> None:
    """Add one shard's `stats_to_dict` into `total` (histograms merge by adding counts)."""
    for name in _COUNTERS:
        setattr(total, name, getattr(total, name) + int(data.get(name, 0)))
    total.statuses.update({int(k): int(v) for k, v in data.get("statuses", {}).items()})
    total.errors.update({str(k): int(v) for k, v in data.get("errors", {}).items()})
    total.retries.update({str(k): int(v) for k, v in data.get("retries", {}).items()})
    total.latency.merge(Histogram.from_dict(data.get("latency", {})))
    for status, kind, n in data.get("failures", []):
        total.failures[(None if status is None else int(status), str(kind))] += int(n)
    shard = RunStats()
    shard.messages.update({str(k): int(v) for k, v in data.get("messages", {}).items()})
    total.merge(shard)  # the bound on distinct messages is merge's
