"""`adbatch report` costs what its records hold, not the span of their times: an output
finished by a `--resume` days later, or a record with an absurd `sent_at` or
`latency_ms` (1e300, 1e308, negative), neither crashes the report nor blows it up."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.core.records import parse_record
from engine.core.series import FAR, MAX_POINTS, Figures, Series
from engine.core.stats import Histogram

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_796_000_000.0
DAY = 86_400.0
BIG = 1.7976931348623157e308  # the largest float


def record(seq: int, **changes: Any) -> dict[str, Any]:
    """One output record as `adbatch run` writes it (`changes` replace its fields)."""
    return {
        "seq": seq,
        "id": f"e{seq}",
        "source": f"in.jsonl:{seq + 1}",
        "status": 200,
        "ok": True,
        "attempts": 1,
        "latency_ms": 5.0,
        "sent_at": T0 + seq * 0.25,
        "error": None,
        "response": {"status": "OK"},
        "error_kind": None,
        "scheduled_at": None,
        "retries": [],
        **changes,
    }


def figures_of(records: list[dict[str, Any]]) -> Figures:
    acc = Figures()
    for r in records:
        line = parse_record(orjson.dumps(r))
        assert line is not None
        acc.add_record(line)
    return acc


# -- the series: bounded by its point cap, whatever the span --------------------------------


@pytest.mark.parametrize(
    "times",
    [
        pytest.param([0.0, DAY], id="a-day-apart"),
        pytest.param([0.0, 7 * DAY, 3.5 * DAY], id="a-week-apart"),
        pytest.param([0.0, 0.5, 1e300], id="1e300"),
        pytest.param([0.0, -1e300, 12.0], id="minus-1e300-before-the-origin"),
        pytest.param([*range(500), 10 * DAY], id="dense-then-days-later"),
    ],
)
def test_series_points_stay_within_the_cap_whatever_the_span(times: list[float]) -> None:
    series = Series(origin=0.0, max_points=MAX_POINTS)
    for t in times:
        series.at(t).calls += 1
    points = series.points()
    assert len(points) <= MAX_POINTS
    assert sum(b.calls for _, b in points) == len(times)
    assert math.log2(series.width).is_integer()  # still 1 s doubled: merges stay exact
    assert [t for t, _ in points] == sorted(t for t, _ in points)


def test_series_within_the_cap_keeps_its_seconds_and_gaps() -> None:
    series = Series(origin=0.0, max_points=10)
    for t in (0.0, 3.0, 9.5):  # ten seconds: the cap, gaps shown as empty points
        series.at(t).calls += 1
    assert series.width == 1.0
    assert [b.calls for _, b in series.points()] == [1, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    series.at(10.0).calls += 1  # the eleventh second: the width doubles
    assert series.width == 2.0
    assert [b.calls for _, b in series.points()] == [1, 1, 0, 0, 1, 1]


def test_series_take_then_far_times_stay_bounded() -> None:
    series = Series(origin=0.0, max_points=10)
    for t in range(8):
        series.at(float(t)).calls += 1
    assert len(series.take(6.0)) == 6  # what is left spans seconds 6 and 7 only
    series.at(15.0).calls += 1  # within 10 points of what is left: no coarsening
    assert series.width == 1.0
    assert [b.calls for _, b in series.points()] == [1, 1] + [0] * 7 + [1]


# -- the histogram: an absurd latency is a value, not an OverflowError ----------------------


@pytest.mark.parametrize(
    ("values", "low", "high"),
    [
        pytest.param([1e308], 1e308, 1e308, id="1e308"),
        pytest.param([5.0, BIG, 7.0], 5.0, BIG, id="largest-float"),
        pytest.param([-1e308, 5.0], -1e308, 5.0, id="minus-1e308"),
        pytest.param([1e300, 2e300], 1e300, 2e300, id="top-bucket-shared"),
    ],
)
def test_histogram_takes_absurd_latencies(values: list[float], low: float, high: float) -> None:
    one, batch = Histogram(), Histogram()
    for v in values:
        one.record(v)
    batch.record_all(values)
    for h in (one, batch):
        assert h.count == len(values)
        assert (h.min, h.max) == (low, high)
        assert h.percentile(100) == high
        p99 = h.percentile(99)
        assert p99 is not None
        assert low <= p99 <= high
    assert one.bins() == batch.bins()


def test_histogram_read_with_an_absurd_bucket_index() -> None:
    """A --series file's histogram naming a bucket past any float (e**(1e8 * 0.01))."""
    h = Histogram.from_dict({"buckets": {"5": 1, "100000000": 2}, "count": 3, "max": 9.0})
    assert h.count == 3
    assert h.percentile(99) == 9.0


def test_histogram_of_ordinary_latencies_is_unchanged() -> None:
    h = Histogram()
    h.record_all([0.5, 12.0, 250.0, 30_000.0])
    assert h.percentile(50) == pytest.approx(12.0, rel=0.01)
    assert h.percentile(99) == pytest.approx(30_000.0, rel=0.01)


# -- the figures of hostile records ---------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param({"sent_at": 1e300}, id="sent_at-1e300"),
        pytest.param({"sent_at": -1e300}, id="sent_at-minus-1e300"),
        pytest.param({"latency_ms": 1e308}, id="latency-1e308"),
        pytest.param({"latency_ms": BIG, "sent_at": BIG}, id="both-the-largest-float"),
        pytest.param({"scheduled_at": 1e300}, id="scheduled_at-1e300"),
        pytest.param({"sent_at": BIG, "scheduled_at": -BIG}, id="correction-overflows"),
        pytest.param({"sent_at": 2 * FAR}, id="epoch-milliseconds-by-mistake"),
    ],
)
def test_an_absurd_record_is_counted_but_placed_on_no_second(hostile: dict[str, Any]) -> None:
    records = [record(i) for i in range(8)] + [record(8, **hostile)]
    data = figures_of(records).to_dict()
    plain = figures_of(records[:8]).to_dict()
    assert data["events"] == data["sent"] == data["ok"] == 9
    assert data["latency_ms"]["max"] == max(5.0, hostile.get("latency_ms", 5.0))
    # The timeline is the eight ordinary records', exactly.
    for key in ("start", "elapsed_s", "series_width_s", "series", "sends"):
        assert data[key] == plain[key], key
    assert sum(p["ok"] for p in data["series"]) == 8


