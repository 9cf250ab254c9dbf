"""Hostile input: every reader survives any bytes, with bounded memory and clear records.

Property tests (hypothesis) of the JSONL, CSV and gzip readers, then one test per hostile
input of issue 4: binary garbage, a 100 MB line, invalid UTF-8, deep nesting, wrong
types, empty files, ragged CSV rows, a truncated .gz.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import read_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import api
from engine.config import Config
from engine.core.events import Event, Invalid, Item, ReadCounts
from engine.core.records import invalid
from engine.files.sources import read_items

ROOT = Path(__file__).resolve().parent.parent
VALID = {
    "criteo-partner-id": 12345,
    "retailer-visitor-id": "rv-1",
    "event-type": "viewHome",
    "page-id": "viewHome_API_desktop",
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_bytes_as(data: bytes, suffix: str, **options: Any) -> tuple[list[Item], ReadCounts]:
    """All items of `data` written to a temporary file named *suffix."""
    fd, name = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        counts = ReadCounts()
        return list(read_items([name], counts=counts, **options)), counts
    finally:
        os.unlink(name)


def physical_lines(data: bytes) -> int:
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def check_items(items: list[Item], suffix: str) -> None:
    assert [item.seq for item in items] == list(range(len(items)))
    for item in items:
        assert isinstance(item, Event | Invalid)
        name, _, line = item.source.rpartition(":")
        assert name.endswith(suffix)
        assert int(line) >= 1
        if isinstance(item, Invalid):
            assert item.error
            # An error may quote the input (a key with a line break): still one JSONL line.
            assert b"\n" not in invalid(item).to_json()


# -- properties -----------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=600))
def test_jsonl_reader_any_bytes_one_item_per_line(data: bytes) -> None:
    items, counts = read_bytes_as(data, ".jsonl", max_line_bytes=64)
    check_items(items, ".jsonl")
    assert len(items) + counts.blank_lines == physical_lines(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@pytest.mark.slow
@settings(FUZZ, max_examples=40)
@given(st.lists(st.dictionaries(st.text(max_size=20), json_values, max_size=6), max_size=8))
def test_jsonl_reader_any_objects(rows: list[dict[str, Any]]) -> None:
    # json (not orjson): integers past 64 bits and lone surrogates (escaped) included.
    data = b"".join(json.dumps({**VALID, **row}).encode() + b"\n" for row in rows)
    items, counts = read_bytes_as(data, ".jsonl")
    check_items(items, ".jsonl")
    assert len(items) == len(rows)
    assert counts.blank_lines == 0


@FUZZ
@given(st.binary(max_size=600))
def test_csv_reader_any_bytes(data: bytes) -> None:
    items, counts = read_bytes_as(data, ".csv", max_line_bytes=64)
    check_items(items, ".csv")
    # The header takes a line; a quoted field may span lines: never more items than lines
    # (a CSV line ends at \n, \r\n or a lone \r, as csv reads it).
    assert len(items) + counts.blank_lines <= len(data.splitlines())


csv_cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@FUZZ
@given(st.lists(st.lists(csv_cells, min_size=1, max_size=6), min_size=1, max_size=8))
def test_csv_reader_any_rows(rows: list[list[str]]) -> None:
    import csv
    import io

    text = io.StringIO()
    # csv's own line end: its writer quotes a value holding \r or \n only when that is
    # part of the line end, and csv reads a lone \r as one (tests/test_csv_rows.py).
    csv.writer(text).writerows([["a", "b", "c"], *rows])
    items, _ = read_bytes_as(text.getvalue().encode(), ".csv")
    check_items(items, ".csv")
    assert len(items) <= len(rows)  # blank rows are skipped, nothing is split in two


@FUZZ
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=400))
def test_gzip_reader_any_content_any_cut(data: bytes, cut: int) -> None:
    packed = gzip.compress(data)
    for suffix in (".jsonl.gz", ".csv.gz"):
        items, _ = read_bytes_as(packed[: max(2, cut)], suffix, max_line_bytes=64)
        check_items(items, suffix)


# -- one test per hostile input ---------------------------------------------------------------


def test_binary_garbage(tmp_path: Path) -> None:
    garbage = random.Random(4).randbytes(256 * 1024)
    items, counts = read_bytes_as(garbage, ".jsonl")
    check_items(items, ".jsonl")
    assert len(items) + counts.blank_lines == physical_lines(garbage)
    assert all(isinstance(item, Invalid) for item in items)


def _cli(*args: str, cwd: Path) -> tuple[int, str, Any]:
    """Run the CLI; returns exit code, stderr, and the child's own resource usage."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    err = cwd / "stderr.txt"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "run", "--no-progress", *args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            cwd=cwd,
        )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err.read_text(), usage


