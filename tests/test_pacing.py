"""The pure pacers against tables of expected send times (no clock, no sleeping)."""

from __future__ import annotations

import math
from bisect import bisect_left

import pytest

from engine.core.pacing import (
    CatchUp,
    RatePacer,
    ReorderWindow,
    ReplaySchedule,
    constant,
    parse_duration,
    parse_stages,
    ramp,
    stages,
)
from engine.errors import ConfigError


def schedule(pacer: RatePacer, limit: int = 10_000) -> list[float]:
    """Every due time of a finite schedule, rounded to the microsecond."""
    out = []
    for n in range(limit):
        due = pacer.due(n)
        if due is None:
            return out
        out.append(round(due, 6))
    raise AssertionError("schedule did not end")


@pytest.mark.parametrize(
    ("pacer", "expected"),
    [
        pytest.param(constant(10, 1), [i / 10 for i in range(10)], id="constant-10/s-1s"),
        pytest.param(constant(4, 0.5), [0.0, 0.25], id="constant-end-is-exclusive"),
        pytest.param(constant(3, 1), [0.0, 0.333333, 0.666667], id="constant-fractional"),
        # rate 0 -> 4 over 2 s: hits(t) = t^2, so hit n is due at sqrt(n)
        pytest.param(ramp(0, 4, 2), [0.0, 1.0, 1.414214, 1.732051], id="ramp-up-from-0"),
        # rate 4 -> 0 over 2 s: hits(t) = 4t - t^2 -> t = 2 - sqrt(4 - n)
        pytest.param(ramp(4, 0, 2), [0.0, 0.267949, 0.585786, 1.0], id="ramp-down-to-0"),
        # rate 2 -> 6 over 1 s: hits(t) = 2t + 2t^2 (4 hits in all)
        pytest.param(ramp(2, 6, 1), [0.0, 0.366025, 0.618034, 0.822876], id="ramp-2-to-6"),
        # step: 0s jump to 2/s for 1 s, then 0s jump to 4/s for 0.5 s
        pytest.param(
            stages([(0, 2), (1, 2), (0, 4), (0.5, 4)]),
            [0.0, 0.5, 1.0, 1.25],
            id="stages-steps",
        ),
        # k6 stages: ramp 0 -> 4 in 2 s (hits at sqrt(n)), hold 4/s for 1 s, ramp down
        pytest.param(
            stages([(2, 4), (1, 4), (1, 0)]),
            [0.0, 1.0, 1.414214, 1.732051, 2.0, 2.25, 2.5, 2.75, 3.0, 3.292893],
            id="stages-k6-ramp-hold-down",
        ),
        # a pause (0/s for 1 s) between two 2/s stages
        pytest.param(
            stages([(0, 2), (1, 2), (0, 0), (1, 0), (0, 2), (1, 2)]),
            [0.0, 0.5, 2.0, 2.5],
            id="stages-with-pause",
        ),
    ],
)
def test_due_times(pacer: RatePacer, expected: list[float]) -> None:
    assert schedule(pacer) == pytest.approx(expected, abs=1e-6)
    assert pacer.total_hits == len(expected)


@pytest.mark.parametrize(
    ("pacer", "elapsed", "hits", "expected"),
    [
        pytest.param(constant(10, 1), 0.0, 0, (0.0, False), id="first-hit-now"),
        pytest.param(constant(10, 1), 0.0, 1, (0.1, False), id="wait-for-second"),
        pytest.param(constant(10, 1), 0.35, 4, (0.05, False), id="mid-run"),
        pytest.param(constant(10, 1), 0.5, 2, (0.0, False), id="behind-no-wait"),
        pytest.param(constant(10, 1), 0.95, 10, (0.0, True), id="over"),
        pytest.param(constant(10), 100.0, 5000, (400.0, False), id="no-duration"),
        pytest.param(ramp(0, 4, 2), 0.5, 1, (0.5, False), id="ramp"),
        pytest.param(
            stages([(0, 2), (1, 2), (0, 0), (1, 0), (0, 2), (1, 2)]),
            0.6,
            2,
            (1.4, False),
            id="wait-through-pause",
        ),
    ],
)
def test_pace(pacer: RatePacer, elapsed: float, hits: int, expected: tuple[float, bool]) -> None:
    wait, stop = pacer.pace(elapsed, hits)
    assert (round(wait, 9), stop) == expected


def test_long_constant_run_has_exact_count() -> None:
    pacer = constant(200, 3)
    assert pacer.total_hits == 600
    assert pacer.due(599) == pytest.approx(2.995)
    assert pacer.due(600) is None
    assert constant(7, math.inf).total_hits is None


