"""Parquet column types under every nesting pyarrow can hold: a dictionary, a list of
any kind (list, large list, fixed-size list, list view, large list view) is read as its
plain counterpart is (README, Parquet), and a duration is refused by its row, naming the
column. Files made here with pyarrow, read by `read_items` and by `adbatch run`."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli.main import main
from engine.core.events import Event, Invalid
from engine.files.sources import read_items

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TS = dt.datetime(2026, 11, 29, 12, 0, 0, 500000)

#: (id, a value, its plain Arrow type, the text the README promises for it)
LEAVES = [
    ("binary", b"shoes", pa.binary(), "shoes"),
    ("large_binary", b"shoes", pa.large_binary(), "shoes"),
    ("fixed_binary", b"shoes", pa.binary(5), "shoes"),
    ("decimal", decimal.Decimal("12.50"), pa.decimal128(5, 2), "12.50"),
    ("float32", 0.1, pa.float32(), "0.1"),
    ("float16", 1.5, pa.float16(), "1.5"),
    ("timestamp", TS, pa.timestamp("ms"), "2026-11-29T12:00:00.500"),
    ("timestamp_tz", TS, pa.timestamp("us", tz="+01:00"), "2026-11-29T13:00:00.500000+0100"),
    ("date", dt.date(2026, 11, 29), pa.date32(), "2026-11-29"),
    ("time", dt.time(12, 30), pa.time64("us"), "12:30:00.000000"),
    ("string", "shoes", pa.string(), "shoes"),
    ("int", 7, pa.int64(), "7"),
]
if hasattr(pa, "binary_view"):
    LEAVES.append(("binary_view", b"shoes", pa.binary_view(), "shoes"))


def _dictionary(values: list[Any], leaf: Any) -> Any:
    return pa.array(values, leaf).dictionary_encode()


def _list_of_dictionaries(values: list[Any], leaf: Any) -> Any:
    flat = pa.array([v for row in values if row is not None for v in row], leaf)
    offsets = pa.array([0, 2, 2, 4], pa.int32())
    mask = pa.array([row is None for row in values])
    return pa.ListArray.from_arrays(offsets, flat.dictionary_encode(), mask=mask)


#: (id, whether it holds lists, how to make it from Python values and the leaf type)
NESTINGS: list[tuple[str, bool, Callable[[list[Any], Any], Any]]] = [
    ("dictionary", False, _dictionary),
    ("large_list", True, lambda v, t: pa.array(v, pa.large_list(t))),
    ("fixed_size_list", True, lambda v, t: pa.array(v, pa.list_(t, 2))),
    ("list_of_dictionaries", True, _list_of_dictionaries),
]
if hasattr(pa, "list_view"):
    NESTINGS.append(("list_view", True, lambda v, t: pa.array(v, pa.list_view(t))))
    NESTINGS.append(("large_list_view", True, lambda v, t: pa.array(v, pa.large_list_view(t))))


def _write(path: Path, column: Any, n: int) -> Path:
    pq.write_table(
        pa.table(
            {
                "id": [f"r{i}" for i in range(n)],
                "criteo-partner-id": [1] * n,
                "retailer-visitor-id": ["v"] * n,
                "event-type": ["viewHome"] * n,
                "page-id": ["viewHome_API_desktop"] * n,
                "x": column,
            }
        ),
        path,
    )
    return path


def _read(path: Path) -> list[tuple[str, str | None, dict[str, str] | None]]:
    return [
        (
            type(i).__name__,
            i.error if isinstance(i, Invalid) else None,
            dict(i.params) if isinstance(i, Event) else None,
        )
        for i in read_items([str(path)])
    ]


#: What pyarrow's writer cannot store as made: a dictionary of binary views (not written
#: at all), a dictionary of zoned timestamps (stored in UTC).
UNWRITTEN = {("binary_view", "dictionary"), ("binary_view", "list_of_dictionaries")}
UNWRITTEN |= {("timestamp_tz", "dictionary"), ("timestamp_tz", "list_of_dictionaries")}


@pytest.mark.parametrize(
    ("value", "leaf", "text", "lists", "make"),
    [
        pytest.param(*v[1:], *n[1:], id=f"{v[0]}-{n[0]}")
        for v in LEAVES
        for n in NESTINGS
        if (v[0], n[0]) not in UNWRITTEN
    ],
)
def test_every_nesting_reads_as_its_plain_counterpart(
    tmp_path: Path, value: Any, leaf: Any, text: str, lists: bool, make: Any
) -> None:
    values: list[Any] = [[value, value], None, [value, value]] if lists else [value, None, value]
    plain = pa.array(values, pa.list_(leaf) if lists else leaf)
    nested = make(values, leaf)
    assert nested.type != plain.type
    want = _read(_write(tmp_path / "plain.parquet", plain, 3))
    got = _read(_write(tmp_path / "nested.parquet", nested, 3))
    assert got == want
    first, second, _ = got
    assert first[2] is not None, first
    assert second[2] is not None, second
    assert first[2]["x"] == (f"{text}|{text}" if lists else text)
    assert "x" not in second[2]  # a null row leaves its key out


def test_list_views_and_fixed_size_lists_keep_rows_across_batches(tmp_path: Path) -> None:
    """5000 rows (three batches of 2048), nulls among them: every row keeps its own
    values, as the plain list gives them."""
    n = 5000
    values = [None if i % 7 == 3 else [0.1 * (i % 5), float(i)] for i in range(n)]
    plain = _read(_write(tmp_path / "plain.parquet", pa.array(values, pa.list_(pa.float32())), n))
    kinds = [pa.list_(pa.float32(), 2), pa.large_list(pa.float32())]
    if hasattr(pa, "list_view"):
        kinds.append(pa.list_view(pa.float32()))
    for kind in kinds:
        assert _read(_write(tmp_path / "nested.parquet", pa.array(values, kind), n)) == plain
    assert plain[1][2] is not None
    assert plain[1][2]["x"] == "0.1|1.0"


DURATION_ERROR = (
    "column 'x' holds a duration, which has no value in an event (a number of what?): "
    "store it as a number or text"
)


@pytest.mark.parametrize(
    "column",
    [
        pytest.param(pa.array([5, None, 1], pa.duration("s")), id="seconds"),
        pytest.param(pa.array([5, None, 1], pa.duration("ns")), id="nanoseconds"),
        pytest.param(pa.array([[5], None, [1]], pa.list_(pa.duration("ms"), 1)), id="in-list"),
    ],
)
def test_a_duration_makes_its_row_invalid_and_the_rest_is_read(tmp_path: Path, column: Any) -> None:
    got = _read(_write(tmp_path / "d.parquet", column, 3))
    # A null duration is an absent key; 1 ns (no timedelta holds it) ended the file.
    assert got[0] == ("Invalid", DURATION_ERROR, None)
    assert got[1][0] == "Event"
    assert got[2] == ("Invalid", DURATION_ERROR, None)


def _untimed(path: Path) -> list[dict[str, Any]]:
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    for record in records:
        del record["latency_ms"], record["sent_at"]
    return records


@pytest.mark.slow
def test_nested_columns_are_the_same_records_with_workers_2(tmp_path: Path) -> None:
    n = 6
    columns = {
        "keywords": _dictionary([b"shoes"] * n, pa.binary()),
        "price": pa.array([[decimal.Decimal("12.50")]] * n, pa.list_(pa.decimal128(5, 2), 1)),
        "ratio": pa.array([[0.1]] * n, pa.list_(pa.float32(), 1)),
        "wait": pa.array([None, 5] * (n // 2), pa.duration("ns")),
    }
    columns |= {
        "id": [f"r{i}" for i in range(n)],
        "criteo-partner-id": [1] * n,
        "retailer-visitor-id": ["v"] * n,
        "event-type": ["viewSearchResult"] * n,
        "page-id": ["viewSearchResult_API_desktop"] * n,
    }
    path = tmp_path / "nested.parquet"
    pq.write_table(pa.table(columns), path)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    run = ["run", "--mock", "--ordered", "--no-progress", str(path)]
    assert main([*run, "-o", str(one)]) == 1  # 1: the rows with a duration are invalid
    assert main([*run, "--workers", "2", "-o", str(two)]) == 1
    records = _untimed(one)
    assert [r["ok"] for r in records] == [True, False] * (n // 2)
    assert records[1]["error"] == DURATION_ERROR.replace("'x'", "'wait'")
    assert _untimed(two) == records
