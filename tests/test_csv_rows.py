"""CSV records are cut where Python's csv module cuts them (engine/files/csvrows.py).

A `"` opens a quoted field only at a field's start: an inch mark (`tv 55"`) is data and
ends no record; lines end at `\\n`, `\\r\\n` or a lone `\\r` (a CR-only file is rows); a
line end inside a quoted field is kept as written. Each reading is checked against
`csv.reader` over the same text, by table and by hypothesis.
"""

from __future__ import annotations

import csv
import gzip
import io
import subprocess
import sys
import tracemalloc
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core.events import Event, Invalid, ReadCounts
from engine.core.shard import ShardSpec
from engine.files.csvrows import csv_rows, quote_open
from engine.files.sources import read_items, read_units, unit_item

HEAD = "id,criteo-partner-id,retailer-visitor-id,event-type,page-id,keywords"
ROW = "1,v,viewSearchResult,viewSearchResult_API_desktop"
INCH = f'{HEAD}\nr1,{ROW},tv 55"\nr2,{ROW},shoes\nr3,{ROW},pizza 12"\nr4,{ROW},socks\n'


def ours(text: str, max_bytes: int = 1 << 20) -> list[dict[str, object] | str]:
    """Each record's fields, or its error."""
    rows = csv_rows(io.BytesIO(text.encode()), max_bytes, ReadCounts(), str)
    return [obj if obj is not None else error or "" for _, obj, error in rows]


def csv_module(text: str) -> list[dict[str, object] | str]:
    """What csv reads from the same text as a file (`newline=""`, as its docs say; a
    BOM taken off, as `utf-8-sig` does)."""
    header, *rows = [
        r for r in csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline="")) if r
    ]
    return [{k: v for k, v in zip(header, row, strict=True) if v} for row in rows]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(INCH, id="inch-marks"),
        pytest.param(INCH.replace("\n", "\r"), id="cr-only"),
        pytest.param(INCH.replace("\n", "\r\n"), id="crlf"),
        pytest.param('a,b\n1,"two\r\nlines"\n2,"x\ry"\r\n', id="line-ends-kept-in-quotes"),
        pytest.param('a,b\n1,"say ""hi"", then\ngo"\n2,x""y\n', id="doubled-quotes"),
        pytest.param('a,b,c\n1,5"x7",z\n2,"q",\n', id="quote-mid-field-then-comma"),
        pytest.param('a,b\n"1\n",""\n"",2\n', id="empty-quoted"),
        pytest.param("\ufeffa,b\r1,2\r\r3,4", id="bom-blank-no-final-end"),
    ],
)
def test_rows_as_csv_reads_them(text: str) -> None:
    assert ours(text) == csv_module(text)


def test_inch_marks_give_one_record_per_row() -> None:
    rows = ours(INCH)
    assert [r["id"] for r in rows if isinstance(r, dict)] == ["r1", "r2", "r3", "r4"]
    assert rows[0]["keywords"] == 'tv 55"'  # type: ignore[index]


def test_quote_rule() -> None:
    assert not quote_open('r1,tv 55"')
    assert quote_open('r1,"tv 55')
    assert not quote_open('r1,"tv ""55"""')
    assert quote_open('r1,"tv ""55""')
    assert quote_open('r1,"a"b,"c')  # the field after a bad close opens its own
    assert not quote_open('continued",x', quoted=True)
    assert quote_open("still inside, no end", quoted=True)


def test_bad_rows_stay_one_record_each() -> None:
    text = 'a,b\n1,"x"y\n2,ok\n3,"open\n' + "filler\n" * 20 + "4,fine\n"
    rows = ours(text, max_bytes=64)
    assert rows[0] == "CSV record cannot be read: ',' expected after '\"'"
    assert rows[1] == {"a": "2", "b": "ok"}
    # the unclosed quote is bounded: one record, and (as csv reads it) the rest of the
    # file is inside its quotes, `4,fine` too: the record says so
    assert rows[2:] == [
        "CSV record longer than 64 bytes: lines 4-25 skipped, to the end of the file:"
        " its quote never closes"
    ]
    assert ours('a,b\n1,"open\n2,x\n') == [
        "CSV record has an unclosed quote: lines 2-3 skipped, to the end of the file"
    ]