@pytest.mark.parametrize(
    ("timestamps", "kwargs", "expected"),
    [
        pytest.param([100, 101, 103, 110], {}, [0, 1, 3, 10], id="real-time"),
        pytest.param([100, 101, 103, 110], {"speed": 5}, [0, 0.2, 0.6, 2.0], id="speed-5"),
        pytest.param([100, 101, 103, 110], {"speed": 0.5}, [0, 2, 6, 20], id="half-speed"),
        pytest.param([100, 101, 400, 401], {"max_gap": 5}, [0, 1, 6, 7], id="max-gap-clamps-idle"),
        pytest.param(
            [100, 110, 130], {"speed": 2, "max_gap": 4}, [0, 4, 8], id="max-gap-is-wall-time"
        ),
        pytest.param([100, 102, 101, 103], {}, [0, 2, 2, 3], id="late-goes-at-once"),
        pytest.param(
            [100, 100, 100, 105], {"rate": 10}, [0, 0.1, 0.2, 5], id="rate-cap-delays-burst"
        ),
        pytest.param(
            [0, 0.01, 0.02, 0.03], {"rate": 50}, [0, 0.02, 0.04, 0.06], id="rate-cap-shifts-chain"
        ),
        pytest.param([5.5], {"speed": 3}, [0], id="single-event"),
    ],
)
def test_replay_schedule(
    timestamps: list[float], kwargs: dict[str, float], expected: list[float]
) -> None:
    sched = ReplaySchedule(**kwargs)
    assert [sched.due(t) for t in timestamps] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("size", "stamps", "order", "late"),
    [
        pytest.param(2, [1, 3, 2, 4, 5], [1, 2, 3, 4, 5], 0, id="fixes-small-disorder"),
        pytest.param(1, [1, 4, 2, 3, 5], [1, 2, 3, 4, 5], 0, id="window-one"),
        pytest.param(1, [5, 6, 7, 1, 8], [5, 6, 1, 7, 8], 1, id="too-late-counted"),
        pytest.param(0, [3, 1, 2], [3, 1, 2], 2, id="no-window"),
        pytest.param(8, [2, 2, 1], [1, 2, 2], 0, id="ties-keep-input-order"),
    ],
)
def test_reorder_window(size: int, stamps: list[int], order: list[int], late: int) -> None:
    window: ReorderWindow[str] = ReorderWindow(size)
    released = []
    for i, ts in enumerate(stamps):
        released += window.push(ts, f"e{i}")
    released += window.drain()
    assert [ts for ts, _ in released] == order
    assert window.late == late
    # ties come out in the order they went in
    if stamps == [2, 2, 1]:
        assert [name for _, name in released] == ["e2", "e0", "e1"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("90", 90.0, id="bare"),
        pytest.param("1.5s", 1.5, id="seconds"),
        pytest.param("500ms", 0.5, id="millis"),
        pytest.param("2m", 120.0, id="minutes"),
        pytest.param("1m30s", 90.0, id="combined"),
        pytest.param("1h", 3600.0, id="hour"),
        pytest.param("0s", 0.0, id="zero"),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("10x", id="unit"),
        pytest.param("-3", id="negative"),
        pytest.param("s", id="no-number"),
        pytest.param("1m 30s", id="space"),
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(text)


def test_parse_stages() -> None:
    assert parse_stages("30s:100, 1m:500,30s:0") == [(30.0, 100.0), (60.0, 500.0), (30.0, 0.0)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("30s", "DURATION:RATE", id="no-rate"),
        pytest.param("30s:fast", "not a number", id="bad-rate"),
        pytest.param("30s:-1", "0 or more", id="negative-rate"),
        pytest.param("x:1", "duration", id="bad-duration"),
    ],
)
def test_parse_stages_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_stages(text)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(lambda: constant(0, 1), "--rate", id="zero-rate"),
        pytest.param(lambda: ramp(0, 0, 5), "cannot both be 0", id="ramp-zero"),
        pytest.param(lambda: ramp(1, 5, math.inf), "finite", id="ramp-forever"),
        pytest.param(lambda: stages([(10, 0)]), "no call", id="stages-empty"),
        pytest.param(lambda: stages([]), "no call", id="stages-none"),
    ],
)
def test_bad_schedules(build: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        pytest.param([(0, 0), (0.1, 0.1), (0.2, 0.2)], [0, 0.1, 0.2], id="on-time-never-held"),
        pytest.param(
            [(0, 0), (0.1, 0.5), (0.2, 0.5), (0.3, 0.5), (0.4, 0.5), (0.5, 0.5), (0.6, 0.6)],
            [0, 0.5, 0.58, 0.66, 0.74, 0.82, 0.9],
            id="stall-spread-at-1.25x",
        ),
        pytest.param([(0, 0)] * 3 + [(0.5, 0.5)], [0, 0, 0, 0.5], id="scheduled-burst-allowed"),
        pytest.param(
            [(0, 0), (0.1, 0.35), (0.2, 0.35), (0.3, 0.35), (1.0, 1.0), (1.1, 1.1), (2, 2)],
            [0, 0.35, 0.43, 0.51, 1.07, 1.15, 2.0],
            id="lateness-shrinks-by-a-fifth-of-each-gap",
        ),
    ],
)
def test_catch_up(calls: list[tuple[float, float]], expected: list[float]) -> None:
    """(due, when the dispatcher is ready) -> when the call goes; 10/s, factor 1.25."""
    pacer = CatchUp(factor=1.25, slack=0.0)  # the rows are worked out at 1.25x
    sends = []
    for due, ready in calls:
        at = max(pacer.earliest(due), ready)
        pacer.sent(at)
        sends.append(at)
    assert sends == pytest.approx(expected)


