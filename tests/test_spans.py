"""files/spans.py: a local JSONL file cut into spans reads back exactly as a whole-file
read (`sources.read_items`): the same items, seqs, sources, blank-line count and bytes
read, whatever the lines, the span size and the read block."""

from __future__ import annotations

import errno
import io
import itertools
import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import config_for, read_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import run
from engine.core.events import NO_DEFAULTS, Invalid, Item, ReadCounts
from engine.files.sources import read_items
from engine.files.spans import (
    HeldFiles,
    Span,
    _Cutter,
    _scan,
    _shared,
    can_span,
    input_spans,
    span_items,
    spans,
)
from engine.mock import MockHandle

_LINES = st.one_of(
    st.sampled_from(
        [
            b"",
            b" ",
            b"\t \x0b\x0c",
            b"\r",
            b"  \r",
            b"\xef\xbb\xbf",
            b"\xef\xbb\xbf ",
            b'\xef\xbb\xbf{"id":"bom"}',
            b'{"id":"a","pageType":"home"}',
            b'{"id":"crlf"}\r',
            b"not json",
            b"\xff\xfe",
            b"[1,2]",
            b" " * 40,  # over the max below: a record, not a blank
            b'{"id":"' + b"x" * 60 + b'"}',
        ]
    ),
    st.binary(max_size=50),
)


def _whole(path: Path, max_line_bytes: int) -> tuple[list[Item], ReadCounts]:
    counts = ReadCounts()
    items = list(read_items([str(path)], max_line_bytes=max_line_bytes, counts=counts))
    return items, counts


def _by_spans(
    path: Path, size: int, max_line_bytes: int, block: int, first_seq: int = 0
) -> tuple[list[Item], ReadCounts, list[Span], int]:
    counts = ReadCounts()
    whole = Span(str(path), str(path), 0, -1, 1, first_seq, 0)
    cut = spans(whole, size, max_line_bytes=max_line_bytes, counts=counts, block=block)
    got: list[Span] = []
    while True:
        try:
            got.append(next(cut))
        except StopIteration as end:
            after = int(end.value)
            break
    items = [i for s in got for i in span_items(s, NO_DEFAULTS, max_line_bytes=max_line_bytes)]
    return items, counts, got, after


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(_LINES, max_size=30),
    newline_at_end=st.booleans(),
    size=st.integers(1, 7),
    block=st.integers(1, 70),
)
def test_spans_read_as_the_whole_file(
    tmp_path: Path, lines: list[bytes], newline_at_end: bool, size: int, block: int
) -> None:
    data = b"\n".join(lines) + (b"\n" if newline_at_end and lines else b"")
    path = tmp_path / "events.jsonl"
    path.write_bytes(data)
    expected, expected_counts = _whole(path, 32)
    items, counts, cut, after = _by_spans(path, size, 32, block)
    assert items == expected
    assert counts.blank_lines == expected_counts.blank_lines
    assert counts.bytes_read == len(data)
    assert after == len(expected)
    assert all(0 < s.count <= size for s in cut)
    assert [seq for s in cut for seq in s.seqs] == list(range(len(expected)))
    # spans tile the file: each starts where the one before ended
    assert all(a.end == b.start for a, b in itertools.pairwise(cut))