# A record whose quoted field runs past --max-line-bytes 64: its inner lines, one shaped
# like a row, must not become rows (the tester's reproducer).
QUOTED = (
    "id,event-type,criteo-partner-id,retailer-visitor-id,page-id\n"
    'r1,viewHome,1,v1,"a multi-line note\n'
    "second line of the note, still inside the quotes\n"
    "inner,viewHome,1,FROM-INSIDE-THE-QUOTES,h\n"
    'end of note"\n'
    "r2,viewHome,1,v2,h\n"
)


LONG = "CSV record longer than 64 bytes"
CLOSED = "skipped, up to its closing quote"
NEVER = "skipped, to the end of the file: its quote never closes"


def rows_at(text: str, max_bytes: int) -> list[tuple[int, object]]:
    """(first line, the row's id or its error) of each record."""
    rows = csv_rows(io.BytesIO(text.encode()), max_bytes, ReadCounts(), str)
    return [(line, obj["id"] if obj is not None else error) for line, obj, error in rows]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            QUOTED, [(2, f"{LONG}: lines 2-5 {CLOSED}"), (6, "r2")], id="inner-lines-skipped"
        ),
        pytest.param(
            'id\n"a\n' + "x,y\n" * 40 + '"\n\nr9\n',
            [(2, f"{LONG}: lines 2-43 {CLOSED}"), (45, "r9")],
            id="many-short-lines",
        ),
        pytest.param(
            'id,b\nr1,"start\n' + "x" * 500 + '\ninner,z\nend"\nr2,ok\n',
            [(2, f"{LONG}: lines 2-5 {CLOSED}"), (6, "r2")],
            id="over-long-line-inside-quotes",
        ),
        pytest.param(
            'id,b\nr1,"' + "x" * 500 + '\ninner,z\nend"\nr2,ok\n',
            [(2, f"line longer than 64 bytes: lines 2-4 {CLOSED}"), (5, "r2")],
            id="over-long-line-opens-quote",
        ),
        pytest.param(
            'id,b\nr1,"' + "x" * 500 + '""' + "y" * 500 + '"\nr2,ok\n',
            [(2, "line longer than 64 bytes"), (3, "r2")],
            id="over-long-line-closes-quote",
        ),
        pytest.param(
            'id,b\nr1,"' + "x" * 50 + "\n" + "y,y\n" * 30,
            [(2, f"{LONG}: lines 2-32 {NEVER}")],
            id="unclosed-to-the-end",
        ),
        pytest.param(
            'id,b\nr1,"' + "x" * 500 + "\n" + "y,y\n" * 30,
            [(2, f"line longer than 64 bytes: lines 2-32 {NEVER}")],
            id="over-long-line-unclosed-to-the-end",
        ),
        pytest.param(
            'id,b\nr1,"' + "x" * 500 + "\n",
            [(2, f"line longer than 64 bytes: line 2 {NEVER}")],
            id="over-long-last-line-unclosed",
        ),
        pytest.param(
            'id,b\nr1,"start\n' + "y" * 500 + '"\nr2,ok\n',
            [(2, f"{LONG}: lines 2-3 {CLOSED}"), (4, "r2")],
            id="over-long-line-closes-the-record",
        ),
    ],
)
def test_a_record_past_the_limit_is_one_record(text: str, expected: list[object]) -> None:
    assert rows_at(text, 64) == expected
    assert len(expected) == len(csv_module(text)) or "unclosed" in str(expected)