def test_binary_garbage_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "garbage.jsonl").write_bytes(random.Random(5).randbytes(64 * 1024))
    rc, stderr, _ = _cli("--dry-run", "-o", "out.jsonl", "garbage.jsonl", cwd=tmp_path)
    assert rc == 1  # invalid records: a failed run, not a crash
    assert "Traceback" not in stderr
    records = read_records(tmp_path / "out.jsonl")
    assert records
    assert all(r["error_kind"] == "invalid" for r in records)


def _write_huge_line(path: Path, size: int) -> None:
    chunk = b"x" * (1 << 20)
    with path.open("wb") as f:
        f.write(b'{"id": "huge", "junk": "')
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.write(b'"}\n')
        f.write(orjson.dumps({**VALID, "id": "after"}) + b"\n")


@pytest.mark.slow
def test_100mb_line_memory_stays_bounded(tmp_path: Path) -> None:
    _write_huge_line(tmp_path / "huge.jsonl", 100 << 20)
    (tmp_path / "small.jsonl").write_bytes(orjson.dumps({**VALID, "id": "a"}) + b"\n")
    rc, stderr, base = _cli("--dry-run", "-o", "base.jsonl", "small.jsonl", cwd=tmp_path)
    assert rc == 0, stderr
    rc, stderr, usage = _cli("--dry-run", "-o", "out.jsonl", "huge.jsonl", cwd=tmp_path)
    assert "Traceback" not in stderr
    assert rc == 1
    records = read_records(tmp_path / "out.jsonl")
    assert [r["source"] for r in records] == ["huge.jsonl:1", "huge.jsonl:2"]
    assert records[0]["error"] == "line longer than 1048576 bytes"
    assert records[1]["ok"] is True
    # ru_maxrss is in KiB on Linux: the huge run may use a few MB more, never the 100 MB.
    grown_mb = (usage.ru_maxrss - base.ru_maxrss) / 1024
    assert grown_mb < 30, f"memory grew by {grown_mb:.0f} MB"


def test_line_cap_is_configurable(tmp_path: Path) -> None:
    line = orjson.dumps({**VALID, "id": "x" * 200})
    items, _ = read_bytes_as(line + b"\n", ".jsonl", max_line_bytes=128)
    assert isinstance(items[0], Invalid)
    assert items[0].error == "line longer than 128 bytes"
    items, _ = read_bytes_as(line + b"\n", ".jsonl", max_line_bytes=4096)
    assert isinstance(items[0], Event)


@pytest.mark.parametrize(
    ("suffix", "data", "error"),
    [
        pytest.param(".jsonl", b'{"id": "\xff\xfe"}\n', "not valid UTF-8", id="jsonl"),
        pytest.param(".csv", b"id,event-type\n\xff\xfe,viewHome\n", "not valid UTF-8", id="csv"),
        pytest.param(".jsonl", b'{"id": "\xed\xa0\x80"}\n', "not valid UTF-8", id="surrogate"),
    ],
)
def test_invalid_utf8(suffix: str, data: bytes, error: str) -> None:
    items, _ = read_bytes_as(data, suffix)
    (item,) = items
    assert isinstance(item, Invalid)
    assert error in item.error


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"[" * 200_000, id="arrays"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="objects"),
        pytest.param(b'{"price": ' + b"[" * 5000 + b"]" * 5000 + b"}", id="nested-value"),
    ],
)
def test_deep_nesting(data: bytes) -> None:
    items, _ = read_bytes_as(data + b"\n", ".jsonl", max_line_bytes=1 << 20)
    (item,) = items
    assert isinstance(item, Invalid)
    assert "nested too deeply" in item.error or "price" in item.error


