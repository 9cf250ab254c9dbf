"""What the live display says (pure rows; tests/test_live_display.py reads the terminal),
and the reader's byte counter it is built on."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from engine.core.events import ReadCounts
from engine.core.pacing import constant, ramp, stages
from engine.files.sources import input_size, read_items, read_units
from engine.load.plan import LiveState
from engine.load.progress import load_rows, target_rate
from engine.net.auth import StaticToken
from engine.runtime.display import Bar, RateMeter, eta, size, span
from engine.runtime.progress import RunFigures, RunView, tally_figures, token_state

LINE = b'{"criteo-partner-id": 1, "event-type": "viewHome", "retailer-visitor-id": "v"}\n'


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        pytest.param(None, "-", id="unknown"),
        pytest.param(float("inf"), "-", id="infinite"),
        pytest.param(0.4, "0s", id="zero"),
        pytest.param(42.0, "42s", id="seconds"),
        pytest.param(185.0, "3m05s", id="minutes"),
        pytest.param(7620.0, "2h07m", id="hours"),
    ],
)
def test_span(seconds: float | None, text: str) -> None:
    assert span(seconds) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        pytest.param(812, "812 B", id="bytes"),
        pytest.param(4100, "4.1 KB", id="kilo"),
        pytest.param(1_200_000_000, "1.2 GB", id="giga"),
        pytest.param(3e15, "3000.0 TB", id="beyond"),
    ],
)
def test_size(n: float, text: str) -> None:
    assert size(n) == text


@pytest.mark.parametrize(
    ("done", "total", "elapsed", "left"),
    [
        pytest.param(0, 100, 5.0, None, id="nothing-yet"),
        pytest.param(25, 100, 5.0, 15.0, id="quarter"),
        pytest.param(100, 100, 5.0, 0.0, id="done"),
    ],
)
def test_eta(done: int, total: int, elapsed: float, left: float | None) -> None:
    assert eta(done, total, elapsed) == left


def test_rate_meter_reads_about_the_last_second() -> None:
    meter = RateMeter(window=1.0)
    assert meter.rate(0.0, 0) == 0.0
    assert meter.rate(0.5, 100) == pytest.approx(200.0)
    assert meter.rate(1.0, 200) == pytest.approx(200.0)
    # a stall: the last second's rate falls, not the average since the start
    assert meter.rate(2.0, 200) == pytest.approx(0.0)


def run_view(total: int | None, bytes_read: int, figures: RunFigures, note: str = "") -> list:
    counts = ReadCounts(bytes_read=bytes_read)
    return list(RunView(lambda: figures, counts, total, note=note)(10.0))


@pytest.mark.parametrize(
    ("total", "bytes_read", "figures", "bar", "texts"),
    [
        pytest.param(
            4000, 1000, RunFigures(250, 250, 240, 8, 2, 12.3), (0.25, "25%  1.0 KB / 4.0 KB"),
            ["ETA 30s", "250 done", "240 ok", "8 failed", "2 invalid", "p99 12 ms"],
            id="file",
        ),
        pytest.param(
            4000, 4000, RunFigures(100, 400, 100, 0, 0, None), (0.25, "25%  1.0 KB / 4.0 KB"),
            ["ETA 30s", "p99 -"], id="read-ahead",
        ),
        pytest.param(
            4000, 4000, RunFigures(400, 400, 400, 0, 0, 1.0), (1.0, "100%"), ["ETA 0s"],
            id="finished",
        ),
        pytest.param(
            None, 1000, RunFigures(250, 300, 250, 0, 0, 1.0), None, ["250 done", "10s"],
            id="stdin",
        ),
        pytest.param(
            0, 0, RunFigures(0, 0, 0, 0, 0, None), None, ["0 done"], id="empty-file",
        ),
    ],
)  # fmt: skip
def test_run_view(
    total: int | None,
    bytes_read: int,
    figures: RunFigures,
    bar: tuple[float, str] | None,
    texts: list[str],
) -> None:
    rows = run_view(total, bytes_read, figures)
    text = " | ".join(r.text if isinstance(r, Bar) else r for r in rows)
    if bar is None:
        assert len(rows) == 1
        assert not isinstance(rows[0], Bar)
    else:
        assert isinstance(rows[0], Bar)
        assert rows[0].fraction == pytest.approx(bar[0])
        assert bar[1] in rows[0].text
    for part in texts:
        assert part in text


def test_run_view_of_a_workers_parent_knows_done_only() -> None:
    rows = run_view(None, 0, RunFigures(1000, 1200), note="4 workers")
    assert rows == ["1,000 done · 0/s · 4 workers · 10s"]


def test_tally_figures_of_a_workers_parent() -> None:
    from collections import Counter

    from engine.core.tally import Tally

    tally = Tally(calls=Counter({("200", ""): 90, ("503", "http_503"): 6, ("", "invalid"): 4}))
    for ms in range(1, 101):
        tally.latency.record(float(ms))
    figures = tally_figures(tally, 120)
    assert (figures.done, figures.taken, figures.ok, figures.failed, figures.invalid) == (
        100, 120, 90, 6, 4,
    )  # fmt: skip
    assert figures.p99_ms == pytest.approx(99.0, rel=0.02)


def live_with(calls: int, *, duration: float | None = None, total: int | None = None) -> LiveState:
    live = LiveState(duration=duration, total=total, started=100.0)
    live.figures.origin = 1000.0
    for i in range(calls):
        live.figures.add(
            status=200 if i % 10 else 503, ok=bool(i % 10),
            error_kind=None if i % 10 else "http_503", latency_ms=5.0 + i % 3,
            sent_at=1000.0 + i / 50, scheduled_at=1000.0 + i / 50,
        )  # fmt: skip
    live.figures.add(status=None, ok=False, error_kind="dropped", latency_ms=None,
                     sent_at=None, scheduled_at=1000.5)  # fmt: skip
    live.in_flight = 3
    return live


@pytest.mark.parametrize(
    ("live", "target", "where", "parts"),
    [
        pytest.param(
            live_with(100, duration=10), 50.0, (0.2, "2s / 10s, 8s left"),
            ["48/s of 50/s target", "101 done", "3 in flight", "p50 6.0 ms",
             "10 errors (http_503 10)", "1 dropped", "token static"],
            id="duration",
        ),
        pytest.param(
            live_with(20, total=600), 50.0, (21 / 600, "21 / 600 calls"),
            ["2 errors (http_503 2)", "1 dropped"], id="total",
        ),
        pytest.param(
            live_with(0), None, "2s elapsed", ["48/s ·", "p50 -", "0 errors ·", "1 dropped"],
            id="replay",
        ),
    ],
)  # fmt: skip
def test_load_rows(
    live: LiveState, target: float | None, where: object, parts: list[str]
) -> None:
    rows = load_rows(live, elapsed=2.0, rate=48.0, target=target, token="static")
    assert len(rows) == 3
    if isinstance(where, tuple):
        assert isinstance(rows[0], Bar)
        assert rows[0].fraction == pytest.approx(where[0])
        assert rows[0].text == where[1]
    else:
        assert rows[0] == where
    text = " | ".join(str(r) for r in rows[1:])
    for part in parts:
        assert part in text


@pytest.mark.parametrize(
    ("pacer", "elapsed", "rate"),
    [
        pytest.param(constant(50.0), 1e6, 50.0, id="constant-forever"),
        pytest.param(constant(50.0, 10.0), 12.0, 0.0, id="past-the-end"),
        pytest.param(ramp(0.0, 100.0, 10.0), 2.5, 25.0, id="ramp"),
        pytest.param(stages([(10.0, 100.0), (10.0, 100.0), (10.0, 0.0)]), 25.0, 50.0,
                     id="stages"),
        pytest.param(None, 3.0, None, id="replay"),
    ],
)  # fmt: skip
def test_target_rate(pacer: object, elapsed: float, rate: float | None) -> None:
    assert target_rate(pacer, elapsed) == rate  # type: ignore[arg-type]


def test_token_state_of_static_tokens() -> None:
    assert token_state(StaticToken("Bearer x")) == "static"
    assert token_state(StaticToken(None)) == "none"


def test_input_size_is_known_for_regular_files_only(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl.gz"
    a.write_bytes(LINE * 3)
    b.write_bytes(gzip.compress(LINE * 100))
    assert input_size([str(a), str(b)]) == a.stat().st_size + b.stat().st_size
    assert input_size([str(a), "-"]) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert input_size([str(a), str(fifo)]) is None
    assert input_size([str(tmp_path / "missing")]) is None


@pytest.mark.parametrize("reader", [read_items, read_units])
@pytest.mark.parametrize("gzipped", [False, True])
def test_bytes_read_count_the_files_bytes(tmp_path: Path, reader: object, gzipped: bool) -> None:
    """Compressed bytes for gzip: the position in the file, what its size is compared to."""
    path = tmp_path / ("e.jsonl.gz" if gzipped else "e.jsonl")
    data = LINE * 5000
    path.write_bytes(gzip.compress(data) if gzipped else data)
    counts = ReadCounts()
    items = reader([str(path)], counts=counts)  # type: ignore[operator]
    first = next(items)
    assert first.seq == 0
    assert 0 < counts.bytes_read <= path.stat().st_size
    assert sum(1 for _ in items) == 4999
    assert counts.bytes_read == path.stat().st_size == input_size([str(path)])


@pytest.mark.parametrize("width", [1, 5, 20, 40, 80, 200])
def test_rows_are_cut_to_the_width_never_wrapped(width: int) -> None:
    """What keeps the display in place: one line per row, none wider than the console
    (wide characters counted as two cells)."""
    import io

    from rich.cells import cell_len
    from rich.console import Console

    from engine.runtime.display import _render

    rows = [
        Bar(0.3, "30%  31.8 KB / 104.6 KB  2s, ETA 3s"),
        "73 done · 48/s · 73 ok · 0 failed · 0 invalid · p99 1 ms · 漢字漢字漢字 " * 3,
        "",
    ]
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=True, color_system=None).print(_render(rows))
    lines = out.getvalue().split("\n")[:-1]
    assert len(lines) == len(rows)
    assert max(cell_len(line) for line in lines) <= width


@pytest.mark.slow
@pytest.mark.anyio
async def test_no_display_on_a_stream_that_is_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A library caller asking for the display (Config.progress) with stderr on a file,
    under FORCE_COLOR (which rich believes): nothing is drawn."""
    from engine import api
    from engine.config import Config

    for name, value in (("FORCE_COLOR", "1"), ("TTY_COMPATIBLE", "1"), ("TERM", "xterm")):
        monkeypatch.setenv(name, value)
    events = tmp_path / "events.jsonl"
    events.write_bytes(LINE.replace(b'"v"}', b'"v", "page-id": "viewHome_API_desktop"}') * 40)
    config = Config(inputs=(str(events),), output=str(tmp_path / "out.jsonl"), mock=True,
                    rate=40.0, progress=True)  # fmt: skip
    summary = await api.run(config)
    assert summary.exit_code == 0
    err = capsys.readouterr().err
    assert "done" not in err
    assert "\x1b" not in err