def test_a_span_of_a_span_splits_it(tmp_path: Path) -> None:
    """A short span (the end of an input) is cut again to share it among workers."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(b'{"id":"e%d"}\n\n' % i for i in range(10)))
    (first,) = list(
        spans(Span(str(path), "in", 0, -1, 1, 5, 0), 100, max_line_bytes=99, counts=ReadCounts())
    )
    assert (first.first_seq, first.count) == (5, 10)
    parts = list(spans(first, 4, max_line_bytes=99, counts=ReadCounts()))
    assert [p.count for p in parts] == [4, 4, 2]
    items = [i for p in parts for i in span_items(p, NO_DEFAULTS, max_line_bytes=99)]
    assert [(i.seq, i.source, i.id) for i in items] == [
        (5 + k, f"in:{2 * k + 1}", f"e{k}") for k in range(10)
    ]


def _events(path: Path, n: int, tag: str = "e") -> None:
    path.write_bytes(b"".join(b'{"id":"%s%d"}\n' % (tag.encode(), i) for i in range(n)))


def _cut(path: Path, size: int, parts: int = 1, held: HeldFiles | None = None) -> list[Span]:
    keep = held if held is not None else HeldFiles()
    got = list(
        input_spans([str(path)], size, parts, max_line_bytes=999, counts=ReadCounts(), held=keep)
    )
    if held is None:
        keep.close()
    return got


def _read(cut: list[Span]) -> list[Item]:
    return [i for span in cut for i in span_items(span, NO_DEFAULTS, max_line_bytes=999)]


@pytest.mark.parametrize("change", ["renamed over", "deleted"])
def test_a_worker_reads_the_file_the_parent_numbered(tmp_path: Path, change: str) -> None:
    """As one process reads on from the file it opened: the parent holds it open and the
    worker reads through the parent's descriptor."""
    path, other = tmp_path / "events.jsonl", tmp_path / "other.jsonl"
    _events(path, 6)
    _events(other, 6, tag="x")
    held = HeldFiles()
    try:
        cut = _cut(path, 4, held=held)
        if change == "deleted":
            path.unlink()
        else:
            other.replace(path)
        assert [i.id for i in _read(cut)] == [f"e{k}" for k in range(6)]
    finally:
        held.close()


def test_a_replaced_file_read_by_its_path_is_refused(tmp_path: Path) -> None:
    """Without the parent's descriptor (`held` cannot be opened), the path is read only
    when it is still the same file: another one's lines are never sent as these."""
    path, other = tmp_path / "events.jsonl", tmp_path / "other.jsonl"
    _events(path, 5)
    _events(other, 5, tag="x")
    cut = [replace(span, held=str(tmp_path / "gone")) for span in _cut(path, 10)]
    assert [i.id for i in _read(cut)] == [f"e{k}" for k in range(5)]  # the same file
    other.replace(path)
    items = _read(cut)
    assert [i.seq for i in items] == list(range(5))
    assert all(isinstance(i, Invalid) and "replaced during the run" in i.error for i in items)
    assert [i.source for i in items] == [f"{path}:{k}" for k in range(1, 6)]