def test_skipped_quotes_keep_no_bytes() -> None:
    """A quoted field of 8 MB (short lines, then over-long ones) past a 64 KiB limit: one
    record, and the reader holds about the limit, not the field."""
    text = 'id,b\nr1,"' + "inner,line\n" * 100_000 + ("z" * (1 << 20) + "\n") * 4 + '"\nr2,ok\n'
    stream = io.BytesIO(text.encode())
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    rows = [(line, error) for line, _, error in csv_rows(stream, 1 << 16, ReadCounts(), str)]
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert rows == [
        (2, f"CSV record longer than {1 << 16} bytes: lines 2-100006 {CLOSED}"),
        (100_007, None),
    ]
    assert peak < 4 << 20


def test_workers_resume_and_shards_see_the_same_rows(tmp_path: Path) -> None:
    """--workers (units), --shard (items) and --resume (sources) read the same records."""
    path = tmp_path / "quoted.csv"
    path.write_text(QUOTED)
    items = list(read_items([str(path)], max_line_bytes=64))
    assert [(i.source, type(i)) for i in items] == [
        (f"{path}:2", Invalid),
        (f"{path}:6", Event),
    ]
    assert [unit_item(u) for u in read_units([str(path)], max_line_bytes=64)] == items
    shards = [
        i.source
        for n in range(3)
        for i in read_items([str(path)], max_line_bytes=64, shard=ShardSpec(n, 3))
    ]
    assert sorted(shards) == sorted(i.source for i in items)


# The reviewer's reproducer: a stray quote on row 1 past --max-line-bytes 64, then 1,000
# rows that csv reads inside its quotes. One record, and it names the lines it took.
STRAY = (
    "id,criteo-partner-id,retailer-visitor-id,event-type,page-id\n"
    'r0,1,v,viewHome,"stray quote opens here and runs past the limit of 64 bytes\n'
    + "".join(f"r{i},1,v,viewHome,viewHome_API_desktop\n" for i in range(1, 1001))
)


