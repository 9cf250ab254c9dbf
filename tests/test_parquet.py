"""Parquet inputs (issue 17 item 3): columns as event keys, row groups as shards, bounded
memory, bad files, resume and --workers; files made here with pyarrow."""

from __future__ import annotations

import datetime as dt
import decimal
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import config_for, exactly_once, pageview_rows, pageview_table, read_records
from s3server import S3

import engine
from engine.cli.main import main
from engine.core.events import Event, Invalid, ReadCounts
from engine.core.shard import ShardSpec
from engine.distributed.merge import merge_outputs
from engine.files import parquet
from engine.files.sources import input_size, read_items, read_units, unit_item
from engine.mock import MockHandle
from engine.runtime.progress import RunFigures, RunView
from engine.runtime.watch import input_progress

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _events(n: int, start: int = 0) -> dict[str, list[Any]]:
    return {
        "id": [f"ev-{i}" for i in range(start, start + n)],
        "criteo-partner-id": [1] * n,
        "retailer-visitor-id": [f"rv-{i}" for i in range(start, start + n)],
        "event-type": ["viewHome"] * n,
        "page-id": ["viewHome_API_desktop"] * n,
    }


def write_parquet(path: Path, columns: dict[str, Any], *, group_rows: int | None = None) -> Path:
    table = pa.table(columns) if not isinstance(columns, pa.Table) else columns
    pq.write_table(table, path, row_group_size=group_rows)
    return path


# -- columns -> event keys ----------------------------------------------------------------


@pytest.mark.slow
def test_columns_are_the_keys_lists_nulls_and_types_as_documented(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "types.parquet",
        {
            "id": ["a", "b", "c"],
            "criteo-partner-id": pa.array([7, None, 7], pa.int64()),
            "retailer-visitor-id": ["v", "v", "v"],
            "event-type": ["viewItem", "viewItem", "viewItem"],
            "page-id": ["p", "p", "p"],
            "item": [["sku1", "sku2"], ["x"], ["y"]],
            "price": pa.array(
                [decimal.Decimal("12.50"), decimal.Decimal("1"), None], pa.decimal128(8, 2)
            ),
            "timestamp": pa.array(
                [dt.datetime(2026, 11, 29, 12, 0, 0, 500000), None, dt.datetime(2026, 1, 1)],
                pa.timestamp("ms", tz="UTC"),
            ),
            "day": pa.array([dt.date(2026, 11, 29)] * 3),
            "ratio": pa.array([0.1, None, 2.5], pa.float32()),
            "nolog": [True, False, None],
            "blob": [b"text", None, b"\xff"],
        },
    )
    items = list(read_items([str(path)], defaults=parquet.NO_DEFAULTS))
    first, second, third = items
    assert isinstance(first, Event)
    params = dict(first.params)
    assert params["item"] == "sku1|sku2"
    assert params["price"] == "12.50"
    assert params["day"] == "2026-11-29"
    assert params["ratio"] == "0.1"
    assert params["nolog"] == "1"
    assert params["blob"] == "text"
    assert first.timestamp == dt.datetime(2026, 11, 29, 12, 0, 0, 500000, dt.UTC).timestamp()
    assert (first.seq, first.source, first.id) == (0, f"{path}:1", "a")
    # A null is an absent key: viewItem needs criteo-partner-id, and row 2 has none.
    assert isinstance(second, Invalid)
    assert "criteo-partner-id" in second.error
    assert (second.seq, second.source, second.id) == (1, f"{path}:2", "b")
    # Binary that is not UTF-8 makes its row invalid, naming the column.
    assert isinstance(third, Invalid)
    assert "'blob'" in third.error
    assert third.source == f"{path}:3"


def test_a_row_is_an_event_exactly_as_the_same_jsonl_object(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {
            "id": "x",
            "criteo-partner-id": 1,
            "retailer-visitor-id": "r",
            "event-type": "viewHome",
            "page-id": "p",
            "keywords": "a&b+c/d|e",
            "user-agent": "ua\tbad",
        },
        {
            "id": "y",
            "criteo-partner-id": 1,
            "retailer-visitor-id": "r",
            "event-type": "viewHome",
            "page-id": "p",
            "keywords": "ok",
            "user-agent": "Mozilla/5.0",
        },
        {
            "id": "z",
            "criteo-partner-id": 1,
            "retailer-visitor-id": "r",
            "event-type": "viewSearchResult",
            "page-id": "p",
            "keywords": None,
            "user-agent": None,
        },
    ]
    jsonl = tmp_path / "same.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    path = write_parquet(tmp_path / "same.parquet", pa.Table.from_pylist(rows))
    from_jsonl = list(read_items([str(jsonl)]))
    from_parquet = list(read_items([str(path)]))
    strip = [
        (type(i).__name__, i.seq, i.id, getattr(i, "error", None), getattr(i, "params", None))
        for i in from_jsonl
    ]
    assert [
        (type(i).__name__, i.seq, i.id, getattr(i, "error", None), getattr(i, "params", None))
        for i in from_parquet
    ] == strip
    assert isinstance(from_parquet[0], Invalid)  # the tab in user-agent
    assert isinstance(from_parquet[2], Invalid)  # viewSearchResult without keywords