def test_a_file_cut_short_still_answers_each_record(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    _events(path, 6)
    cut = _cut(path, 10)
    path.write_bytes(b'{"id":"e0"}\n{"id":"e1"}\n')
    items = _read(cut)
    assert [i.seq for i in items] == list(range(6))
    lost = [i for i in items if isinstance(i, Invalid) and "unread" in i.error]
    assert [i.seq for i in lost] == [2, 3, 4, 5]
    assert [i.source for i in lost] == [f"{path}:{k}" for k in range(3, 7)]  # counted on


@pytest.mark.parametrize("change", ["shorter", "rewritten"])
def test_a_short_span_shared_out_keeps_its_numbers(tmp_path: Path, change: str) -> None:
    """The end of an input is read again to share it among the workers: if the file
    changed in between, the parts still hold exactly the records first numbered."""
    path = tmp_path / "events.jsonl"
    _events(path, 9)
    held = HeldFiles()
    try:
        whole = held.hold(str(path))
        (span,) = list(spans(whole, 100, max_line_bytes=999, counts=ReadCounts()))
        if change == "shorter":
            os.truncate(path, 4 * len(b'{"id":"e0"}\n'))
        else:  # the same bytes, more (shorter) lines
            with path.open("r+b") as f:
                f.write(b'{"a":1}\n' * 12)
        parts = list(_shared(span, 3, 999))
        assert [seq for p in parts for seq in p.seqs] == list(range(9))
        assert [i.seq for i in _read(parts)] == list(range(9))
    finally:
        held.close()


def _hostile_input(path: Path, n: int) -> None:
    good = (
        b'{"id":"e%d","criteo-partner-id":1,"retailer-visitor-id":"v",'
        b'"event-type":"viewHome","page-id":"viewHome_API_desktop"}'
    )
    other = [b"", b" \t", b"{not json", b"", b"x" * 300, b"\r"]  # by i % 7, from 1
    lines = [b"\xef\xbb\xbf" + good % 0]
    for i in range(1, n):
        kind = i % 7
        event = good % i + (b"\r" if kind == 4 else b"")
        lines.append(event if kind in (0, 4) else other[kind - 1])
    path.write_bytes(b"\n".join(lines))  # no \n at the end


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("ordered", [False, True])
async def test_workers_read_spans_as_one_process_reads_the_file(
    mock: MockHandle, tmp_path: Path, ordered: bool
) -> None:
    """Blank and whitespace lines, a BOM, CRLF, over-long lines, no final newline, two
    inputs: `--workers 2` numbers and answers every record as one process does."""
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _hostile_input(first, 700)
    _hostile_input(second, 40)
    inputs = [first, second]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    options = {"max_line_bytes": 200, "ordered": ordered}
    s1 = await run(config_for(mock, inputs, one, **options))
    s2 = await run(config_for(mock, inputs, two, workers=2, concurrency=8, **options))
    r1, r2 = read_records(one), read_records(two)
    stable = ("seq", "id", "source", "status", "ok", "error")
    key = lambda r: tuple(r[k] for k in stable)  # noqa: E731
    assert sorted(map(key, r2)) == sorted(map(key, r1))
    if ordered:
        assert [r["seq"] for r in r2] == list(range(len(r1)))
    assert (s2.events, s2.blank_lines, s2.invalid) == (s1.events, s1.blank_lines, s1.invalid)
    assert s1.blank_lines > 0
    assert s1.invalid > 0


class _FailsAfter(io.RawIOBase):
    """A file whose reads fail with EIO after `good` bytes (a disk error, which no test
    can cause on a real file)."""

    def __init__(self, data: bytes, good: int) -> None:
        self._data, self._good, self._at = data, good, 0

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._at = offset
        return offset

    def read(self, size: int = -1) -> bytes:
        if self._at >= self._good:
            raise OSError(errno.EIO, "Input/output error")
        chunk = self._data[self._at : min(self._good, self._at + size)]
        self._at += len(chunk)
        return chunk


def test_a_read_error_ends_the_file_with_one_record_as_in_one_process(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    _events(path, 6)
    data = path.read_bytes()
    whole = Span(str(path), "in", 0, -1, 1, 0, 0)
    cutter = _Cutter(whole, 4, 999, ReadCounts())
    scan = _scan(_FailsAfter(data, 3 * 12 + 5), whole, cutter, 7)  # type: ignore[arg-type]
    got: list[Span] = []
    while True:
        try:
            got.append(next(scan))
        except StopIteration as end:
            failed = end.value
            break
    assert failed is not None
    assert "input could not be read" in failed
    assert "the rest of this file is unread" in failed
    got.append(cutter.cut())
    got.append(cutter.failed(failed))
    items = _read(got)
    assert [i.seq for i in items] == [0, 1, 2, 3]  # three lines read, then the error's
    assert [i.id for i in items[:3]] == ["e0", "e1", "e2"]
    error = items[3]
    assert isinstance(error, Invalid)
    assert (error.source, error.error) == ("in:4", failed)


def test_every_input_is_held_and_read_right_when_its_path_is_reused(tmp_path: Path) -> None:
    """Each input stays open until the run ends: one deleted and written again at the
    same path (where the filesystem would give the new file the freed inode) is still
    read as the parent numbered it, never as the new file."""
    paths = []
    for k in range(20):
        path = tmp_path / f"in{k}.jsonl"
        _events(path, 3, tag=f"f{k}-")
        paths.append(path)
    held = HeldFiles()
    try:
        cut = list(
            input_spans(
                [str(p) for p in paths], 2, 1, max_line_bytes=999, counts=ReadCounts(), held=held
            )
        )
        assert len(held._fds) == len(paths)
        for k in range(0, 20, 2):
            paths[k].unlink()
            _events(paths[k], 5, tag="NEW-")
        ids = [i.id for i in _read(cut)]
        assert ids == [f"f{k}-{j}" for k in range(len(paths)) for j in range(3)]
    finally:
        held.close()


def test_spans_only_when_every_input_can_be_held(tmp_path: Path) -> None:
    paths = []
    for k in range(3):
        path = tmp_path / f"in{k}.jsonl"
        _events(path, 1)
        paths.append(str(path))
    assert can_span(paths, "auto", None)
    assert can_span(paths, "auto", 3)
    assert not can_span(paths, "auto", 2)  # the parent reads them itself (Units)
    assert not can_span([*paths, str(tmp_path / "x.csv")], "auto", None)