@pytest.mark.parametrize(
    ("row", "error"),
    [
        pytest.param({"price": {"a": 1}}, "parameter price", id="object"),
        pytest.param({"price": [[1]]}, "parameter price", id="list-of-lists"),
        pytest.param({"criteo-partner-id": "abc"}, "criteo-partner-id", id="partner-text"),
        pytest.param({"timestamp": "yesterday"}, "timestamp", id="timestamp"),
        pytest.param({"quantity": {"n": 2}}, "parameter quantity", id="object-quantity"),
    ],
)
def test_wrong_types(row: dict[str, object], error: str) -> None:
    base = {**VALID, "event-type": "viewItem", "item": "sku-1", "price": 9.5}
    items, _ = read_bytes_as(orjson.dumps({**base, **row}), ".jsonl")
    (item,) = items
    assert isinstance(item, Invalid)
    assert error in item.error


@pytest.mark.parametrize(
    ("name", "data"),
    [
        pytest.param("empty.jsonl", b"", id="jsonl"),
        pytest.param("empty.csv", b"", id="csv"),
        pytest.param("empty.jsonl.gz", gzip.compress(b""), id="gzip"),
        pytest.param("blank.jsonl", b"\n\n  \n", id="blank-lines"),
        pytest.param("header-only.csv", b"id,event-type\n", id="csv-header-only"),
    ],
)
@pytest.mark.anyio
async def test_empty_files(tmp_path: Path, name: str, data: bytes) -> None:
    (tmp_path / name).write_bytes(data)
    out = tmp_path / "out.jsonl"
    config = Config(inputs=(str(tmp_path / name),), output=str(out), dry_run=True)
    summary = await api.run(config)
    assert (summary.events, summary.exit_code) == (0, 0)
    assert "0 events" in summary.line()
    assert out.read_bytes() == b""


def test_ragged_csv() -> None:
    data = (
        b"criteo-partner-id,retailer-visitor-id,event-type,page-id\n"
        b"1,rv-1,viewHome,viewHome_API_desktop\n"
        b"1,rv-2,viewHome\n"
        b"1,rv-3,viewHome,viewHome_API_desktop,extra\n"
        b'1,"rv-4\n'
    )
    items, _ = read_bytes_as(data, ".csv")
    check_items(items, ".csv")
    assert [type(i).__name__ for i in items] == ["Event", "Invalid", "Invalid", "Invalid"]
    assert isinstance(items[1], Invalid)
    assert "3 fields, the header has 4" in items[1].error
    assert "5 fields, the header has 4" in items[2].error  # type: ignore[union-attr]
    assert "unclosed quote" in items[3].error  # type: ignore[union-attr]
    assert [i.source.rpartition(":")[2] for i in items] == ["2", "3", "4", "5"]


def _lines(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield orjson.dumps({**VALID, "id": f"e{i}", "retailer-visitor-id": f"rv-{i}"}) + b"\n"


def test_truncated_gzip(tmp_path: Path) -> None:
    packed = gzip.compress(b"".join(_lines(5000)))
    items, _ = read_bytes_as(packed[: len(packed) // 2], ".jsonl.gz")
    check_items(items, ".jsonl.gz")
    *good, last = items
    assert len(good) > 100
    assert all(isinstance(i, Event) for i in good)
    assert isinstance(last, Invalid)
    assert "compressed input is truncated or corrupt" in last.error
    # The CLI says so in a record and exits 1, without a traceback.
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    rc, stderr, _ = _cli("--dry-run", "-o", "out.jsonl", "cut.jsonl.gz", cwd=tmp_path)
    assert rc == 1
    assert "Traceback" not in stderr
