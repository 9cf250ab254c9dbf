"""When a run stops itself (core/stops.py), tables with plain floats for the clock; the
internal record and the transient kinds (core/records.py); the exit code of each stop."""

from __future__ import annotations

import pytest

from engine.core.call import Authorize, Backoff, CallFlow, Permit, Send, SlowDown
from engine.core.events import Event, Invalid
from engine.core.records import ErrorKind, Response, internal, is_transient, parse_record
from engine.core.retry import RetryPolicy, RetrySettings
from engine.core.secrets import Secrets
from engine.core.stats import RunStats, summarize
from engine.core.stops import EXIT_INTERNAL, InternalStreak, OutageWatch, ThrottleWatch

EVENT = Event(3, "in.jsonl:4", "ev-3", None, (("event-type", "viewHome"),), ())


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- internal errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kinds", "stops_at"),
    [
        pytest.param(["internal"] * 20, 20, id="20-in-a-row"),
        pytest.param(["internal"] * 19, None, id="19-is-not-enough"),
        pytest.param(["internal"] * 10 + [None] + ["internal"] * 19, None, id="an-ok-breaks-it"),
        pytest.param(
            ["internal"] * 10 + ["invalid"] + ["internal"] * 20, 31, id="any-other-record-breaks-it"
        ),
        pytest.param(["http_500", "timeout"] * 30, None, id="other-failures-never-stop"),
    ],
)
def test_internal_streak(kinds: list[str | None], stops_at: int | None) -> None:
    streak = InternalStreak()
    stopped = None
    for n, kind in enumerate(kinds, 1):
        stop = streak.add(kind, "KeyError: 'x'")
        if stop is not None:
            stopped = n
            assert stop.exit_code == EXIT_INTERNAL == 70
            assert "20 events in a row failed with an internal error" in stop.reason
            assert "(last: KeyError: 'x')" in stop.reason
            assert "--resume" in stop.reason
            assert "\n" not in stop.reason
            break
    assert stopped == stops_at


# -- throttled for good ------------------------------------------------------------------

# Each step: (time, what happened): an attempt's status ("saw 429"), or a record that
# ended with a status ("final 429"). `gives_up`: the step (1-based) that stops the run.
Step = tuple[float, str]


@pytest.mark.parametrize(
    ("steps", "gives_up"),
    [
        pytest.param(
            [
                (0.0, "saw 429"),
                (0.5, "saw 429"),
                (0.5, "final 429"),
                (1.0, "saw 503"),
                (1.0, "final 503"),
            ],
            5,
            id="refused-for-the-whole-time",
        ),
        pytest.param(
            [(0.0, "saw 429"), (0.9, "saw 429"), (0.9, "final 429")],
            None,
            id="not-yet-long-enough",
        ),
        pytest.param(
            [
                (0.0, "saw 429"),
                (0.6, "saw 200"),
                (0.7, "saw 429"),
                (1.5, "saw 429"),
                (1.5, "final 429"),
            ],
            None,
            id="one-answer-between-starts-the-clock-again",
        ),
        pytest.param(
            [(0.0, "saw 429"), (0.6, "saw 404"), (1.6, "saw 429"), (2.7, "final 429")],
            4,
            id="timed-from-the-first-refusal-of-the-unbroken-run",
        ),
        pytest.param(
            [(0.0, "saw 429"), (0.5, "saw None"), (1.2, "saw 429"), (1.2, "final 429")],
            4,
            id="no-answer-neither-breaks-nor-extends-it",
        ),
        pytest.param(
            [(0.0, "saw 429"), (2.0, "saw 500"), (2.0, "final 500")],
            None,
            id="only-429-and-503-records-give-up",
        ),
        pytest.param([(5.0, "final 429")], None, id="a-record-without-a-refused-call"),
    ],
)
def test_throttle_watch(steps: list[Step], gives_up: int | None) -> None:
    clock = Clock(0.0)
    watch = ThrottleWatch(1.0, clock)
    stopped = None
    for n, (now, what) in enumerate(steps, 1):
        clock.now = now
        verb, _, status_text = what.partition(" ")
        status = None if status_text == "None" else int(status_text)
        if verb == "saw":
            watch.saw(status)
            continue
        stop = watch.final(status)
        if stop is not None:
            stopped = n
            assert stop.exit_code == 3
            assert "the server has refused every call" in stop.reason
            assert "--resume picks up the rest" in stop.reason
            break
    assert stopped == gives_up


def test_give_up_after_zero_stops_at_the_first_refused_record() -> None:
    watch = ThrottleWatch(0.0, Clock())
    watch.saw(503)
    assert watch.final(503) is not None


def test_the_call_flow_tells_the_watch_every_attempt() -> None:
    """Two events refused on every attempt, a second apart on the injected clock: the
    second record ends the run; a success on any attempt would have reset the clock."""
    clock = Clock(0.0)
    watch = ThrottleWatch(1.0, clock)
    flow = CallFlow(
        RetryPolicy(RetrySettings(retries=1), rand=lambda: 0.5),
        clock=clock,
        wall_clock=lambda: 1_800_000_000.0,
        throttle=watch,
    )

    def run_event(statuses: list[int]) -> int | None:
        answers = iter(statuses)
        gen = flow.start(EVENT)
        effect = next(gen)
        try:
            while True:
                match effect:
                    case Permit() | Backoff() | SlowDown():
                        effect = gen.send(True)
                    case Authorize():
                        effect = gen.send("Bearer t")
                    case Send():
                        effect = gen.send(Response(next(answers), b"", 0.0, 1.0))
                        clock.now += 0.5  # each call takes half a second
        except StopIteration as done:
            record = done.value
        assert record is not None
        status: int | None = record.status
        return status

    assert run_event([429, 429]) == 429
    assert watch.final(429) is None  # refused for 0.5 s so far (the clock read at 0)
    assert run_event([503, 503]) == 503
    stop = watch.final(503)
    assert stop is not None
    assert "for 1 s" in stop.reason  # since the first refusal, at 0
    assert run_event([429, 200]) == 200
    assert watch.since is None


