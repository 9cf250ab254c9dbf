"""`adbatch report` on hostile files: a --series file's values of the wrong type, an
endless line, a file whose every record names its own error kind.

The promise: one line (exit 2) for a header adbatch cannot read, a bad line counted and
skipped as a torn one is, never a traceback; memory bounded by neither a line's length
nor the number of distinct statuses and kinds.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli.main import main
from engine.cli.report import LINE_LIMIT, cmd_report
from engine.core.buckets import BUCKET_KEYS, OTHER_KEY, RUN_KEYS
from engine.core.records import Result
from engine.core.serieslog import SecondLog
from engine.errors import EngineError
from engine.report.lines import BoundedLines

T0 = 1_790_000_000.0
SCRIPT = "</script><script>alert(1)</script>"
#: The adversarial tester's values (/tmp/adv_load/fuzz_series.py), NaN included.
WEIRD: list[Any] = [None, "x", SCRIPT, -1, 1e308, -1e308, 10**400, [], {}, [1, 2],
                    {"a": SCRIPT}, True, 0, float("nan")]  # fmt: skip
HISTOGRAM_WEIRD: list[Any] = [*WEIRD, {"-5": 1}, {"99999999": 1}, {"x": 1}, {"1": -5},
                              {"1": 1e308}, {"1": "a"}, {"²": 1}]  # fmt: skip


def _result(at: float, *, status: int | None = 200, kind: str | None = None) -> Result:
    ok = status == 200
    return Result(
        seq=0, id=None, source="t", status=status, ok=ok, attempts=1, latency_ms=4.0 + at,
        sent_at=T0 + at + 0.01, error=None if ok else "bad", response=None,
        error_kind=None if ok else kind or f"http_{status}", scheduled_at=T0 + at,
    )  # fmt: skip


def _series_lines() -> list[dict[str, Any]]:
    """A --series file as `load` writes it: header, both views of 3 seconds, end."""
    log = SecondLog(origin=T0)
    for at in (0.1, 0.5, 1.2, 1.7, 2.3):
        log.add(_result(at))
    log.add(_result(1.5, status=503))
    head = {"adbatch_series": 1, "start": T0, "mode": "load", "target": "127.0.0.1:1",
            "inputs": ["e.jsonl"], "options": {"rate": 2.0}}  # fmt: skip
    points = [orjson.loads(orjson.dumps(x, option=orjson.OPT_NON_STR_KEYS)) for x in log.take_all()]
    return [head, *points, {"end": True, "elapsed_s": 3.0, "events": 6, "invalid": 0}]


BASE = _series_lines()
POINT = 3  # a "scheduled" line with calls, latencies, statuses and kinds


def _set(where: int, path: tuple[str, ...], value: Any) -> list[dict[str, Any]]:
    lines = copy.deepcopy(BASE)
    target = lines[where]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return lines


#: The tester's table: every field of the header, of a second's line, of its histogram
#: and of the end line, set to each weird value. Name -> lines.
TABLE: dict[str, dict[str, list[dict[str, Any]]]] = {
    "header": {
        f"{key}={w!r}"[:60]: _set(0, (key,), w)
        for key in ("start", "mode", "target", "inputs", "options", "adbatch_series")
        for w in WEIRD
    },
    "point": {f"{key}={w!r}"[:60]: _set(POINT, (key,), w) for key in BASE[POINT] for w in WEIRD},
    "histogram": {
        f"{key}={w!r}"[:60]: _set(POINT, ("latency", key), w)
        for key in ("buckets", "count", "total", "min", "max")
        for w in HISTOGRAM_WEIRD
    },
    "end": {
        f"{key}={w!r}"[:60]: _set(-1, (key,), w)
        for key in ("elapsed_s", "events", "invalid", "end")
        for w in WEIRD
    },
}


def _random_cases(n: int, *, seed: int = 20261130) -> dict[str, list[dict[str, Any]]]:
    """`n` files with 1-4 weird values each, anywhere in any line (a fixed seed)."""
    rng = random.Random(seed)
    cases = {}
    for i in range(n):
        lines = copy.deepcopy(BASE)
        for _ in range(rng.randint(1, 4)):
            line = rng.choice(lines)
            target = line
            if "latency" in line and rng.random() < 0.4:
                target = line[rng.choice(["latency", "corrected"])]
            key = rng.choice([*target, "statuses", "kinds", "by", "t"])
            target[key] = rng.choice(HISTOGRAM_WEIRD)
        cases[f"random-{i}"] = lines
    return cases


TABLE["random"] = _random_cases(100)
#: What the tester saw as tracebacks: now one line for the header (2), a line skipped (0).
EXPECTED = {
    ("header", "options='x'"): 2,
    ("header", "inputs=True"): 2,
    ("header", f"start={10**400!r}"[:60]): 2,
    ("point", "calls=1e+308"): 0,
    ("histogram", "buckets=[]"): 0,
    ("histogram", "count=1e+308"): 0,
    ("end", "elapsed_s='x'"): 0,
    ("end", "invalid=1e+308"): 0,
}


def _write(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(x, allow_nan=True) + "\n" for x in lines))


def _report(
    tmp_path: Path, lines: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """`adbatch report s.series --html --summary`: (exit code, stdout, stderr). The
    command's handler is called as main calls it (main's parser costs as much again)."""
    series, html, summary = tmp_path / "s.series", tmp_path / "r.html", tmp_path / "r.json"
    for p in (html, summary):
        p.unlink(missing_ok=True)
    _write(series, lines)
    args = argparse.Namespace(files=[str(series)], html=str(html), summary=str(summary),
                              title=None)  # fmt: skip
    try:
        code = cmd_report(args)
        error = ""
    except EngineError as exc:  # as main says it
        code, error = exc.exit_code, f"adbatch: error: {exc}\n"
    out, err = capsys.readouterr()
    err += error
    if code == 0:
        orjson.loads(summary.read_bytes())  # whole, and JSON
        assert "</script><script>" not in html.read_text()
    return code, out, err


@pytest.mark.slow
@pytest.mark.parametrize("part", list(TABLE))
def test_a_series_file_of_weird_values_is_one_line_or_a_skipped_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], part: str
) -> None:
    """Exit 0 with the bad lines counted and skipped, or exit 2 with one line naming the
    file (a header adbatch cannot read); an exception would fail the test."""
    code, out, err = _report(tmp_path, BASE, capsys)
    assert (code, err) == (0, "")
    assert "unreadable" not in out
    assert {name for p, name in EXPECTED if p == part} <= set(TABLE[part])
    for name, lines in TABLE[part].items():
        code, out, err = _report(tmp_path, lines, capsys)
        assert code in (0, 2), name
        if code == 2:
            assert err.count("\n") == 1, name
            assert err.startswith("adbatch: error: "), name
            assert "s.series" in err, name
            assert SCRIPT not in err, name
        assert EXPECTED.get((part, name), code) == code, name


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        pytest.param(POINT, "calls", 1e308, id="calls-a-huge-float"),
        pytest.param(POINT, "ok", 2**70, id="ok-past-64-bits"),
        pytest.param(POINT, "statuses", {"200": "3"}, id="a-status-count-as-text"),
        pytest.param(-1, "elapsed_s", "x", id="end-elapsed-as-text"),
    ],
)
def test_a_bad_line_is_counted_and_the_others_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: int, key: str, value: Any
) -> None:
    lines = copy.deepcopy(BASE)
    lines[where][key] = value
    code, out, _ = _report(tmp_path, lines, capsys)
    assert code == 0
    assert "skipped   1 unreadable line" in out
    summary = orjson.loads((tmp_path / "r.json").read_bytes())
    if where == POINT:  # the other seconds' calls are still counted
        assert 0 < summary["events"] < 6
    else:
        assert summary["events"] == 6


class _Endless:
    """A stream of one line of `size` zero bytes (then EOF), as /dev/zero's first
    `size` bytes: it records the largest read asked of it."""

    def __init__(self, size: int, tail: bytes = b"") -> None:
        self.left = size
        self.tail = tail
        self.largest = 0

    def readline(self, size: int = -1, /) -> bytes:
        assert size > 0, "a read of the whole line"
        self.largest = max(self.largest, size)
        if self.left <= 0:
            tail, self.tail = self.tail, b""
            return tail
        n = min(size, self.left)
        self.left -= n
        return b"\0" * n


def test_a_line_past_the_limit_is_counted_and_never_held_whole() -> None:
    stream = _Endless(50_000_000, tail=b"\n")
    lines = BoundedLines(stream, limit=1000)
    assert list(lines) == []
    assert lines.too_long == 1
    assert stream.largest <= 1 << 16  # read in pieces, never asked for whole


def test_report_skips_an_over_long_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record longer than LINE_LIMIT is one unreadable line; the records around it count."""
    good = orjson.dumps({"seq": 0, "id": "a", "source": "e:1", "status": 200, "ok": True,
                         "latency_ms": 3.0, "sent_at": T0, "error_kind": None})  # fmt: skip
    path = tmp_path / "out.jsonl"
    with path.open("wb") as f:
        f.write(good + b"\n")
        f.write(b'{"seq": 1, "response": "' + b"x" * (LINE_LIMIT + 10) + b'"}\n')
        f.write(good + b"\n")
    assert main(["report", str(path), "--summary", str(tmp_path / "r.json")]) == 0
    assert "skipped   1 unreadable line" in capsys.readouterr().out
    assert orjson.loads((tmp_path / "r.json").read_bytes())["events"] == 2


