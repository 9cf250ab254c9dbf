"""The pure modules behind --metrics-addr and --dashboard, by tables (issue 14):
core/addresses.py (HOST:PORT), core/tally.py (live counters, their deltas and sums,
Prometheus buckets, progress, the token's words), core/timeline.py (the dashboard's
per-second points). Then the /metrics text of a given snapshot, parsed back by
prometheus_client's own parser: the series' exact names, types and labels."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.core.addresses import LOOPBACK, parse_listen, url_host
from engine.core.errors import ConfigError
from engine.core.events import ReadCounts
from engine.core.records import Result
from engine.core.stats import Histogram, RunStats
from engine.core.tally import (
    DROPPED,
    NONE,
    Progress,
    Snapshot,
    Tally,
    TokenView,
    cumulative,
    input_share,
    record_lag,
    tally_of,
)
from engine.core.timeline import Timeline

# -- core/addresses.py ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(":9100", (LOOPBACK, 9100), id="bare-port-is-loopback"),
        pytest.param(":0", ("127.0.0.1", 0), id="port-0-any-free"),
        pytest.param("127.0.0.1:9100", ("127.0.0.1", 9100), id="ipv4"),
        pytest.param("0.0.0.0:8000", ("0.0.0.0", 8000), id="every-interface-when-asked"),
        pytest.param("localhost:9100", ("localhost", 9100), id="name"),
        pytest.param("[::1]:9100", ("::1", 9100), id="ipv6-in-brackets"),
        pytest.param("[::]:9100", ("::", 9100), id="ipv6-any"),
        pytest.param("[fe80::1%eth0]:80", ("fe80::1%eth0", 80), id="ipv6-scoped"),
        pytest.param(":65535", (LOOPBACK, 65535), id="highest-port"),
        pytest.param(":009100", (LOOPBACK, 9100), id="leading-zeros"),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text, "--metrics-addr") == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("9100", id="no-colon"),
        pytest.param(":", id="no-port"),
        pytest.param("localhost:", id="host-no-port"),
        pytest.param(":65536", id="port-too-big"),
        pytest.param(":99999999999999999999", id="port-huge"),
        pytest.param(":-1", id="port-negative"),
        pytest.param(":+80", id="port-signed"),
        pytest.param(": 80", id="port-space"),
        pytest.param(":80 ", id="port-trailing-space"),
        pytest.param(":abc", id="port-word"),
        pytest.param(":١٢٣", id="port-non-ascii-digits"),
        pytest.param(":9100.5", id="port-fraction"),
        pytest.param("::1:9100", id="ipv6-without-brackets"),
        pytest.param("[::1]", id="ipv6-no-port"),
        pytest.param("[]:9100", id="empty-brackets"),
        pytest.param("[127.0.0.1]:9100", id="ipv4-in-brackets"),
        pytest.param("[::1:9100", id="unclosed-bracket"),
        pytest.param(" :9100", id="leading-space"),
        pytest.param("a b:9100", id="space-in-host"),
        pytest.param("http://x:9100", id="a-url"),
        pytest.param("hôte:9100", id="non-ascii-host"),
        pytest.param("ho\tst:9100", id="control-in-host"),
    ],
)
def test_parse_listen_refuses_with_the_option_named(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_listen(text, "--dashboard")
    message = str(caught.value)
    assert message.startswith("--dashboard must be HOST:PORT")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("host", "in_url"),
    [
        pytest.param("127.0.0.1", "127.0.0.1", id="ipv4"),
        pytest.param("localhost", "localhost", id="name"),
        pytest.param("::1", "[::1]", id="ipv6"),
        pytest.param("::", "[::]", id="ipv6-any"),
    ],
)
def test_url_host(host: str, in_url: str) -> None:
    assert url_host(host) == in_url


# -- core/tally.py ----------------------------------------------------------------------


def hist(*values_ms: float) -> Histogram:
    h = Histogram()
    for v in values_ms:
        h.record(v)
    return h


def tally(
    calls: dict[tuple[str, str], int] | None = None,
    *,
    latency: tuple[float, ...] = (),
    lag: tuple[float, ...] = (),
    attempts: int = 0,
    retries: dict[str, int] | None = None,
    renewals: int = 0,
    read: int = 0,
    scheduled: int = 0,
) -> Tally:
    return Tally(
        calls=Counter(calls or {}),
        attempts=attempts,
        retries=Counter(retries or {}),
        latency=hist(*latency),
        corrected=hist(*(v * 2 for v in latency)),
        lag=hist(*lag),
        token_renewals=renewals,
        events_read=read,
        scheduled=scheduled,
    )


def same(a: Tally, b: Tally) -> bool:
    """Every counter and histogram equal (buckets, count, total)."""
    return (
        +a.calls == +b.calls
        and (a.attempts, a.token_renewals, a.events_read, a.scheduled)
        == (b.attempts, b.token_renewals, b.events_read, b.scheduled)
        and +a.retries == +b.retries
        and all(
            x.bins() == y.bins() and x.count == y.count and math.isclose(x.total, y.total)
            for x, y in ((a.latency, b.latency), (a.corrected, b.corrected), (a.lag, b.lag))
        )
    )


@pytest.mark.parametrize(
    ("calls", "done", "dropped", "errors"),
    [
        pytest.param({}, 0, 0, {}, id="nothing"),
        pytest.param({("200", NONE): 5}, 5, 0, {}, id="all-ok"),
        pytest.param(
            {("200", NONE): 5, ("503", "http_503"): 2, (NONE, "timeout"): 1},
            8, 0, {"http_503": 2, "timeout": 1}, id="failures-by-kind",
        ),
        pytest.param(
            {("200", NONE): 3, (NONE, DROPPED): 4, (NONE, "invalid"): 2},
            9, 4, {DROPPED: 4, "invalid": 2}, id="dropped-and-invalid-are-errors",
        ),
        pytest.param(
            {("200", "too_large"): 1, ("200", NONE): 1},
            2, 0, {"too_large": 1}, id="a-200-can-fail",
        ),
    ],
)  # fmt: skip
def test_tally_done_dropped_errors(
    calls: dict[tuple[str, str], int], done: int, dropped: int, errors: dict[str, int]
) -> None:
    t = tally(calls)
    assert (t.done, t.dropped, dict(t.errors())) == (done, dropped, errors)


def stats_of(*records: tuple[int | None, bool, bool, str | None]) -> RunStats:
    stats = RunStats()
    for status, ok, invalid, kind in records:
        stats.add(status=status, ok=ok, invalid=invalid, latency_ms=None, error_kind=kind)
    return stats


@pytest.mark.parametrize(
    ("stats", "calls"),
    [
        pytest.param(stats_of(), {}, id="empty"),
        pytest.param(stats_of((200, True, False, None)) , {("200", ""): 1}, id="ok"),
        pytest.param(
            stats_of((200, True, False, None), (200, False, False, "too_large"),
                     (503, False, False, "http_503"), (None, False, False, "timeout"),
                     (None, False, True, "invalid"), (None, False, True, None),
                     (None, False, False, "dropped")),
            {("200", ""): 1, ("200", "too_large"): 1, ("503", "http_503"): 1,
             ("", "timeout"): 1, ("", "invalid"): 2, ("", "dropped"): 1},
            id="every-shape",
        ),
        pytest.param(
            stats_of(*[(404, False, False, "http_404")] * 3), {("404", "http_404"): 3},
            id="no-ok-left-over",
        ),
        pytest.param(
            stats_of(*[(None, True, False, "dry_run")] * 3, (None, False, True, "invalid")),
            {("", "dry_run"): 3, ("", "invalid"): 1}, id="dry-run-records-are-ok-calls",
        ),
    ],
)  # fmt: skip
def test_tally_of_labels_every_record_once(
    stats: RunStats, calls: dict[tuple[str, str], int]
) -> None:
    t = tally_of(stats, token_renewals=2, events_read=9, scheduled=4)
    assert dict(+t.calls) == calls
    assert t.done == stats.events
    assert t.ok == stats.ok  # as the summary counts them
    assert (t.token_renewals, t.events_read, t.scheduled) == (2, 9, 4)


def test_tally_of_copies_the_histograms() -> None:
    stats = RunStats()
    stats.latency.record(5.0)
    corrected, lag = hist(7.0), hist(1.0)
    t = tally_of(stats, corrected=corrected, lag=lag)
    stats.latency.record(6.0)
    corrected.record(8.0)
    lag.record(2.0)
    assert (t.latency.count, t.corrected.count, t.lag.count) == (1, 1, 1)


A = tally({("200", ""): 10, ("503", "http_503"): 2}, latency=(1.0, 2.0, 3.0), lag=(0.5,),
          attempts=14, retries={"http_503": 2}, renewals=1, read=12, scheduled=12)  # fmt: skip
B = tally({("200", ""): 4, ("", "timeout"): 1}, latency=(40.0,), lag=(3.0, 4.0),
          attempts=6, retries={"timeout": 1}, read=5, scheduled=6)  # fmt: skip


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        pytest.param([], tally(), id="nothing"),
        pytest.param([A], A, id="one"),
        pytest.param(
            [A, B],
            tally({("200", ""): 14, ("503", "http_503"): 2, ("", "timeout"): 1},
                  latency=(1.0, 2.0, 3.0, 40.0), lag=(0.5, 3.0, 4.0), attempts=20,
                  retries={"http_503": 2, "timeout": 1}, renewals=1, read=17, scheduled=18),
            id="two",
        ),
    ],
)  # fmt: skip
def test_tally_add(parts: list[Tally], expected: Tally) -> None:
    total = Tally()
    for part in parts:
        total.add(part)
    assert same(total, expected)


def test_tally_add_leaves_its_argument_alone() -> None:
    before = A.copy()
    total = B.copy()
    total.add(A)
    assert same(A, before)
    total.calls[("200", "")] += 1
    total.latency.record(9.0)
    assert same(A, before)


# (a worker's successive snapshots; the deltas it sends, summed by the parent, must give
# its last snapshot back exactly, whatever the number and spacing of the reports)
def growth(n: int) -> list[Tally]:
    snaps, stats = [], RunStats()
    lag = Histogram()
    for i in range(n):
        for j in range(i % 4):  # some reports carry nothing new
            k = 10 * i + j
            kind = None if k % 7 else "http_503"
            stats.add(status=200 if kind is None else 503, ok=kind is None, invalid=False,
                      latency_ms=0.3 + k % 50, error_kind=kind,
                      attempts=1 + (k % 7 == 0))  # fmt: skip
            if kind:
                stats.retries["http_503"] += 1
            lag.record(k % 3)
        snaps.append(tally_of(stats, lag=lag, events_read=stats.events, scheduled=stats.events))
    return snaps


@pytest.mark.parametrize(
    "reports",
    [
        pytest.param(1, id="one-report"),
        pytest.param(2, id="two-reports"),
        pytest.param(9, id="many-reports-some-empty"),
    ],
)
@pytest.mark.parametrize("workers", [1, 3])
def test_deltas_sent_and_summed_give_the_total(reports: int, workers: int) -> None:
    parent = Tally()
    finals = []
    for w in range(workers):
        sent = Tally()
        for now in growth(reports + w):
            delta, sent = now.minus(sent), now  # as multiproc/child.py's _send_live
            parent.add(delta)  # as multiproc/parent.py on LiveFigures
        finals.append(sent)
    expected = Tally()
    for final in finals:
        expected.add(final)
    assert same(parent, expected)
    assert parent.latency.percentile(99) == expected.latency.percentile(99)


@pytest.mark.parametrize(
    ("now", "base", "delta"),
    [
        pytest.param(A, A, tally(), id="nothing-new"),
        pytest.param(A, tally(), A, id="from-nothing"),
        pytest.param(
            tally({("200", ""): 5}, latency=(1.0, 50.0), read=8),
            tally({("200", ""): 3}, latency=(1.0,), read=6),
            tally({("200", ""): 2}, latency=(50.0,), read=2),
            id="only-what-is-new",
        ),
    ],
)
def test_tally_minus(now: Tally, base: Tally, delta: Tally) -> None:
    got = now.minus(base)
    assert same(got, delta)
    base_again = base.copy()
    base_again.add(got)
    assert same(base_again, now)


@pytest.mark.parametrize(
    ("values_ms", "bounds_s", "buckets"),
    [
        pytest.param((), (0.001, 0.01), [("0.001", 0), ("0.01", 0), ("+Inf", 0)], id="empty"),
        pytest.param(
            (0.5, 0.9, 5.0, 9.0, 50.0), (0.001, 0.01, 0.1),
            [("0.001", 2), ("0.01", 4), ("0.1", 5), ("+Inf", 5)], id="each-in-its-bucket",
        ),
        pytest.param(
            (2.0, 20_000.0, 60_000.0), (0.001, 0.01),
            [("0.001", 0), ("0.01", 1), ("+Inf", 3)], id="beyond-the-last-bound",
        ),
        pytest.param(
            (0.0, 0.0001), (0.001,), [("0.001", 2), ("+Inf", 2)], id="zero-and-tiny",
        ),
        pytest.param(
            (0.995, 1.005), (0.001, 0.0025),
            [("0.001", 1), ("0.0025", 2), ("+Inf", 2)], id="within-1pct-of-a-bound",
        ),
        pytest.param(
            (3.0,) * 1000, (0.0025, 0.005), [("0.0025", 0), ("0.005", 1000), ("+Inf", 1000)],
            id="many-alike",
        ),
    ],
)  # fmt: skip
def test_cumulative_buckets(
    values_ms: tuple[float, ...], bounds_s: tuple[float, ...], buckets: list[tuple[str, int]]
) -> None:
    got = cumulative(hist(*values_ms), bounds_s)
    assert got == [(le, float(n)) for le, n in buckets]


@pytest.mark.parametrize("seed", range(5))
def test_cumulative_is_monotone_and_ends_with_the_count(seed: int) -> None:
    from engine.observe.metrics import BUCKETS_S

    h = Histogram()
    for i in range(500):
        h.record(((i * 7919 + seed * 104729) % 100_000) / 7.0)  # 0 .. ~14 s
    got = cumulative(h, BUCKETS_S)
    counts = [n for _, n in got]
    assert counts == sorted(counts)
    assert got[-1] == ("+Inf", 500.0)
    assert [le for le, _ in got[:-1]] == [f"{b:g}" for b in BUCKETS_S]
    # each bound holds the values below it, to the histogram's 1%
    values = [((i * 7919 + seed * 104729) % 100_000) / 7.0 for i in range(500)]
    for (le, n), bound in zip(got, BUCKETS_S, strict=False):
        low = sum(v <= bound * 1000 * 0.99 for v in values)
        high = sum(v <= bound * 1000 * 1.01 for v in values)
        assert low <= n <= high, (le, n, low, high)


@pytest.mark.parametrize(
    ("progress", "fraction", "elapsed", "eta"),
    [
        pytest.param(Progress(0, 1000, "bytes"), 0.0, 5.0, None, id="nothing-read"),
        pytest.param(Progress(250, 1000, "bytes"), 0.25, 5.0, 15.0, id="quarter"),
        pytest.param(Progress(1000, 1000, "bytes"), 1.0, 5.0, 0.0, id="all-read"),
        pytest.param(Progress(1200, 1000, "bytes"), 1.0, 5.0, 0.0, id="more-than-the-size"),
        pytest.param(Progress(0, 0, "bytes"), 1.0, 5.0, None, id="empty-input"),
        pytest.param(Progress(10, 40, "events"), 0.25, 0.0, None, id="no-time-yet"),
        pytest.param(Progress(3, 10, "seconds"), 0.3, 3.0, 7.0, id="schedule"),
        pytest.param(Progress(12, 10, "seconds"), 1.0, 12.0, 0.0, id="schedule-over"),
    ],
)
def test_progress(progress: Progress, fraction: float, elapsed: float, eta: float | None) -> None:
    assert progress.fraction == pytest.approx(fraction)
    assert progress.eta(elapsed) == (None if eta is None else pytest.approx(eta))


@pytest.mark.parametrize(
    ("counts", "size", "taken", "done", "expected"),
    [
        pytest.param(ReadCounts(bytes_read=1000), 4000, 250, 250, (1000, 4000), id="answered"),
        pytest.param(ReadCounts(bytes_read=4000), 4000, 400, 100, (1000, 4000), id="read-ahead"),
        pytest.param(ReadCounts(bytes_read=900), 4000, 0, 0, (900, 4000), id="nothing-taken"),
        pytest.param(
            ReadCounts(bytes_read=1000, bytes_skipped=3000), 4000, 70, 70, (1000, 1000),
            id="a-shards-share",
        ),
        pytest.param(
            ReadCounts(bytes_read=0, bytes_skipped=4000), 4000, 0, 0, (0, 1), id="no-share",
        ),
    ],
)  # fmt: skip
def test_input_share(
    counts: ReadCounts, size: int, taken: int, done: int, expected: tuple[int, int]
) -> None:
    """The one home of the bytes' progress (the terminal's bar and the observers')."""
    share = input_share(counts, size, taken, done)
    assert (share.done, share.total, share.unit) == (*expected, "bytes")