# -- the internal record and what --resume sends again ----------------------------------


def test_internal_record_is_one_redacted_line() -> None:
    secrets = Secrets(("s3cret-token-value",))
    exc = RuntimeError("token store said:\n  s3cret-token-value\tis gone")
    record = internal(EVENT, exc, secrets)
    assert record.error == "RuntimeError: token store said: [redacted] is gone"
    assert (record.status, record.ok, record.error_kind) == (None, False, ErrorKind.INTERNAL)
    assert (record.seq, record.id, record.source) == (3, "ev-3", "in.jsonl:4")
    assert record.response is None
    line = parse_record(record.to_json())
    assert line is not None
    assert line.transient


def test_internal_record_of_an_invalid_item_and_a_long_message() -> None:
    item = Invalid(5, "in.jsonl:6", None, "bad")
    record = internal(item, KeyError("k" * 5000))
    assert record.error is not None
    assert record.error.startswith("KeyError: 'kkk")
    assert len(record.error) <= 300


@pytest.mark.parametrize(
    ("status", "kind", "transient"),
    [
        pytest.param(None, "internal", True, id="internal"),
        pytest.param(None, "timeout", True, id="timeout"),
        pytest.param(None, "connect", True, id="connect"),
        pytest.param(None, "network", True, id="network"),
        pytest.param(None, "disconnected", True, id="disconnected"),
        pytest.param(401, "http_401", True, id="401"),
        pytest.param(408, "http_408", True, id="408"),
        pytest.param(429, "http_429", True, id="429"),
        pytest.param(500, "http_500", True, id="500"),
        pytest.param(501, "http_501", True, id="501"),
        pytest.param(503, "http_503", True, id="503"),
        pytest.param(200, None, False, id="200"),
        pytest.param(400, "http_400", False, id="400"),
        pytest.param(404, "http_404", False, id="404"),
        pytest.param(None, "invalid", False, id="invalid"),
        pytest.param(None, "protocol", False, id="protocol"),
        pytest.param(200, "too_large", False, id="too-large-200"),
        pytest.param(None, "dropped", False, id="dropped"),
    ],
)
def test_transient_records(status: int | None, kind: str | None, transient: bool) -> None:
    assert is_transient(status, kind) is transient


# -- exit codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stopped", "stop_code", "interrupted", "exit_code"),
    [
        pytest.param(None, 3, None, 0, id="finished"),
        pytest.param("token refused", 3, None, 3, id="could-not-go-on"),
        pytest.param("20 internal errors", 70, None, 70, id="internal-streak"),
        pytest.param("interrupted", 70, 2, 130, id="a-signal-wins"),
    ],
)
def test_exit_codes(
    stopped: str | None, stop_code: int, interrupted: int | None, exit_code: int
) -> None:
    summary = summarize(
        RunStats(), elapsed_s=1.0, stopped=stopped, stop_code=stop_code, interrupted=interrupted
    )
    assert summary.exit_code == exit_code


# -- unreachable now ---------------------------------------------------------------------

Record = tuple[float, int | None, str | None]  # (clock, status, error_kind)
CONNECT = ErrorKind.CONNECT


@pytest.mark.parametrize(
    ("records", "gives_up"),
    [
        pytest.param(
            [(0, None, CONNECT), (0.5, None, CONNECT), (1.0, None, CONNECT)],
            3,
            id="connect-failures-for-the-whole-window",
        ),
        pytest.param(
            [(0, 200, None), (0.1, None, CONNECT), (1.0, None, CONNECT)],
            None,
            id="timed-from-the-first-failure-not-the-last-answer",
        ),
        pytest.param(
            [(0, None, CONNECT), (0.6, 200, None), (1.2, None, CONNECT)],
            None,
            id="a-short-outage-that-recovers",
        ),
        pytest.param(
            [(0, None, CONNECT), (0.6, 503, "http_503"), (1.2, None, CONNECT)],
            None,
            id="any-http-answer-means-reachable",
        ),
        pytest.param(
            [(0, None, CONNECT), (0.6, None, "timeout"), (1.0, None, CONNECT)],
            3,
            id="no-answer-neither-breaks-nor-extends",
        ),
        pytest.param(
            [(0, None, "timeout"), (0.5, None, "invalid"), (2.0, None, "timeout")],
            None,
            id="only-connect-failures-count",
        ),
    ],
)
def test_outage_watch(records: list[Record], gives_up: int | None) -> None:
    clock = Clock(0.0)
    watch = OutageWatch(1.0, clock, "http://127.0.0.1:1/delivery")
    stopped = None
    for n, (now, status, kind) in enumerate(records, 1):
        clock.now = now
        stop = watch.add(status, kind, "cannot connect to 127.0.0.1:1: Connection refused")
        if stop is not None:
            stopped = n
            assert stop.exit_code == 3
            assert "cannot reach the delivery endpoint http://127.0.0.1:1/delivery" in stop.reason
            assert "--resume sends the rest" in stop.reason
            break
    assert stopped == gives_up


def test_an_unreachable_proxy_is_named_as_such() -> None:
    watch = OutageWatch(0.0, Clock(), "http://127.0.0.1:1/delivery")
    stop = watch.add(None, CONNECT, "cannot connect to proxy http://127.0.0.1:3/: refused")
    assert stop is not None
    assert stop.reason.startswith("cannot reach the proxy: ")