@pytest.mark.parametrize(
    ("skip", "due", "elapsed", "missed"),
    [
        pytest.param(False, 0.0, 5.0, False, id="spread-never-misses"),
        pytest.param(True, 1.0, 1.05, False, id="skip-slightly-late-still-sent"),
        pytest.param(True, 1.0, 1.2, True, id="skip-missed-slot"),
    ],
)
def test_catch_up_skip(skip: bool, due: float, elapsed: float, missed: bool) -> None:
    assert CatchUp(skip=skip).missed(due, elapsed) is missed


def test_catch_up_bounds_every_100ms_window_after_a_stall() -> None:
    """500/s for 10 s, the client stalled from 1 s to 2 s: no 100 ms window holds more
    than the promised 1.25 x 50 sends (catching up at the default 1.15x leaves room for
    the slack and a window starting right on a send), every call is sent, and the
    schedule is caught up about 6.7 s later (the backlog of 500 drains at 75/s extra)."""
    pacer = CatchUp()
    sends = []
    for n in range(5000):
        due = n / 500
        ready = 2.0 if 1.0 <= due < 2.0 else due
        at = max(pacer.earliest(due), ready)
        pacer.sent(at)
        sends.append(at)
    busiest = _busiest_100ms(sends)
    assert busiest <= 1.25 * 50
    assert busiest > 55  # the backlog does go out faster than scheduled
    late = [s - n / 500 for n, s in enumerate(sends)]
    assert max(late) == pytest.approx(1.0)
    assert late[4500] == pytest.approx(0.0, abs=1e-6)  # due at 9 s: on time again


@pytest.mark.parametrize("overshoot", [0.0, 0.0002, 0.0005, 0.001])
def test_catch_up_drains_though_every_timer_wakes_late(overshoot: float) -> None:
    """500/s, a 1 s stall at 1 s, and every sleep waking `overshoot` s after its
    deadline (an event loop's timers do): the backlog still drains at about 1.15x the
    rate, not at the rate (counting each gap from the real send lost the catch-up: at
    0.5 ms a call, 476/s), and no 100 ms window goes past the promised 1.25x its share."""
    pacer = CatchUp()
    sends = []
    now = 0.0
    for n in range(5000):
        due = n / 500
        slot = pacer.earliest(due)
        if 1.0 <= now < 2.0:
            now = 2.0  # the stall: nothing runs from 1 s to 2 s
        now = max(now, slot + overshoot) if slot > now else now
        pacer.sent(now)
        sends.append(now)
    late = [s - n / 500 for n, s in enumerate(sends)]
    assert max(late) >= 0.99
    assert late[4500] <= 0.01 + overshoot  # due at 9 s: caught up (6.7 s at +75/s)
    busiest = _busiest_100ms(sends)
    assert busiest <= 1.25 * 50
    after = [sum(1 for s in sends if t <= s < t + 0.1) for t in (2.5, 3.0, 4.0)]
    assert min(after) >= 55  # catching up: ~57.5 a window, not 50


def _busiest_100ms(sends: list[float]) -> int:
    """The most sends in a 100 ms window starting at a send (sends in order)."""
    return max(bisect_left(sends, t + 0.1 - 1e-9) - i for i, t in enumerate(sends))