@pytest.mark.parametrize(
    ("view", "text"),
    [
        pytest.param(TokenView(), "none", id="none"),
        pytest.param(TokenView("static"), "static", id="static"),
        pytest.param(TokenView("static", failed="refused (401)"), "failed: refused (401)",
                     id="static-refused"),
        pytest.param(TokenView("dynamic"),
                     "no token yet; 0 fetched, 0 renewals, 0 failed, 0 calls waited", id="awaited"),
        pytest.param(TokenView("dynamic", ttl=899.6, fetched=2, renewals=1, waits=3),
                     "valid 900s; 2 fetched, 1 renewals, 0 failed, 3 calls waited", id="valid"),
        pytest.param(TokenView("dynamic", ttl=-2.0, fetched=1, failures=4),
                     "expired, waiting for a new one; 1 fetched, 0 renewals, 4 failed, "
                     "0 calls waited", id="expired"),
        pytest.param(TokenView("dynamic", ttl=5.0, failed="token endpoint down"),
                     "failed: token endpoint down", id="gave-up"),
    ],
)  # fmt: skip
def test_token_view_text(view: TokenView, text: str) -> None:
    assert view.text() == text


def result(scheduled_at: float | None, sent_at: float | None) -> Result:
    return Result(0, None, "x:1", 200, True, 1, 1.0, sent_at, None, None,
                  scheduled_at=scheduled_at)  # fmt: skip