def test_distinct_kinds_and_statuses_are_capped(tmp_path: Path) -> None:
    """Every record names its own error kind and status: the report keeps RUN_KEYS of
    each, the rest under one "(other)" entry, and a second BUCKET_KEYS."""
    n = RUN_KEYS + 500
    path = tmp_path / "out.jsonl"
    with path.open("wb") as f:
        for i in range(n):
            record = {"seq": i, "id": None, "source": f"e:{i}", "status": None, "ok": False,
                      "latency_ms": 5.0, "sent_at": T0 + i * 0.001, "error": "e",
                      "error_kind": f"k{i:07d}" + "x" * 300}  # fmt: skip
            f.write(orjson.dumps(record) + b"\n")
        for i in range(n):
            record = {"seq": n + i, "id": None, "source": f"e:{i}", "status": 1000 + i,
                      "ok": False, "latency_ms": 5.0, "sent_at": T0 + i * 0.001,
                      "error_kind": "http"}  # fmt: skip
            f.write(orjson.dumps(record) + b"\n")
    summary = tmp_path / "r.json"
    assert main(["report", str(path), "--summary", str(summary)]) == 0
    data = orjson.loads(summary.read_bytes())
    assert data["events"] == 2 * n
    assert len(data["errors"]) == RUN_KEYS + 1
    assert sum(data["errors"].values()) == 2 * n
    assert data["errors"][OTHER_KEY] == 2 * n - RUN_KEYS  # "http" came too late: other
    assert max(len(k) for k in data["errors"]) <= 100
    assert len(data["statuses"]) == RUN_KEYS + 1
    assert sum(data["statuses"].values()) == 2 * n
    for point in data["series"]:
        assert len(point["statuses"]) <= BUCKET_KEYS + 1