def test_seq_goes_on_across_inputs_and_units_match_items(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps({"id": f"j{i}"}) + b"\n" for i in range(3)))
    path = write_parquet(tmp_path / "b.parquet", _events(5), group_rows=2)
    inputs = [str(jsonl), str(path), str(jsonl)]
    items = list(read_items(inputs))
    assert [i.seq for i in items] == list(range(11))
    assert [i.source for i in items[3:8]] == [f"{path}:{r}" for r in range(1, 6)]
    units = [unit_item(u) for u in read_units(inputs)]
    assert units == items


# -- shards by row group ------------------------------------------------------------------


def test_three_shards_read_only_their_row_groups_and_cover_the_file(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "seven.parquet", _events(70), group_rows=10)
    assert parquet.group_rows(str(path)) == [10] * 7
    seen: list[int] = []
    for index in range(3):
        counts = ReadCounts()
        items = list(read_items([str(path)], counts=counts, shard=ShardSpec(index, 3)))
        groups = {i.seq // 10 for i in items}
        assert len(items) == 10 * len(groups)  # whole row groups only
        assert all(parquet.group_owner(str(path), g, 3) == index for g in groups)
        assert counts.records == 70  # every row counts, read or not
        # A shard reads only its own groups: it counts their part of the file, not all.
        share = os.path.getsize(path) * len(groups) / 7
        assert share * 0.8 < counts.bytes_read < share * 1.2
        seen += [i.seq for i in items]
    assert sorted(seen) == list(range(70))


@pytest.mark.parametrize("reader", [read_items, read_units])
def test_a_whole_file_read_counts_its_size_footer_and_all(tmp_path: Path, reader: Any) -> None:
    """The progress compares the bytes read with the file's size (footer and metadata
    included): a finished file reads 100%, not the column chunks' ~60%."""
    path = write_parquet(tmp_path / "seven.parquet", _events(700), group_rows=100)
    counts = ReadCounts()
    progress = input_progress(counts, (str(path),))
    rows = reader([str(path)], counts=counts)
    for _ in range(150):  # past the first group
        next(rows)
    assert 0 < counts.bytes_read < os.path.getsize(path)
    assert sum(1 for _ in rows) == 550
    assert counts.bytes_read == os.path.getsize(path) == input_size([str(path)])
    assert progress(700, 700).fraction == 1.0  # type: ignore[union-attr]


def test_a_file_of_no_row_group_counts_its_size(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "none.parquet", pa.table(_events(0)))
    counts = ReadCounts()
    assert list(read_items([str(path)], counts=counts)) == []
    assert counts.bytes_read == os.path.getsize(path)


def test_a_shards_total_is_its_share_and_it_reaches_it(tmp_path: Path) -> None:
    """Each shard counts its groups' part of the file and skips the others': its
    progress ends at 100% of its share, and the shares add up to the file."""
    path = write_parquet(tmp_path / "seven.parquet", _events(700), group_rows=100)
    size = os.path.getsize(path)
    read = []
    for index in range(3):
        counts = ReadCounts()
        progress = input_progress(counts, (str(path),))
        done = len(list(read_items([str(path)], counts=counts, shard=ShardSpec(index, 3))))
        assert 0 < counts.bytes_read < size
        assert counts.bytes_read + counts.bytes_skipped == size
        assert progress(done, done).fraction == 1.0  # type: ignore[union-attr]
        figures = RunFigures(done, done)
        view = RunView(lambda: figures, counts, input_size([str(path)]))  # noqa: B023
        assert "100%" in view(1.0)[0].text  # type: ignore[union-attr]
        read.append(counts.bytes_read)
    assert sum(read) == size


def test_shards_by_id_read_every_row_and_keep_their_ids(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "seven.parquet", _events(70), group_rows=10)
    ids: list[str | None] = []
    for index in range(3):
        counts = ReadCounts()
        items = list(read_items([str(path)], counts=counts, shard=ShardSpec(index, 3, "id")))
        assert counts.records == 70
        assert all(ShardSpec(index, 3, "id").owns(i.seq, i.id) for i in items)
        ids += [i.id for i in items]
    assert sorted(ids) == sorted(f"ev-{i}" for i in range(70))  # type: ignore[type-var]


@pytest.mark.anyio
async def test_three_shards_end_to_end_merge_exactly_once(mock: MockHandle, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "seven.parquet", _events(35), group_rows=5)
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_bytes(
        b"".join(orjson.dumps(r) + b"\n" for r in pa.table(_events(4, 35)).to_pylist())
    )
    outs = [tmp_path / f"part-{i}.jsonl" for i in range(3)]
    for i, out in enumerate(outs):
        await engine.run(config_for(mock, [path, jsonl], out, concurrency=8, shard=(i, 3)))
    parts = [read_records(out) for out in outs]
    assert all(parts)
    exactly_once([r for part in parts for r in part], 39)
    assert mock.state.delivery_requests == 39
    report = merge_outputs([str(o) for o in outs], str(tmp_path / "merged.jsonl"))
    assert report.exactly_once, report.problems


def test_runs_of_row_groups_are_ray_shards_with_their_own_seq(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "seven.parquet", _events(70), group_rows=10)
    sources = []
    for start, end in [(0, 2), (2, 5), (5, 7)]:  # distributed/plan.py cuts such runs
        items = list(parquet.range_items(str(path), start, end))
        assert [i.seq for i in items] == list(range(10 * (end - start)))  # a shard's own
        sources += [i.source for i in items]
    assert sources == [f"{path}:{r}" for r in range(1, 71)]


# -- memory -------------------------------------------------------------------------------


def test_memory_stays_bounded_for_a_file_much_bigger_than_a_batch(tmp_path: Path) -> None:
    n = 24_000
    table = pa.table(
        {**_events(n), "keywords": [f"running shoes size {i % 50}" * 4 for i in range(n)]}
    )
    path = write_parquet(tmp_path / "big.parquet", table, group_rows=4_000)
    whole = table.nbytes
    del table
    arrow_peak = 0
    base = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        count = 0
        last = None
        for row in parquet.rows(str(path)):
            count += 1
            last = row
            if count % 500 == 0:
                arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - base)
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == n
    assert last is not None
    assert last.obj is not None
    assert last.obj["id"] == f"ev-{n - 1}"
    # The whole table is ~4 MB in Arrow and ~30 MB as Python dicts; a read holds one
    # row group's columns and one batch of rows.
    assert arrow_peak < whole / 3, (arrow_peak, whole)
    assert python_peak < 8 << 20, python_peak