@pytest.mark.parametrize(
    ("results", "count", "total_ms"),
    [
        pytest.param([], 0, 0.0, id="none"),
        pytest.param([result(100.0, 100.25)], 1, 250.0, id="late"),
        pytest.param([result(100.0, 99.5)], 1, 0.0, id="early-counts-as-zero"),
        pytest.param([result(None, 100.0)], 0, 0.0, id="a-run-has-no-schedule"),
        pytest.param([result(100.0, None)], 0, 0.0, id="dropped-never-sent"),
        pytest.param([result(1.0, 1.002), result(2.0, 2.004)], 2, 6.0, id="two"),
    ],
)
def test_record_lag(results: list[Result], count: int, total_ms: float) -> None:
    lag = Histogram()
    record_lag(lag, results)
    assert lag.count == count
    assert lag.total == pytest.approx(total_ms)


# -- core/timeline.py -------------------------------------------------------------------


def snap(t: float, base: Tally, *, mode: Any = "load", **gauges: Any) -> Snapshot:
    return Snapshot(mode, t, base, **gauges)


S1 = tally({("200", ""): 10}, latency=(1.0,) * 10, scheduled=10)
S2 = tally({("200", ""): 30, ("503", "http_503"): 5}, latency=(1.0,) * 10 + (9.0,) * 25,
           scheduled=40)  # fmt: skip


