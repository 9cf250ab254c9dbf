"""Join shard outputs into one file and check they cover the input exactly once.

Rules:
- A part is copied as whole lines, in 1 MiB blocks, counting rows and hashing as it
  goes (sha256 of the part's bytes); a last line without its newline (a process killed
  mid-write) is never copied, and is reported.
- Static shards (`adbatch run --shard I/N -o part`) leave a manifest beside their output
  (`part.manifest.json`: shard, records in the whole input, rows, sha256). `merge`
  checks the manifests (every shard 0..N-1 once, same input, part unchanged) and the
  records themselves: each `seq` of 0..records-1 exactly once. A duplicate is not
  copied twice; a missing record is named. Without manifests it checks that the seqs
  have no duplicate and no gap.
- The merged file gets its own manifest (`OUT.manifest.json`): rows and sha256 per part,
  in the order they were joined. The Ray backend writes the same kind.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from engine.config import Config
from engine.core.stats import Histogram, RunStats
from engine.errors import ConfigError, InputError

MANIFEST_SUFFIX = ".manifest.json"
_BLOCK = 1 << 20
_SEQ = re.compile(rb'^\{"seq":(\d+)[,}]')
_EXAMPLES = 5


def manifest_path(output: str) -> str:
    return output + MANIFEST_SUFFIX


@dataclass(frozen=True, slots=True)
class PartInfo:
    """A part file as it is on disk: whole lines, their bytes' sha256."""

    path: str
    rows: int
    sha256: str
    size: int


def scan_part(path: str) -> PartInfo:
    """Rows and sha256 of a file (one pass)."""
    digest = hashlib.sha256()
    rows = size = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                digest.update(block)
                rows += block.count(b"\n")
                size += len(block)
    except OSError as exc:
        raise InputError(f"cannot read part {path}: {exc.strerror or exc}") from None
    return PartInfo(path, rows, digest.hexdigest(), size)