# -- bad files ----------------------------------------------------------------------------


def _corrupt_group(path: Path, group: int) -> None:
    data = bytearray(path.read_bytes())
    column = pq.ParquetFile(path).metadata.row_group(group).column(1)
    start = column.data_page_offset + 20
    data[start : start + 150] = b"A" * 150
    path.write_bytes(bytes(data))


def test_a_corrupt_row_group_is_one_record_and_the_rest_of_the_file_is_unread(
    tmp_path: Path,
) -> None:
    bad = write_parquet(tmp_path / "bad.parquet", _events(40), group_rows=10)
    _corrupt_group(bad, 2)
    good = write_parquet(tmp_path / "good.parquet", _events(3))
    items = list(read_items([str(bad), str(good)]))
    assert [i.source for i in items[:21]] == [f"{bad}:{r}" for r in range(1, 22)]
    error = items[20]
    assert isinstance(error, Invalid)
    assert "the rest of this file is unread" in error.error
    assert [i.source for i in items[21:]] == [f"{good}:{r}" for r in range(1, 4)]
    assert [i.seq for i in items] == list(range(24))


@pytest.mark.parametrize(
    ("content", "name"),
    [
        pytest.param(b"hello", "junk.parquet", id="not-parquet"),
        pytest.param(None, "cut.parquet", id="truncated"),
    ],
)
def test_an_unreadable_footer_is_one_line_and_exit_2(
    content: bytes | None, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    if content is None:
        write_parquet(path, _events(100), group_rows=10)
        path.write_bytes(path.read_bytes()[:-200])
    else:
        path.write_bytes(content)
    out = tmp_path / "out.jsonl"
    assert main(["run", "--mock", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"cannot read Parquet input {path}" in err[0]
    assert "Traceback" not in err[0]


def test_format_parquet_reads_a_file_of_any_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_parquet(tmp_path / "events.data", _events(4))
    out = tmp_path / "out.jsonl"
    assert main(["run", "--mock", "--input-format", "parquet", str(path), "-o", str(out)]) == 0
    records = read_records(out)
    exactly_once(records, 4)
    assert {r["source"] for r in records} == {f"{path}:{r}" for r in range(1, 5)}
    capsys.readouterr()
    assert main(["run", "--mock", "--format", "parquet", "-", "-o", str(out)]) == 2
    assert "stdin" in capsys.readouterr().err


def test_without_pyarrow_one_line_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_parquet(tmp_path / "e.parquet", _events(2))
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what `import` sees when it is absent
    assert main(["run", "--mock", str(path), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["adbatch: error: Parquet input needs pyarrow: pip install 'adbatch[parquet]'"]


# -- the CLI, resume, --workers ----------------------------------------------------------


def test_run_on_the_mock_answers_every_row(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "pv.parquet", _events(50), group_rows=16)
    out = tmp_path / "ads.jsonl"
    assert main(["run", "--mock", str(path), "-o", str(out), "--ordered"]) == 0
    records = read_records(out)
    assert [r["source"] for r in records] == [f"{path}:{r}" for r in range(1, 51)]
    assert [r["id"] for r in records] == [f"ev-{i}" for i in range(50)]
    assert all(r["ok"] for r in records)


@pytest.mark.anyio
async def test_resume_sends_only_the_rows_the_output_does_not_answer(
    mock: MockHandle, tmp_path: Path
) -> None:
    path = write_parquet(tmp_path / "pv.parquet", _events(60), group_rows=7)
    out = tmp_path / "out.jsonl"
    await engine.run(config_for(mock, path, out, concurrency=8))
    lines = out.read_bytes().splitlines(keepends=True)
    kept = lines[::2]
    out.write_bytes(b"".join(kept))
    before = mock.state.delivery_requests
    summary = await engine.run(config_for(mock, path, out, concurrency=8, resume=True))
    assert mock.state.delivery_requests - before == 60 - len(kept)
    assert summary.resumed == len(kept)
    exactly_once(read_records(out), 60)


@pytest.mark.slow
def test_workers_2_read_parquet_as_one_process_does(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "pv.parquet", _events(300), group_rows=64)
    out = tmp_path / "ads.jsonl"
    assert main(["run", "--mock", "--workers", "2", str(path), "-o", str(out)]) == 0
    records = read_records(out)
    exactly_once(records, 300)
    assert {r["source"] for r in records} == {f"{path}:{r}" for r in range(1, 301)}


@pytest.mark.slow
def test_run_reads_s3_parquet_objects_by_ranges(s3: S3, tmp_path: Path) -> None:
    s3.bucket("lake")
    for day in range(2):
        local = write_parquet(tmp_path / f"{day}.parquet", _events(30, 30 * day), group_rows=8)
        s3.put(f"s3://lake/pv/day-{day}/part-0.parquet", local.read_bytes())
    out = tmp_path / "ads.jsonl"
    assert main(["run", "--mock", "s3://lake/pv/day-*/part-0.parquet", "-o", str(out)]) == 0
    records = read_records(out)
    exactly_once(records, 60)
    assert all(r["ok"] for r in records)
    sources = {r["source"] for r in records}
    assert "s3://lake/pv/day-0/part-0.parquet:1" in sources
    assert "s3://lake/pv/day-1/part-0.parquet:30" in sources
    # A shard reads its own row groups of each object.
    part = tmp_path / "part-1.jsonl"
    assert main(["run", "--mock", "s3://lake/pv/", "--shard", "1/3", "-o", str(part)]) == 0
    assert 0 < len(read_records(part)) < 60


README_COMMANDS = [
    "pip install '.[parquet]' && adbatch run pageviews.parquet -o ads.jsonl",
    "adbatch run --shard 1/3 pageviews.parquet -o part-1.jsonl",
]


@pytest.mark.slow
def test_the_readme_parquet_commands_run(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    table = pageview_table(pageview_rows())
    pq.write_table(table, tmp_path / "pageviews.parquet", row_group_size=8)
    for command in README_COMMANDS:
        assert command in readme
        # The install is .ci/run's; the embedded mock instead of the real endpoint.
        line = command.removeprefix("pip install '.[parquet]' && ")
        line = line.replace("adbatch run", f"{sys.executable} -m engine run --mock")
        done = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=120,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    records = read_records(tmp_path / "ads.jsonl")
    exactly_once(records, table.num_rows)
    assert {r["source"] for r in records} == {
        f"pageviews.parquet:{r}" for r in range(1, table.num_rows + 1)
    }
    part = read_records(tmp_path / "part-1.jsonl")
    assert 0 < len(part) < table.num_rows
    assert {r["seq"] // 8 for r in part} == {
        g for g in range(5) if parquet.group_owner("pageviews.parquet", g, 3) == 1
    }