@pytest.mark.parametrize(
    ("snaps", "point"),
    [
        pytest.param(
            [snap(1.0, S1, target_rate=10.0, in_flight=2)],
            {"i": 0, "t": 1.0, "rate": 10.0, "target": 10.0, "scheduled": 10.0,
             "in_flight": 2, "send": [1.0, 1.0, 1.0], "schedule": [2.0, 2.0, 2.0],
             "errors": {}},
            id="first-second",
        ),
        pytest.param(
            [snap(1.0, S1), snap(1.5, S2, target_rate=50.0)],
            {"i": 1, "t": 1.5, "rate": 50.0, "target": 50.0, "scheduled": 60.0,
             "in_flight": 0, "send": [9.0, 9.0, 9.0], "schedule": [18.0, 18.0, 18.0],
             "errors": {"http_503": 5}},
            id="only-the-calls-since-the-last-point",
        ),
        pytest.param(
            [snap(1.0, S1), snap(2.0, S1)],
            {"i": 1, "t": 2.0, "rate": 0.0, "target": None, "scheduled": 0.0,
             "in_flight": 0, "send": [None, None, None], "schedule": [None, None, None],
             "errors": {}},
            id="a-quiet-second",
        ),
        pytest.param(
            [snap(1.0, S1, mode="run", target_rate=10.0)],
            {"i": 0, "t": 1.0, "rate": 10.0, "target": 10.0, "scheduled": None,
             "in_flight": 0, "send": [1.0, 1.0, 1.0], "schedule": None, "errors": {}},
            id="a-run-has-no-schedule",
        ),
        pytest.param(
            [snap(0.0, S1)],
            {"i": 0, "t": 0.0, "rate": 0.0, "target": None, "scheduled": None,
             "in_flight": 0, "send": [1.0, 1.0, 1.0], "schedule": [2.0, 2.0, 2.0],
             "errors": {}},
            id="no-time-no-rate",
        ),
    ],
)  # fmt: skip
def test_timeline_point(snaps: list[Snapshot], point: dict[str, Any]) -> None:
    timeline = Timeline()
    for s in snaps:
        last = timeline.push(s)
    got = {k: pytest.approx(v, rel=0.02) if isinstance(v, list) and v[0] else v
           for k, v in last.items()}  # fmt: skip
    assert got == point
    assert timeline.pushed == len(snaps)


