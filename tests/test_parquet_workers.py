"""--workers N writes the records one process writes for odd Parquet rows (non-UTF-8
binary of every binary type, structs, maps, and the types JSON has no word for): the
parent hands out a bad row's Invalid as `parquet.items` makes it, id included, so a
--resume across the two finds the same input."""

from __future__ import annotations

import datetime as dt
import decimal
import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli.main import main
from engine.core.events import NO_DEFAULTS, Invalid
from engine.files.sources import read_items, read_units
from engine.multiproc.messages import Units

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TIMINGS = ("latency_ms", "sent_at")


def _one_in(n: int, at: int, value: Any, kind: Any) -> Any:
    """A column of `n` nulls but `value` at row `at`: each row is odd in one column."""
    return pa.array([value if i == at else None for i in range(n)], kind)


def odd_table() -> Any:
    odd = [
        ("blob", b"\xff", pa.binary()),
        ("blob_ok", b"ok", pa.binary()),
        ("lbin", b"\xfe", pa.large_binary()),
        ("fsb", b"\xff\xfe", pa.binary(2)),
        ("keywords_bin", [b"a", b"\xff"], pa.list_(pa.binary())),
        ("struct", {"a": 1}, pa.struct([("a", pa.int64())])),
        ("map", [("k", "v")], pa.map_(pa.string(), pa.string())),
        ("ts_tz", 1, pa.timestamp("ns", tz="Asia/Kolkata")),
        ("dec256", decimal.Decimal("12.50"), pa.decimal256(40, 2)),
        ("f16", 1.5, pa.float16()),
        ("nan", float("nan"), pa.float64()),
        ("u64", 2**64 - 1, pa.uint64()),
        ("duration", dt.timedelta(seconds=5), pa.duration("s")),
        ("time_ns", 1, pa.time64("ns")),
        ("date64", dt.date(2026, 1, 1), pa.date64()),
    ]
    n = len(odd) + 1  # the last row: bad bytes and no id
    columns: dict[str, Any] = {
        "id": pa.array([f"r{i}" for i in range(n - 1)] + [None], pa.string()),
        "criteo-partner-id": [1] * n,
        "retailer-visitor-id": ["v"] * n,
        "event-type": ["viewHome"] * n,
        "page-id": ["viewHome_API_desktop"] * n,
    }
    for at, (name, value, kind) in enumerate(odd):
        columns[name] = _one_in(n, at, value, kind)
    columns["blob"] = pa.array([b"\xff"] + [None] * (n - 2) + [b"\x80"], pa.binary())
    columns["dict"] = pa.array(["a"] * n).dictionary_encode()
    return pa.table(columns)


def _untimed(path: Path) -> list[bytes]:
    """Each record's bytes without its timings."""
    out = []
    for line in path.read_bytes().splitlines():
        record = orjson.loads(line)
        for key in TIMINGS:
            record.pop(key)
        out.append(orjson.dumps(record))
    return out


def test_odd_rows_are_the_same_items_after_crossing_the_pipe(tmp_path: Path) -> None:
    path = tmp_path / "odd.parquet"
    pq.write_table(odd_table(), path)
    items = list(read_items([str(path)]))
    parcel = pickle.loads(pickle.dumps(Units.of(list(read_units([str(path)])))))
    assert parcel.items(NO_DEFAULTS) == items
    assert isinstance(items[0], Invalid)
    assert items[0].id == "r0"


@pytest.mark.slow
def test_odd_parquet_rows_are_the_same_records_with_workers_2(tmp_path: Path) -> None:
    path = tmp_path / "odd.parquet"
    pq.write_table(odd_table(), path)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    run = ["run", "--mock", "--ordered", "--no-progress", str(path)]
    assert main([*run, "-o", str(one)]) == 1  # 1: some records are invalid
    assert main([*run, "--workers", "2", "-o", str(two)]) == 1
    records = [orjson.loads(r) for r in _untimed(one)]
    assert [r["id"] for r in records] == [f"r{i}" for i in range(len(records) - 1)] + [None]
    assert records[0]["error"] == "column 'blob' holds bytes that are not UTF-8"
    assert _untimed(two) == _untimed(one)
    # A --resume across the two, either way, finds every row answered (exit 3 was
    # "input changed" when the workers' records had no id).
    assert main([*run, "-o", str(two), "--resume"]) == 0
    assert main([*run, "--workers", "2", "-o", str(one), "--resume"]) == 0
    assert _untimed(two) == _untimed(one)
