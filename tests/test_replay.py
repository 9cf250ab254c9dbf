"""`adbatch replay`: recorded time scaled, gaps clamped, access logs parsed back into events."""

from __future__ import annotations

import gzip
import io
import itertools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from conftest import config_for, read_records

from engine.cli.main import main
from engine.core.events import Event
from engine.files.accesslog import (
    is_access_log,
    parse_log_line,
    parse_log_time,
    read_replay_items,
)
from engine.load.driver import run_load
from engine.load.plan import LoadPlan
from engine.mock import MockConfig, MockHandle, running_mock

T0 = 1_780_000_000.0
BASE = {
    "criteo-partner-id": 12345,
    "event-type": "viewHome",
    "page-id": "viewHome_API_desktop",
}
# 26 events over exactly 10 s: bursts, a long gap, a few irregular steps.
OFFSETS = [0, 0.05, 0.1, 0.15, 1, 1.02, 2.5, 3, 3.01, 3.02, 3.03, 4.4, 5, 5.5, 6, 6.25,
           6.5, 7.9, 8, 8.3, 8.6, 9, 9.5, 9.9, 9.95, 10]  # fmt: skip


pytestmark = pytest.mark.uvloop  # timing tests: the loop's overhead must stay small


@pytest.mark.slow
@pytest.mark.anyio
async def test_replay_10s_at_speed_5_takes_2s_each_call_on_time(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    rows = [
        {**BASE, "id": f"r{i}", "retailer-visitor-id": f"v{i}", "timestamp": T0 + off}
        for i, off in enumerate(OFFSETS)
    ]
    out = tmp_path / "out.jsonl"
    outcome = await run_load(
        config_for(mock, write_jsonl(rows), out), LoadPlan(mode="replay", speed=5)
    )
    # "about 2 s": never before the schedule's end; the upper margin is for a busy 2-core
    # machine (each call's time against its schedule is checked exactly below).
    assert 1.95 <= outcome.summary.elapsed_s <= 3.5
    recs = {r["id"]: r for r in read_records(out)}
    assert len(recs) == len(OFFSETS)
    assert all(r["ok"] for r in recs.values())
    start = min(r["scheduled_at"] for r in recs.values())
    for i, off in enumerate(OFFSETS):
        r = recs[f"r{i}"]
        assert r["scheduled_at"] - start == pytest.approx(off / 5, abs=1e-5)
        assert abs(r["sent_at"] - (start + off / 5)) <= 0.1  # within 100 ms of its time
    # and as the server saw it
    arrivals = sorted(q.received_at for q in mock.state.requests)
    for arrival, off in zip(arrivals, OFFSETS, strict=True):
        assert abs((arrival - arrivals[0]) - off / 5) <= 0.1


@pytest.mark.slow
@pytest.mark.anyio
async def test_slow_server_queueing_shows_in_corrected_latency(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """Replay never drops: with 2 calls in flight and 0.2 s answers (10/s) under 40/s of
    recorded traffic, calls wait; latency from the send stays ~0.2 s while latency from
    the schedule grows with the queue, as a user arriving on time would have seen."""
    rows = [
        {**BASE, "retailer-visitor-id": f"v{i}", "timestamp": T0 + i * 0.025} for i in range(20)
    ]
    out = tmp_path / "out.jsonl"
    async with running_mock(MockConfig(latency=0.2)) as mock:
        outcome = await run_load(
            config_for(mock, write_jsonl(rows), out),
            LoadPlan(mode="replay", max_in_flight=2),
        )
    recs = sorted(read_records(out), key=lambda r: r["scheduled_at"])
    assert len(recs) == 20
    assert outcome.figures["dropped"] == 0
    lat, cor = outcome.figures["latency_ms"], outcome.figures["corrected_latency_ms"]
    assert lat["p99"] < 600
    # the last call was due at 0.475 s and could start only after 9 rounds of 0.2 s
    assert cor["max"] >= 1500
    assert cor["p50"] > 2 * lat["p50"]
    waits = [r["sent_at"] - r["scheduled_at"] for r in recs]
    assert waits[-1] > waits[2] + 1.0  # the wait grows along the run: queueing


@pytest.mark.anyio
async def test_rate_cap_delays_never_drops(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    rows = [{**BASE, "retailer-visitor-id": f"v{i}", "timestamp": T0} for i in range(10)]
    out = tmp_path / "out.jsonl"
    await run_load(config_for(mock, write_jsonl(rows), out, rate=20.0), LoadPlan(mode="replay"))
    recs = sorted(read_records(out), key=lambda r: r["scheduled_at"])
    assert len(recs) == 10 == mock.state.delivery_requests
    gaps = [b["scheduled_at"] - a["scheduled_at"] for a, b in itertools.pairwise(recs)]
    assert gaps == pytest.approx([0.05] * 9, abs=1e-5)


@pytest.mark.anyio
async def test_max_gap_and_missing_timestamps(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    rows = [
        {**BASE, "retailer-visitor-id": "a", "timestamp": T0},
        {**BASE, "retailer-visitor-id": "b"},
        {**BASE, "retailer-visitor-id": "c", "timestamp": T0 + 3600},
    ]
    out = tmp_path / "out.jsonl"
    outcome = await run_load(
        config_for(mock, write_jsonl(rows), out), LoadPlan(mode="replay", max_gap=0.2)
    )
    assert outcome.summary.elapsed_s < 2
    recs = read_records(out)
    assert sorted(r["error_kind"] or "ok" for r in recs) == ["invalid", "ok", "ok"]
    (bad,) = [r for r in recs if r["error_kind"] == "invalid"]
    assert "no timestamp" in bad["error"]
    assert bad["source"].endswith(":2")


LOG_LINE = (
    '203.0.113.9 - - [01/Jun/2026:10:00:0{sec} +0000] "GET /delivery/retailmedia?'
    "criteo-partner-id=12345&retailer-visitor-id=rv-{n}&event-type=viewSearchResult"
    '&page-id=viewSearchResult_API_desktop&keywords=red+shoes%26socks HTTP/1.1" 200 812 '
    '"https://shop.example/search?q=red" "Mozilla/5.0 (X11; Linux) \\"quoted\\""'
)


@pytest.mark.anyio
async def test_replay_access_log(mock: MockHandle, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    lines = [
        LOG_LINE.format(sec=0, n=1),
        LOG_LINE.format(sec=2, n=3),  # out of order by one line: the window fixes it
        LOG_LINE.format(sec=1, n=2),
        '203.0.113.9 - - [01/Jun/2026:10:00:01 +0000] "GET /health HTTP/1.1" 200 2 "-" "-"',
    ]
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    outcome = await run_load(config_for(mock, log, out), LoadPlan(mode="replay", speed=20))
    recs = read_records(out)
    assert sorted(r["error_kind"] or "ok" for r in recs) == ["invalid", "ok", "ok", "ok"]
    assert outcome.late_in_log == 0
    sent = [dict(q.query) for q in mock.state.requests]
    assert [q["retailer-visitor-id"] for q in sent] == ["rv-1", "rv-2", "rv-3"]
    assert sent[0]["keywords"] == "red shoes&socks"
    headers = mock.state.requests[0].headers
    assert headers["X-Forwarded-For"] == "203.0.113.9"
    assert headers["Referer"] == "https://shop.example/search?q=red"
    assert headers["User-Agent"] == 'Mozilla/5.0 (X11; Linux) "quoted"'
    (bad,) = [r for r in recs if r["error_kind"] == "invalid"]
    assert "not a delivery call" in bad["error"]


@pytest.mark.slow  # end to end, over a second
def test_cli_replay_examples_on_mock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    examples = Path(__file__).resolve().parent.parent / "examples" / "pageviews.jsonl"
    code = main(
        ["replay", "--mock", str(examples), "--speed", "50", "--max-gap", "0.1",
         "-o", str(out), "--summary", str(summary)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    recs = read_records(out)
    assert len(recs) == len(examples.read_bytes().strip().splitlines())
    assert orjson.loads(summary.read_bytes())["events"] == len(recs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("10/Oct/2026:13:55:36 +0000", 1791640536.0, id="utc"),
        pytest.param("10/Oct/2026:13:55:36 -0700", 1791640536.0 + 7 * 3600, id="offset"),
        pytest.param("10/Oct/2026:13:55:36.250 +0000", 1791640536.25, id="millis"),
        pytest.param("10/Foo/2026:13:55:36 +0000", None, id="bad-month"),
        pytest.param("31/Feb/2026:13:55:36 +0000", None, id="bad-day"),
        pytest.param("2026-10-10T13:55:36Z", None, id="iso-is-not-clf"),
        pytest.param("10/Oct/2026:13:55:36 +2400", None, id="offset-24h-is-no-zone"),
        pytest.param("10/Oct/2026:13:55:36 -9959", None, id="offset-99h"),
    ],
)
def test_parse_log_time(text: str, expected: float | None) -> None:
    assert parse_log_time(text) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            '1.2.3.4 - - [10/Oct/2026:13:55:36 +0000] "GET /delivery/retailmedia?a=1&b=x+y '
            'HTTP/1.1" 200 5 "-" "-"',
            {"a": "1", "b": "x y", "timestamp": 1791640536.0, "ip": "1.2.3.4"},
            id="combined-dashes",
        ),
        pytest.param(
            '1.2.3.4 - bob [10/Oct/2026:13:55:36 +0000] "GET /x/delivery/retailmedia?a=1 '
            'HTTP/2.0" - -',
            {"a": "1", "timestamp": 1791640536.0, "ip": "1.2.3.4"},
            id="common-format-prefix-path",
        ),
        pytest.param(
            '- - - [10/Oct/2026:13:55:36 +0000] "GET /delivery/retailmedia?ip=9.9.9.9&a=1 '
            'HTTP/1.1" 200 5 "https://r/" "UA"',
            {"a": "1", "timestamp": 1791640536.0, "referer": "https://r/", "user-agent": "UA"},
            id="log-fields-win-over-lookalike-params",
        ),
    ],
)
def test_parse_log_line(line: str, expected: dict[str, object]) -> None:
    assert parse_log_line(line) == (expected, None)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param("hello", "not an access-log line", id="garbage"),
        pytest.param(
            '1.2.3.4 - - [10/Oct/2026:13:55:36 +0000] "POST /delivery/retailmedia?a=1 '
            'HTTP/1.1" 200 5 "-" "-"',
            "not a delivery call",
            id="post",
        ),
        pytest.param(
            '1.2.3.4 - - [10/Oct/2026:99:55:36 +0000] "GET /delivery/retailmedia?a=1 '
            'HTTP/1.1" 200 5 "-" "-"',
            "log time",
            id="bad-time",
        ),
        pytest.param(
            '1.2.3.4 - - [10/Oct/2026:13:55:36 +2400] "GET /delivery/retailmedia?a=1 '
            'HTTP/1.1" 200 5 "-" "-"',
            "log time '10/Oct/2026:13:55:36 +2400' is not like",
            id="offset-24h",
        ),
    ],
)
def test_parse_log_line_rejects(line: str, message: str) -> None:
    obj, error = parse_log_line(line)
    assert obj is None
    assert error is not None
    assert message in error


def test_access_log_sniffing(tmp_path: Path) -> None:
    named = tmp_path / "x.log"
    named.write_text("anything\n")
    sniffed = tmp_path / "traffic.txt"
    sniffed.write_text(LOG_LINE.format(sec=0, n=1) + "\n")
    events = tmp_path / "events.txt"
    events.write_text('{"a": 1}\n')
    assert is_access_log(str(named))
    assert is_access_log(str(sniffed))
    assert not is_access_log(str(events))


def _events(n: int) -> bytes:
    one = {"retailer-visitor-id": "v", **BASE}
    lines = [orjson.dumps({"id": f"e{i}", "timestamp": T0 + i, **one}) for i in range(n)]
    return b"\n".join(lines) + b"\n"


def _log(n: int) -> bytes:
    return "".join(LOG_LINE.format(sec=i % 10, n=i) + "\n" for i in range(n)).encode()


@pytest.mark.parametrize(
    ("data", "count"),
    [
        pytest.param(gzip.compress(_events(4)), 4, id="small-events-gz"),
        pytest.param(gzip.compress(_log(40)), 40, id="log-gz"),
        pytest.param(
            gzip.compress(os.urandom(30000).hex().encode() + b"\n" + _log(9)),
            10,
            id="big-gz-first-line-no-log",
        ),
        pytest.param(gzip.compress(_log(5000)), 5000, id="big-log-gz"),
        pytest.param(_log(3), 3, id="plain-log"),
    ],
)
def test_gzip_on_stdin_is_sniffed_without_losing_it(
    monkeypatch: pytest.MonkeyPatch, data: bytes, count: int
) -> None:
    """Sniffing whether stdin is an access log peeks: the reader gets every byte, gzip too
    (a GzipFile peeked took the compressed bytes out of stdin's buffer: 0 events)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))
    items = list(read_replay_items(["-"]))
    assert len(items) == count
    assert [i.seq for i in items] == list(range(count))
    if count != 10:  # the first line is no log line: read as JSONL, all invalid
        assert all(isinstance(i, Event) for i in items), items[:3]


@pytest.mark.slow  # a process of its own, over a second
def test_cli_replay_gzip_log_on_stdin(tmp_path: Path) -> None:
    """`adbatch replay --mock - < access.log.gz`: every line answered (was 0, exit 0)."""
    src = tmp_path / "acc.log.gz"
    src.write_bytes(gzip.compress(_log(40)))
    out = tmp_path / "out.jsonl"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    argv = ["replay", "--mock", "--no-progress", "--speed", "100", "--max-gap", "0.01"]
    with src.open("rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "engine", *argv, "-", "-o", str(out)],
            stdin=stdin,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    recs = read_records(out)
    assert sorted(r["source"] for r in recs) == sorted(f"<stdin>:{n}" for n in range(1, 41))
    assert all(r["ok"] for r in recs)