@pytest.mark.parametrize(
    ("pushes", "max_points", "since", "indexes"),
    [
        pytest.param(0, 900, 0, [], id="none-yet"),
        pytest.param(5, 900, 0, [0, 1, 2, 3, 4], id="all"),
        pytest.param(5, 900, 3, [3, 4], id="what-the-page-has-not-seen"),
        pytest.param(5, 900, 5, [], id="nothing-new"),
        pytest.param(5, 900, 99, [], id="from-the-future"),
        pytest.param(10, 3, 0, [7, 8, 9], id="bounded-oldest-dropped"),
        pytest.param(10, 3, 8, [8, 9], id="bounded-since"),
        pytest.param(10, 0, 0, [8, 9], id="at-least-two"),
    ],
)
def test_timeline_since(pushes: int, max_points: int, since: int, indexes: list[int]) -> None:
    timeline = Timeline(max_points=max_points)
    grown = Tally()
    for i in range(pushes):
        grown.add(tally({("200", ""): i}))
        timeline.push(snap(float(i + 1), grown.copy()))
    assert [p["i"] for p in timeline.since(since)] == indexes
    assert timeline.pushed == pushes


def test_timeline_keeps_a_copy_not_the_live_tally() -> None:
    """The run's own Tally changes after a push; the next point's delta must not lose it."""
    timeline = Timeline()
    live = tally({("200", ""): 5})
    timeline.push(snap(1.0, live))
    live.calls[("200", "")] += 7  # the same object, grown
    assert timeline.push(snap(2.0, live))["rate"] == 7.0


