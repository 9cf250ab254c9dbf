"""Figures, per-second series and the text / HTML reports (pure), plus one real browser."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli.main import main
from engine.core.records import RecordLine, parse_record
from engine.core.series import Figures, Series
from engine.report.html import html_report, nice_ticks
from engine.report.text import FileTally, figures_from_lines, file_figures, text_report

T0 = 1_780_000_000.0


def rec(t: float, *, status: int | None = 200, lat: float | None = 10.0, late: float = 0.0,
        kind: str | None = None, scheduled: bool = True) -> dict[str, Any]:  # fmt: skip
    ok = status is not None and 200 <= status < 300
    return {
        "status": status,
        "ok": ok,
        "latency_ms": lat,
        "sent_at": None if kind == "dropped" else T0 + t + late,
        "scheduled_at": T0 + t if scheduled else None,
        "error_kind": kind if kind else (None if ok else f"http_{status}"),
    }


def dropped(t: float) -> dict[str, Any]:
    return rec(t, status=None, lat=None, kind="dropped")


def parsed(record: dict[str, Any]) -> RecordLine:
    """`record` as `adbatch report` reads it from a file."""
    line = parse_record(orjson.dumps(record))
    assert line is not None
    return line


@pytest.mark.parametrize(
    ("max_points", "times", "width", "counts"),
    [
        pytest.param(10, [0, 0.5, 1, 2.9], 1.0, [2, 1, 1], id="per-second"),
        pytest.param(10, [0, 3], 1.0, [1, 0, 0, 1], id="gaps-are-empty-points"),
        pytest.param(4, list(range(10)), 4.0, [4, 4, 2], id="coarsens-to-bound"),
        pytest.param(2, [0.5, 1.5, 2.5], 2.0, [2, 1], id="coarsens-once"),
    ],
)
def test_series_bounded(
    max_points: int, times: list[float], width: float, counts: list[int]
) -> None:
    series = Series(origin=0.0, max_points=max_points)
    for t in times:
        series.at(t).calls += 1
    assert series.width == width
    points = series.points()
    assert [b.calls for _, b in points] == counts
    assert [t for t, _ in points] == [i * width for i in range(len(counts))]


def test_series_memory_stays_bounded_over_a_long_run() -> None:
    series = Series(origin=0.0, max_points=600)
    for t in range(100_000):
        series.at(t * 0.5).calls += 1
    assert len(series.points()) <= 600
    assert sum(b.calls for _, b in series.points()) == 100_000


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param(
            [rec(0, lat=10), rec(0.1, lat=20, late=0.05)],
            {"sent": 2, "latency_ms.max": 20.0, "corrected_latency_ms.max": 70.0},
            id="late-send-counted-from-schedule",
        ),
        pytest.param(
            [rec(0, lat=10, scheduled=False), rec(0.5, lat=30, scheduled=False)],
            {"sent": 2, "corrected_latency_ms.max": 30.0, "series.0.rate": 2.0},
            id="batch-run-records-no-schedule",
        ),
        pytest.param(
            [rec(0), rec(0.2, status=None, lat=None, kind="dropped"), rec(1.2, status=503)],
            {
                "sent": 2,
                "dropped": 1,
                "failed": 1,  # as the summary line says it: dropped calls apart
                "ok": 1,
                "statuses.dropped": 1,
                "statuses.503": 1,
                "series.0.dropped": 1,
                "series.1.errors": 1,
            },
            id="dropped-and-errors",
        ),
        pytest.param(
            [rec(i / 100, lat=1500) for i in range(200)],
            {
                "sent": 200,
                "sent_s": 1.99,
                "rate": round(200 / 1.99, 3),
                "elapsed_s": 3.49,
                "throughput": round(200 / 3.49, 3),
            },
            id="rate-is-over-the-sends-not-the-answers",
        ),
        pytest.param(
            [rec(i / 100, lat=1500, late=0.5 if i == 199 else 0) for i in range(200)],
            {"sent_s": 2.49, "rate": round(200 / 2.49, 3)},
            id="rate-span-ends-at-a-late-send",
        ),
        pytest.param(
            [rec(0), rec(0.05), *(dropped(i / 20) for i in range(2, 20))],
            {"sent": 2, "dropped": 18, "failed": 0, "sent_s": 0.95, "rate": round(2 / 0.95, 3)},
            id="dropped-calls-lower-the-rate",
        ),
        pytest.param(
            [{"error_kind": "invalid", "ok": False}, rec(0)],
            {"events": 2, "invalid": 1, "sent": 1},
            id="invalid-not-timed",
        ),
    ],
)
def test_figures(records: list[dict[str, Any]], expected: dict[str, object]) -> None:
    figures = Figures()
    for r in records:
        figures.add_record(parsed(r))
    data = figures.to_dict()
    for path, value in expected.items():
        node: Any = data
        for part in path.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        assert node == pytest.approx(value), path


def test_report_origin_is_the_earliest_record_even_out_of_order() -> None:
    lines = [orjson.dumps(rec(t)) for t in (0.02, 0.0, 0.5, 1.01, 1.0, 2.5)]
    figures, bad = figures_from_lines([*lines, b"{torn", b"", b"[1]"])
    assert bad == 2
    data = figures.to_dict()
    assert [p["rate"] for p in data["series"]] == [3.0, 2.0, 1.0]
    assert data["elapsed_s"] == pytest.approx(2.51)


def test_text_report_shows_the_figures() -> None:
    figures = Figures()
    for i in range(50):
        figures.add_record(parsed(rec(i / 10, lat=5 + i, late=0.01 * (i % 3))))
    figures.add_record(parsed(rec(5.0, status=None, lat=None, kind="dropped")))
    data = {**figures.to_dict(), "figures": file_figures(figures, FileTally(scheduled=True))}
    text = text_report(data, bad_lines=1)
    assert "records   51  (sent 50, ok 50, failed 0, dropped 1, invalid 0)" in text
    assert "skipped   1 unreadable line\n" in text
    assert "from schedule" in text
    assert "200" in text
    assert "dropped" in text
    assert text.count("\n  5 ") == 1  # the per-second row of t = 5


def with_text(record: dict[str, Any], response: object = None, error: str | None = None
              ) -> bytes:  # fmt: skip
    return orjson.dumps({**record, "response": response, "error": error})


def test_report_figures_block_of_a_records_file() -> None:
    """Item 7 in `adbatch report`: both views, bytes in from the responses, no bytes
    out, success ratio, statuses (unanswered as "none"), top error texts."""
    lines = [with_text(rec(i / 10, lat=1.0 + i), {"ok": [1, 2]}) for i in range(10)]
    lines += [with_text(rec(1.0, status=503), "busy", "503 Service Unavailable")] * 3
    lines.append(with_text(rec(1.1, status=None, lat=None, kind="timeout"), None, "timed out"))
    lines.append(with_text(rec(1.2, status=None, lat=None, kind="dropped"), None, "dropped: 8"))
    lines.append(orjson.dumps({"error_kind": "invalid", "ok": False, "error": "bad line"}))
    tally = FileTally()
    acc, bad = figures_from_lines(lines, tally=tally)
    block = file_figures(acc, tally)
    assert bad == 0
    assert (block["calls"], block["ok"], block["errors"], block["dropped"]) == (15, 10, 4, 1)
    assert block["success_ratio"] == pytest.approx(10 / 15)
    assert block["statuses"] == {"200": 10, "503": 3, "none": 2}
    sent = 14  # calls less the dropped one
    body = len(b'{"ok":[1,2]}') * 10 + len(b"busy") * 3
    assert block["bytes_in"] == {"total": body, "mean": round(body / sent, 1)}
    assert block["bytes_out"] == {"total": None, "mean": None}
    assert block["top_errors"] == [
        {"message": "503 Service Unavailable", "count": 3},
        {"message": "dropped: 8", "count": 1},
        {"message": "timed out", "count": 1},
    ]
    send, schedule = block["latency_ms"]["send"], block["latency_ms"]["schedule"]
    assert (send["min"], send["max"]) == (pytest.approx(1.0, rel=0.01), pytest.approx(10.0))
    assert set(send) == {"min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max"}
    assert schedule is not None
    assert schedule["max"] == pytest.approx(10.0)

    text = text_report({**acc.to_dict(), "figures": block})
    for needle in ("from schedule", "p99.9", "success  66.67% (10 ok of 15 calls",
                   f"in {body} (mean {body / sent:.1f}/call), out n/a (not in the file)",
                   "200 x10, 503 x3",
                   "3  503 Service Unavailable"):  # fmt: skip
        assert needle in text, needle


def test_report_figures_of_run_records_have_no_schedule_view() -> None:
    tally = FileTally()
    acc, _ = figures_from_lines([orjson.dumps(rec(0, scheduled=False))], tally=tally)
    block = file_figures(acc, tally)
    assert block["latency_ms"]["schedule"] is None
    assert "from schedule" not in text_report({**acc.to_dict(), "figures": block})


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        pytest.param(0, 200, [0, 50, 100, 150, 200], id="round"),
        pytest.param(0, 3.02, [0, 1, 2, 3, 4], id="over-the-top"),
        pytest.param(0, 0.7, [0, 0.2, 0.4, 0.6, 0.8], id="fractions"),
        pytest.param(0, 230.8, [0, 50, 100, 150, 200, 250], id="ms"),
        pytest.param(5, 5, [5, 5.2, 5.4, 5.6, 5.8, 6], id="flat"),
    ],
)
def test_nice_ticks(low: float, high: float, ticks: list[float]) -> None:
    assert nice_ticks(low, high) == pytest.approx(ticks)


def sample_data() -> dict[str, Any]:
    figures = Figures()
    for i in range(300):
        status = 503 if i % 17 == 0 else 200
        figures.add_record(
            parsed(rec(i / 100, status=status, lat=2 + (i % 40), late=0.002 * (i % 5)))
        )
    for i in range(10):
        figures.add_record(parsed(rec(1 + i / 10, status=None, lat=None, kind="dropped")))
    figures.add_record(parsed(rec(2.5, status=None, lat=900, kind='<script>alert("x")</script>')))
    return figures.to_dict()


def test_html_is_self_contained_and_escaped() -> None:
    page = html_report(sample_data(), title="run <1>")
    assert page.startswith("<!doctype html>")
    assert page.count("<svg") == 6
    for needle in ("<script", "src=", "<link", "url(", "@import", "https://"):
        assert needle not in page.lower(), needle
    assert page.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http://") == 0
    assert "&lt;script&gt;" in page
    assert "<title>run &lt;1&gt;</title>" in page
    for heading in ("Rate over time", "Latency percentiles over time", "Latency histogram",
                    "Status codes over time"):  # fmt: skip
        assert heading in page


def test_html_empty_run_does_not_crash() -> None:
    page = html_report(Figures().to_dict(), title="empty")
    assert page.count("no data") == 6


def test_cli_report_text_json_html(
    write_jsonl: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = write_jsonl([rec(i / 20) for i in range(40)], name="out.jsonl")
    html, summary = tmp_path / "r.html", tmp_path / "s.json"
    assert main(["report", str(out), "--html", str(html), "--summary", str(summary)]) == 0
    printed = capsys.readouterr().out
    assert "records   40" in printed
    data = orjson.loads(summary.read_bytes())
    assert data["sent"] == 40
    assert data["figures"]["statuses"] == {"200": 40}
    assert data["figures"]["latency_ms"]["schedule"]["p99.9"] == pytest.approx(10.0, rel=0.01)
    assert "from schedule" in printed
    assert "p99.9" in printed
    assert html.read_text().count("<svg") == 6


def test_cli_report_missing_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "/nonexistent/out.jsonl"]) == 2
    assert capsys.readouterr().err.startswith("adbatch: error: cannot read /nonexistent")


# -- a real browser -------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def png_pixels(data: bytes) -> tuple[int, int, Counter[tuple[int, int, int]]]:
    """(width, height, colour counts) of an 8-bit RGB/RGBA non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8
            assert interlace == 0
            assert colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    prev = bytearray(stride)
    colours: Counter[tuple[int, int, int]] = Counter()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        prev = line
        if y % 4 == 0:  # a sample of the rows is plenty to find the plots' colours
            colours.update(
                tuple(line[x : x + 3])
                for x in range(0, stride, channels * 2)  # type: ignore[misc]
            )
    return width, height, colours


@pytest.mark.slow  # starts Chromium: ~4 s
def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium on this machine")
    page = tmp_path / "report.html"
    page.write_text(html_report(sample_data(), title="browser check"))
    shot = tmp_path / "shot.png"
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--proxy-server=127.0.0.1:9",  # any network fetch would fail
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=800,3200",
            f"--screenshot={shot}", page.as_uri(),
        ],
        capture_output=True, timeout=50, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    width, height, colours = png_pixels(shot.read_bytes())
    assert (width, height) == (800, 3200)
    # The plots were drawn: the rate line (blue), ok bars (green), 503 bars (red).
    for name, rgb in (("blue", (0x25, 0x63, 0xEB)), ("green", (0x16, 0xA3, 0x4A)),
                      ("red", (0xDC, 0x26, 0x26))):  # fmt: skip
        assert colours[rgb] > 20, name