def copy_part(path: str, out: BinaryIO) -> PartInfo:
    """Append the file at `path` to `out` in blocks; its rows and sha256 as copied."""
    digest = hashlib.sha256()
    rows = size = 0
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read part {path}: {exc.strerror or exc}") from None
    with f:
        while block := f.read(_BLOCK):
            digest.update(block)
            rows += block.count(b"\n")
            size += len(block)
            out.write(block)
    return PartInfo(path, rows, digest.hexdigest(), size)


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write `data` to `path` through a temporary file and a rename (never half a file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard_manifest(config: Config, *, records: int) -> None:
    """The manifest of a static shard's output (called by `run` when `--shard` is set)."""
    assert config.shard is not None
    assert config.output is not None
    info = scan_part(config.output)
    write_json_atomic(
        manifest_path(config.output),
        {
            "adbatch": "shard",
            "shard": list(config.shard),
            "by": config.shard_by,
            "inputs": list(config.inputs),
            "records": records,
            "rows": info.rows,
            "sha256": info.sha256,
        },
    )


def read_manifest(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = orjson.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InputError(f"cannot read manifest {path}: {exc}") from None
    return data if isinstance(data, dict) else None


def write_merged_manifest(output: str, parts: Iterable[dict[str, Any]], **extra: Any) -> None:
    entries = list(parts)
    write_json_atomic(
        manifest_path(output),
        {
            "adbatch": "merged",
            **extra,
            "rows": sum(int(p["rows"]) for p in entries),
            "parts": entries,
        },
    )


# -- coverage ----------------------------------------------------------------------------


@dataclass(slots=True)
class Coverage:
    """Which seqs were seen: a byte per seq, so 100 M records cost 100 MB at most."""

    seen: bytearray = field(default_factory=bytearray)
    duplicates: int = 0
    duplicate_examples: list[int] = field(default_factory=list)

    def add(self, seq: int) -> bool:
        """Record `seq`; False when it was seen before (a duplicate)."""
        seen = self.seen
        if seq >= len(seen):
            seen.extend(bytes(max(seq + 1 - len(seen), len(seen))))
        if seen[seq]:
            self.duplicates += 1
            if len(self.duplicate_examples) < _EXAMPLES:
                self.duplicate_examples.append(seq)
            return False
        seen[seq] = 1
        return True

    def missing(self, records: int | None) -> tuple[int, list[int]]:
        """(how many of 0..records-1 were not seen, the first few); records None: up to max."""
        seen = self.seen
        if records is None:
            records = len(seen.rstrip(b"\0"))
        window = seen[:records] + bytes(max(0, records - len(seen)))
        count = window.count(0)
        examples: list[int] = []
        pos = window.find(0)
        while pos >= 0 and len(examples) < _EXAMPLES:
            examples.append(pos)
            pos = window.find(0, pos + 1)
        return count, examples

    def beyond(self, records: int) -> int:
        return self.seen[records:].count(1)


def _seq_of(line: bytes) -> int | None:
    match = _SEQ.match(line)
    if match is not None:
        return int(match.group(1))
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    seq = obj.get("seq") if isinstance(obj, dict) else None
    return seq if isinstance(seq, int) and seq >= 0 else None


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
        head = f"merged {self.rows} rows from {self.parts} parts"
        if self.exactly_once:
            total = "" if self.records is None else f" of {self.records}"
            return f"{head}: every record{total} exactly once"
        return f"{head}; " + "; ".join(self.problems)


def _check_manifests(parts: Sequence[str], report: MergeReport) -> list[str]:
    """The parts in shard order when every part has a manifest; checks they agree."""
    manifests = [read_manifest(manifest_path(p)) for p in parts]
    if not any(manifests):
        return list(parts)
    if not all(manifests):
        lacking = [p for p, m in zip(parts, manifests, strict=True) if not m]
        report.problems.append(f"no manifest beside {', '.join(lacking)}")
        return list(parts)
    by_shard: dict[int, str] = {}
    counts = {tuple(m["shard"])[1] for m in manifests if m}
    records = {m.get("records") for m in manifests if m}
    modes = {m.get("by") for m in manifests if m}
    if len(counts) != 1 or len(records) != 1 or len(modes) != 1:
        report.problems.append("the parts come from different shardings or inputs")
        return list(parts)
    count = counts.pop()
    record_count = records.pop()
    report.records = record_count if isinstance(record_count, int) else None
    for path, m in zip(parts, manifests, strict=True):
        assert m is not None
        index = int(m["shard"][0])
        if index in by_shard:
            report.problems.append(f"shard {index}/{count} given twice ({by_shard[index]}, {path})")
            continue
        by_shard[index] = path
        info = scan_part(path)
        if (info.rows, info.sha256) != (m.get("rows"), m.get("sha256")):
            report.problems.append(f"{path} changed after its shard finished (rows or checksum)")
    absent = [str(i) for i in range(count) if i not in by_shard]
    if absent:
        report.problems.append(f"shard {', '.join(absent)} of {count} not given")
    return [by_shard[i] for i in sorted(by_shard)]


def merge_outputs(parts: Sequence[str], output: str) -> MergeReport:
    """Join static-shard outputs into `output` (each record once) and check coverage."""
    if not parts:
        raise ConfigError("merge: no part given")
    if output in parts:
        raise ConfigError(f"merge: the output {output} is also a part")
    report = MergeReport(parts=len(parts))
    ordered = _check_manifests(parts, report)
    coverage = Coverage()
    unreadable = 0
    entries: list[dict[str, Any]] = []
    try:
        out = open(output, "wb")
    except OSError as exc:
        raise InputError(f"cannot write output {output}: {exc.strerror or exc}") from None
    with out:
        for path in ordered:
            rows = 0
            try:
                f = open(path, "rb")
            except OSError as exc:
                raise InputError(f"cannot read part {path}: {exc.strerror or exc}") from None
            with f:
                for line in f:
                    if not line.endswith(b"\n"):
                        report.problems.append(f"{path} ends with a torn line (not merged)")
                        break
                    seq = _seq_of(line)
                    if seq is None:
                        unreadable += 1
                        continue
                    if coverage.add(seq):
                        out.write(line)
                        rows += 1
            report.rows += rows
            entries.append({"part": path, "rows": rows})
    if unreadable:
        report.problems.append(f"{unreadable} lines are not adbatch records (not merged)")
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
    info = scan_part(output)
    write_merged_manifest(
        output,
        entries,
        records=report.records,
        sha256=info.sha256,
        exactly_once=report.exactly_once,
    )
    return report


# -- stats of many shards --------------------------------------------------------------


def stats_to_dict(stats: RunStats) -> dict[str, Any]:
    """A shard's counters and latency histogram as JSON-able data (shard manifests, Ray)."""
    return {
        "events": stats.events,
        "ok": stats.ok,
        "failed": stats.failed,
        "invalid": stats.invalid,
        "blank_lines": stats.blank_lines,
        "unauthorized": stats.unauthorized,
        "statuses": {str(k): v for k, v in stats.statuses.items()},
        "errors": dict(stats.errors),
        "latency": stats.latency.to_dict(),
    }


def add_stats(total: RunStats, data: dict[str, Any]) -> None:
    """Add one shard's `stats_to_dict` into `total` (histograms merge by adding counts)."""
    for name in ("events", "ok", "failed", "invalid", "blank_lines", "unauthorized"):
        setattr(total, name, getattr(total, name) + int(data.get(name, 0)))
    total.statuses.update({int(k): int(v) for k, v in data.get("statuses", {}).items()})
    total.errors.update({str(k): int(v) for k, v in data.get("errors", {}).items()})
    total.latency.merge(Histogram.from_dict(data.get("latency", {})))