def test_an_unclosed_quote_says_which_lines_it_took(tmp_path: Path) -> None:
    path = tmp_path / "stray.csv"
    path.write_text(STRAY)
    cmd = [sys.executable, "-m", "engine", "run", "--dry-run", "--max-line-bytes", "64"]
    done = subprocess.run(
        [*cmd, "stray.csv", "-o", "o.jsonl"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr
    records = [orjson.loads(line) for line in (tmp_path / "o.jsonl").read_bytes().splitlines()]
    assert [(r["source"], r["error"]) for r in records] == [
        ("stray.csv:2", f"line longer than 64 bytes: lines 2-1002 {NEVER}")
    ]
    # --workers units, --shard and --resume read that one record too
    items = list(read_items([str(path)], max_line_bytes=64))
    assert [(i.source, i.error) for i in items if isinstance(i, Invalid)] == [
        (f"{path}:2", records[0]["error"])
    ]
    assert len(items) == 1
    assert [unit_item(u) for u in read_units([str(path)], max_line_bytes=64)] == items
    shards = [
        i
        for n in range(3)
        for i in read_items([str(path)], max_line_bytes=64, shard=ShardSpec(n, 3))
    ]
    assert shards == items


def test_a_read_error_inside_a_skipped_record_ends_it() -> None:
    """A .gz cut inside the quotes of a record past the limit: that record names the lines
    read, then the read error, on the line after."""
    data = gzip.compress(
        (
            'id,b\nr1,"'
            + "x" * 40
            + "\n"
            + "".join(f"y{i},{i * 2654435761 % 2**32:x}\n" for i in range(2000))
        ).encode()
    )
    stream = gzip.GzipFile(fileobj=io.BytesIO(data[: len(data) // 2]))
    rows = [(line, error) for line, _, error in csv_rows(stream, 64, ReadCounts(), repr)]
    assert len(rows) == 2
    (first, error), (cut_at, _) = rows
    assert first == 2
    assert error == f"{LONG}: lines 2-{cut_at - 1} skipped, up to the read error"
    assert cut_at > 3


# A header row that cannot be read is no data row's loss: each row after it is an error
# naming why (a data row taken as the header went without a record, the tester's bug).
HROW = "r{},1,v,viewHome,p\n"
HDATA = "".join(HROW.format(n) for n in (1, 2, 3))
HBAD = "CSV header on line 1 cannot be read"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            'id,criteo-partner-id,retailer-visitor-id,event-type,"page"-id\n' + HDATA,
            [(n, f"{HBAD}: ',' expected after '\"'") for n in (2, 3, 4)],
            id="bad-quote",
        ),
        pytest.param(
            "id,criteo-partner-id,retailer-visitor-id,event-type,page-id\udcff\n" + HDATA,
            [(n, f"{HBAD}: line is not valid UTF-8") for n in (2, 3, 4)],
            id="not-utf-8",
        ),
        pytest.param(
            "id," + "h" * 100 + "\n" + HDATA,
            [(n, f"{HBAD}: line longer than 64 bytes") for n in (2, 3, 4)],
            id="over-long",
        ),
        pytest.param(
            '\n"id",' + "h" * 100 + "\n" + HDATA,
            [(n, f"{HBAD.replace('1', '2')}: line longer than 64 bytes") for n in (3, 4, 5)],
            id="after-a-blank-line",
        ),
        pytest.param(
            'id,"page-id' + ",x" * 40 + "\n" + HDATA.replace("p\nr3", 'p"\nr3'),
            [
                (1, f"line longer than 64 bytes: lines 1-3 {CLOSED}"),
                (4, f"{HBAD}: line longer than 64 bytes: lines 1-3 {CLOSED}"),
            ],
            id="stray-quote-takes-rows",
        ),
        pytest.param(
            'id,"page-id\n' + HDATA,
            [(1, f"{LONG}: lines 1-4 {NEVER}")],
            id="stray-quote-never-closes",
        ),
    ],
)
def test_an_unreadable_header_takes_no_row(text: str, expected: list[object]) -> None:
    data = io.BytesIO(text.encode("utf-8", "surrogateescape"))
    rows = [(line, error) for line, _, error in csv_rows(data, 64, ReadCounts(), str)]
    assert rows == expected


def test_a_header_cut_by_a_read_error_is_one_record() -> None:
    """A .gz cut inside its header: the read error's record, not silence."""
    data = gzip.compress(("id," + "".join(f"h{i:x}," for i in range(9000)) + "z\nr1\n").encode())
    stream = gzip.GzipFile(fileobj=io.BytesIO(data[: len(data) // 2]))
    rows = [(line, error) for line, _, error in csv_rows(stream, 1 << 20, ReadCounts(), repr)]
    assert len(rows) == 1
    assert rows[0][0] == 1
    assert "EOFError" in str(rows[0][1])


def test_an_unreadable_header_reads_the_same_everywhere(tmp_path: Path) -> None:
    """The CLI, --workers (units), --shard and --resume (sources): one record per data row,
    each naming the header, none sent."""
    path = tmp_path / "badhdr.csv"
    path.write_text('id,criteo-partner-id,retailer-visitor-id,event-type,"page"-id\n' + HDATA)
    cmd = [sys.executable, "-m", "engine", "run", "--dry-run", "badhdr.csv", "-o", "o.jsonl"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    records = [orjson.loads(line) for line in (tmp_path / "o.jsonl").read_bytes().splitlines()]
    assert sorted((r["source"], r["error"]) for r in records) == [
        (f"badhdr.csv:{n}", f"{HBAD}: ',' expected after '\"'") for n in (2, 3, 4)
    ]
    items = list(read_items([str(path)]))
    assert [(i.source, type(i)) for i in items] == [(f"{path}:{n}", Invalid) for n in (2, 3, 4)]
    assert [unit_item(u) for u in read_units([str(path)])] == items
    shards = [i for n in range(2) for i in read_items([str(path)], shard=ShardSpec(n, 2))]
    assert sorted(shards, key=lambda i: i.seq) == items


# A multi-line record's size is all its bytes, its closing line and the line ends inside its
# quotes included: 194 bytes went through at --max-line-bytes 100 (only the open lines counted).
@pytest.mark.parametrize(
    ("value", "fits"),
    [
        pytest.param("a" * 40 + "\n" + "b" * 54, True, id="exactly-the-limit"),
        pytest.param("a" * 40 + "\n" + "b" * 55, False, id="one-byte-over-on-the-closing-line"),
        pytest.param("a" * 40 + "\r\n" + "b" * 54, False, id="crlf-inside-counts-two"),
        pytest.param("a" * 70 + "\n" + "b" * 80, False, id="each-line-under-the-limit"),
        pytest.param("\u00e9" * 21 + "\n" + "b" * 53, False, id="utf-8-bytes-not-characters"),
    ],
)
def test_a_multi_line_record_counts_every_byte(value: str, fits: bool) -> None:
    text = f'id,b\nr1,"{value}"\nr2,x\n'
    record = len(f'r1,"{value}"'.encode())
    assert (record <= 100) is fits
    if fits:
        assert rows_at(text, 100) == [(2, "r1"), (4, "r2")]
        assert ours(text, 100) == csv_module(text)
    else:
        assert rows_at(text, 100) == [
            (2, f"CSV record longer than 100 bytes: lines 2-3 {CLOSED}"),
            (4, "r2"),
        ]


def _cell(value: str) -> str:
    """`value` as a CSV cell: bare when csv reads it back bare, else quoted."""
    if any(c in value for c in ",\r\n") or value.startswith('"'):
        return '"' + value.replace('"', '""') + '"'
    return value


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(st.text(alphabet='ab ",\r\n\u00e9', max_size=8), min_size=2, max_size=2)),
    st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1),
)
def test_any_rows_read_as_csv_reads_them(rows: list[list[str]], ends: list[str]) -> None:
    lines = ["id,a,b"] + [",".join(map(_cell, [f"r{i}", *row])) for i, row in enumerate(rows)]
    text = "".join(line + ends[i % len(ends)] for i, line in enumerate(lines))
    assert ours(text) == csv_module(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.text(alphabet='ab ",\n', max_size=30), min_size=2, max_size=2)))
def test_any_record_past_the_limit_is_one(rows: list[list[str]]) -> None:
    """At a small limit, each record csv reads is one of ours, from the same line: the ones
    that fit read the same, the others are errors; a line inside quotes is never a row."""
    lines = ["id,a,b"] + [",".join(map(_cell, [f"r{i}", *row])) for i, row in enumerate(rows)]
    text = "".join(line + "\n" for line in lines)
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    theirs, first = [], 2
    for row in reader:
        theirs.append((first, row[0]))
        first = reader.line_num + 1
    got = rows_at(text, 24)
    assert [line for line, _ in got] == [line for line, _ in theirs]
    file_lines = text.split("\n")
    ends = [*(line for line, _ in theirs), len(file_lines)][1:]  # each record's next line
    for (first, ours_id), next_first, (_, their_id) in zip(got, ends, theirs, strict=True):
        size = len("\n".join(file_lines[first - 1 : next_first - 1]))  # the record's bytes
        if size <= 24:  # fits: read as csv reads it; past the limit, by a byte or twice it: not
            assert ours_id == their_id, (size, text)
        else:
            assert "longer than 24 bytes" in str(ours_id), (size, text)


def test_workers_read_the_same_records(tmp_path: Path) -> None:
    """A --workers parent reads CSV as units: the same items as one process."""
    path = tmp_path / "inch.csv"
    path.write_text(INCH.replace("\n", "\r"), newline="")
    items = list(read_items([str(path)]))
    assert [i.source for i in items] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert all(isinstance(i, Event) for i in items)
    assert [unit_item(u) for u in read_units([str(path)])] == items


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "workers-2"])
def test_inch_marks_end_to_end(tmp_path: Path, workers: list[str]) -> None:
    (tmp_path / "inch.csv").write_text(INCH)
    cmd = [sys.executable, "-m", "engine", "run", "--mock", *workers, "inch.csv", "-o", "o.jsonl"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    records = [orjson.loads(line) for line in (tmp_path / "o.jsonl").read_bytes().splitlines()]
    assert sorted(r["id"] for r in records) == ["r1", "r2", "r3", "r4"]
    assert "4 events" in done.stderr