# -- /metrics of a snapshot (observe/metrics.py, no server) -----------------------------

SERIES = {
    # name: (type, label names)
    "adbatch_calls": ("counter", {"status", "error_kind"}),
    "adbatch_attempts": ("counter", set()),
    "adbatch_call_duration_seconds": ("histogram", {"le"}),
    "adbatch_schedule_lag_seconds": ("histogram", {"le"}),
    "adbatch_in_flight": ("gauge", set()),
    "adbatch_dropped": ("counter", set()),
    "adbatch_retries": ("counter", {"reason"}),
    "adbatch_token_renewals": ("counter", set()),
    "adbatch_target_rate": ("gauge", set()),
    "adbatch_events_read": ("counter", set()),
}


def exposition(snapshot: Snapshot) -> str:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from engine.observe.metrics import RunCollector
    from engine.runtime.watch import Watch

    watch = Watch(snapshot.mode)
    watch.attach(lambda elapsed: snapshot)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(watch))
    return generate_latest(registry).decode()


FULL = tally(
    {("200", ""): 10, ("503", "http_503"): 2, ("", "timeout"): 1, ("", DROPPED): 3},
    latency=(0.5, 2.0, 2.0, 30.0, 30_000.0), lag=(0.2, 4.0), attempts=16,
    retries={"http_503": 3, "timeout": 1}, renewals=2, read=16, scheduled=16,
)  # fmt: skip