def test_the_html_report_colours_any_number_of_odd_statuses(tmp_path: Path) -> None:
    """A server answering 600..624 (or a file saying so): each status that is no 3-digit
    class of its own gets a colour, however many there are, where the 21st ran the
    palette dry (StopIteration)."""
    path, html = tmp_path / "out.jsonl", tmp_path / "r.html"
    with path.open("wb") as f:
        for i in range(50):
            record = {"seq": i, "id": None, "source": f"e:{i}", "status": 600 + i % 25,
                      "ok": False, "attempts": 1, "latency_ms": 5.0, "sent_at": T0 + i / 100,
                      "error": "odd", "error_kind": "protocol"}  # fmt: skip
            f.write(orjson.dumps(record) + b"\n")
    assert main(["report", str(path), "--html", str(html)]) == 0
    assert html.read_text().count("<svg") >= 1


def test_an_error_text_cannot_forge_a_line_of_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A (hand-made) record's error holding a line break or a bidi control: the report's
    top errors say it on one line, escaped."""
    forged = "boom\n  top errors\n  999  everything is fine\u202e"
    record = orjson.loads(_result(0.0, status=500, kind="http").to_json())
    record["error"] = forged
    path = tmp_path / "out.jsonl"
    path.write_bytes(orjson.dumps(record) + b"\n")
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  1  boom\\n  top errors\\n  999  everything is fine\\u202e" in out.splitlines()