@pytest.mark.parametrize("negative", [-5.0, -1e308], ids=["minus-5", "minus-1e308"])
def test_a_negative_latency_does_not_crash(negative: float) -> None:
    data = figures_of([record(0), record(1, latency_ms=negative)]).to_dict()
    assert data["latency_ms"]["min"] == negative
    assert data["sent"] == 2


def test_resumed_days_later_is_a_few_coarse_points() -> None:
    """Two runs of one output a week apart: every record on the timeline, at most
    MAX_POINTS points, as the run itself would have drawn a week."""
    records = [record(i) for i in range(100)]
    records += [record(100 + i, sent_at=T0 + 7 * DAY + i) for i in range(100)]
    data = figures_of(records).to_dict()
    assert len(data["series"]) <= MAX_POINTS
    assert len(data["sends"]) <= MAX_POINTS
    assert sum(p["ok"] for p in data["series"]) == 200
    assert data["series_width_s"] >= 7 * DAY / MAX_POINTS
    assert data["elapsed_s"] == pytest.approx(7 * DAY + 99 + 0.005)


# -- the command ----------------------------------------------------------------------------

#: `adbatch report` under a 1 GiB address space: a report that grew with the span of
#: its records (GBs for a week, all memory for 1e300) dies here instead of the machine.
LIMITED = (
    "import resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
    "from engine.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_cli_report_of_a_hostile_output_file(tmp_path: Path) -> None:
    rows = [record(i) for i in range(20)]
    rows += [
        record(20, sent_at=T0 + 7 * DAY),  # a --resume a week later
        record(21, sent_at=1e300),
        record(22, latency_ms=1e308),
        record(23, latency_ms=-1e308),
        record(24, sent_at=-1e300),
        record(25, sent_at=BIG, scheduled_at=-BIG, latency_ms=BIG),
    ]
    out = tmp_path / "out.jsonl"
    raw = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    out.write_bytes(raw)
    summary, html = tmp_path / "s.json", tmp_path / "r.html"
    argv = ["report", str(out), "--summary", str(summary), "--html", str(html)]
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, *argv],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""
    assert "records   26  (sent 26, ok 26, failed 0" in done.stdout
    # 1e308 ms is written as 1.000e+308, not as 309 digits.
    assert not re.search(r"\d{20}", done.stdout), done.stdout
    data = orjson.loads(summary.read_bytes())
    assert len(data["series"]) <= MAX_POINTS
    assert len(data["sends"]) <= MAX_POINTS
    assert sum(p["ok"] for p in data["series"]) == 21  # the 20 and the week-later one
    assert data["latency_ms"]["max"] == BIG
    assert html.read_text().count("<svg") == 6
    assert out.read_bytes() == raw  # the records stay what they are


@pytest.mark.parametrize(
    ("first", "shown"),
    [
        pytest.param(3e11, "start 3e+11 s from the epoch", id="after-year-9999"),
        pytest.param(-7e10, "start -7e+10 s from the epoch", id="before-year-1"),
    ],
)
def test_html_report_of_a_run_that_starts_where_no_date_is(
    tmp_path: Path, first: float, shown: str
) -> None:
    """The HTML report says when the run started: a start no calendar date holds is
    shown in seconds, not a traceback (`year 11476 is out of range`)."""
    out, html = tmp_path / "out.jsonl", tmp_path / "r.html"
    out.write_bytes(orjson.dumps(record(0, sent_at=first)) + b"\n")
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, "report", str(out), "--html", str(html)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shown in html.read_text()


def test_text_report_shows_a_server_s_control_characters_as_escapes(tmp_path: Path) -> None:
    """A server's error text that holds ESC [ 2 J (clear the screen), an OSC title or a
    BEL is printed with those as escapes: it can neither clear nor forge a line."""
    hostile = "HTTP 500: boom \x1b[2J\x1b[H\x1b]0;owned\x07 \x9b31m FAKE: all ok"
    out = tmp_path / "out.jsonl"
    out.write_bytes(
        orjson.dumps(record(0, ok=False, status=500, error=hostile, error_kind="http_500")) + b"\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, "report", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "boom \\x1b[2J\\x1b[H\\x1b]0;owned\\x07 \\x9b31m FAKE" in done.stdout
    assert not any(ch in done.stdout for ch in "\x1b\x07\x9b")


def test_cli_report_comparing_two_hostile_output_files(tmp_path: Path) -> None:
    """`adbatch report A B` writes an absurd figure in exponent form, in its text and its
    HTML, as the one-run report does: not hundreds of digits that widen the table."""
    a, b, html = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "ab.html"
    a.write_bytes(b"".join(orjson.dumps(record(i)) + b"\n" for i in range(5)))
    hostile = [record(i) for i in range(4)] + [record(4, latency_ms=1e300)]
    b.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in hostile))
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, "report", str(a), str(b), "--html", str(html)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "e+300" in done.stdout, done.stdout
    assert not re.search(r"\d{20}", done.stdout), done.stdout
    assert not re.search(r"\d{20}", html.read_text())