@pytest.mark.parametrize(
    ("snapshot", "absent"),
    [
        pytest.param(Snapshot("load", 3.0, FULL, in_flight=4, target_rate=50.0), set(),
                     id="load"),
        pytest.param(Snapshot("replay", 3.0, FULL, in_flight=4), {"adbatch_target_rate"},
                     id="replay-asks-no-rate"),
        pytest.param(Snapshot("run", 3.0, FULL, in_flight=4, target_rate=50.0),
                     {"adbatch_schedule_lag_seconds"}, id="run-has-no-schedule"),
    ],
)  # fmt: skip
def test_metrics_names_types_labels_values(snapshot: Snapshot, absent: set[str]) -> None:
    declared = {f.name: f for f in text_string_to_metric_families(exposition(snapshot))}
    families = {name: f for name, f in declared.items() if f.samples}
    assert set(families) == set(SERIES) - absent  # with a sample
    assert set(declared) <= set(SERIES)
    for name, family in families.items():
        kind, labels = SERIES[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert set(sample.labels) <= labels, (name, sample)
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    calls = {k[1]: v for k, v in values.items() if k[0] == "adbatch_calls_total"}
    assert calls == {
        (("error_kind", ""), ("status", "200")): 10,
        (("error_kind", "http_503"), ("status", "503")): 2,
        (("error_kind", "timeout"), ("status", "")): 1,
        (("error_kind", "dropped"), ("status", "")): 3,
    }
    assert values[("adbatch_attempts_total", ())] == 16
    assert values[("adbatch_dropped_total", ())] == 3
    assert values[("adbatch_retries_total", (("reason", "http_503"),))] == 3
    assert values[("adbatch_retries_total", (("reason", "timeout"),))] == 1
    assert values[("adbatch_token_renewals_total", ())] == 2
    assert values[("adbatch_events_read_total", ())] == 16
    assert values[("adbatch_in_flight", ())] == 4
    duration = dict(
        (s.labels["le"], s.value)
        for s in families["adbatch_call_duration_seconds"].samples
        if s.name.endswith("_bucket")
    )
    assert (duration["0.001"], duration["0.0025"], duration["0.05"]) == (1, 3, 4)
    assert (duration["10"], duration["+Inf"]) == (4, 5)  # 30 s: past the last bound
    assert values[("adbatch_call_duration_seconds_count", ())] == 5
    assert values[("adbatch_call_duration_seconds_sum", ())] == pytest.approx(30.0345)
    if "adbatch_target_rate" not in absent:
        assert values[("adbatch_target_rate", ())] == 50.0
    if "adbatch_schedule_lag_seconds" not in absent:
        assert values[("adbatch_schedule_lag_seconds_count", ())] == 2
        assert values[("adbatch_schedule_lag_seconds_sum", ())] == pytest.approx(0.0042)


def test_metrics_of_a_finished_run_show_nothing_in_flight() -> None:
    from engine.runtime.watch import Watch

    watch = Watch("load")
    watch.attach(lambda elapsed: Snapshot("load", elapsed, FULL, in_flight=4, target_rate=5.0))
    watch.finished = True
    snapshot = watch.snapshot()
    assert (snapshot.in_flight, snapshot.finished, snapshot.tally.done) == (0, True, 16)
    assert "adbatch_in_flight 0.0" in exposition(snapshot)
