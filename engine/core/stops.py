"""When a run stops itself (pure): the streaks that end a run early, and their exit codes.

Rules:
- Internal errors: an unexpected exception while handling one event (a bug) is that
  event's record (error kind "internal", records.internal) and the run goes on. When
  `INTERNAL_STREAK` records in a row end so, the bug is not one event's: the run stops
  with exit 70 (EX_SOFTWARE in sysexits.h). Any other record breaks the streak.
- Throttled for good: when the server has refused every call it answered with 429 or
  503 for `give_up_after` seconds and a record ends so (its retries spent: --retries,
  the retry budget, or a Retry-After past the cap), the run stops with exit 3; --resume
  sends those events again later. The refusals are timed from the first of an unbroken
  run of them (every attempt counts, retries too); any other HTTP answer breaks it, and
  calls that got no answer (timeouts, resets) neither break nor extend it.
- Unreachable now: when every call that ended has failed to connect (records of kind
  `connect`, their retries spent) for `give_up_after` seconds, timed from the first
  such record since the server last answered, the run stops with exit 3, whether it
  ever had an answer or not (before any, the engine's fail-fast streak of 20 `connect`
  records usually stops it first). Any HTTP answer (ok or not) breaks the run of
  failures; records with no answer of another kind (timeouts, resets, invalid lines)
  neither break nor extend it. So a short outage costs `connect` records that --resume
  sends again, and a server gone for good stops the run.
- Whichever stop comes first is the run's; the engine stops reading, the calls in flight
  are written.
- No clock is read here but through the injected `clock` (monotonic seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.core.proxies import UNREACHABLE
from engine.core.records import ErrorKind
from engine.core.retry import THROTTLE_STATUSES

#: The exit code of a run that could not go on (the token refused, the endpoint
#: unreachable, throttled for good): the same as FatalError's.
EXIT_STOPPED = 3
#: The exit code of a run stopped by a streak of internal errors (sysexits' EX_SOFTWARE).
EXIT_INTERNAL = 70
#: How many records in a row may end with an internal error before the run stops.
INTERNAL_STREAK = 20


@dataclass(frozen=True, slots=True)
class Stop:
    """Why a run stops itself (one line for the summary) and the exit code it ends with."""

    reason: str
    exit_code: int = EXIT_STOPPED
    auth: bool = False  # the token was refused or lost (AuthError, not FatalError)


class InternalStreak:
    """Counts the records in a row that ended with an internal error.

    `share`: the run's records are shared among that many --workers, each counting its
    own; each stops at ceil(limit / share), the run's `limit` consecutive records holding
    at least that many in a row of one worker (its records are in the run's order): never
    later than the run's streak, at worst a little early. The message names the run's."""

    __slots__ = ("count", "limit", "run_limit")

    def __init__(self, limit: int = INTERNAL_STREAK, share: int = 1) -> None:
        self.run_limit = limit
        self.limit = -(-limit // max(1, share))  # ceil
        self.count = 0

    def add(self, error_kind: str | None, error: str | None) -> Stop | None:
        """Account one record; the Stop when it makes the streak `limit` long."""
        if error_kind != ErrorKind.INTERNAL:
            self.count = 0
            return None
        self.count += 1
        if self.count < self.limit:
            return None
        shown = self.count if self.limit == self.run_limit else self.run_limit
        return Stop(
            f"{shown} events in a row failed with an internal error (last: {error}); "
            "this is a bug in adbatch: please report it with the records' error lines; "
            "--resume sends them again",
            EXIT_INTERNAL,
        )


class ThrottleWatch:
    """Times an unbroken run of 429/503 answers; gives up after `give_up_after` seconds."""

    __slots__ = ("_clock", "give_up_after", "since")

    def __init__(self, give_up_after: float, clock: Callable[[], float]) -> None:
        self.give_up_after = give_up_after
        self._clock = clock
        self.since: float | None = None  # when the current run of refusals began

    def saw(self, status: int | None) -> None:
        """One call's answer (every attempt; None: the call got no HTTP answer)."""
        if status in THROTTLE_STATUSES:
            if self.since is None:
                self.since = self._clock()
        elif status is not None:
            self.since = None

    def final(self, status: int | None) -> Stop | None:
        """A record ended with `status`, its retries spent: the Stop when the refusals
        have lasted `give_up_after` seconds."""
        since = self.since
        if status not in THROTTLE_STATUSES or since is None:
            return None
        refused_for = self._clock() - since
        if refused_for < self.give_up_after:
            return None
        return Stop(
            f"the server has refused every call (HTTP 429/503) for {refused_for:.0f} s, "
            f"retries spent (--give-up-after {self.give_up_after:g}); "
            "--resume picks up the rest"
        )


class OutageWatch:
    """Times an unbroken run of `connect` records; gives up after `give_up_after` seconds.

    `endpoint`: the delivery URL as messages show it (without credentials)."""

    __slots__ = ("_clock", "endpoint", "give_up_after", "since")

    def __init__(self, give_up_after: float, clock: Callable[[], float], endpoint: str) -> None:
        self.give_up_after = give_up_after
        self._clock = clock
        self.endpoint = endpoint
        self.since: float | None = None  # when the current run of connect records began

    def add(self, status: int | None, error_kind: str | None, error: str | None) -> Stop | None:
        """Account one record; the Stop when connecting has failed for `give_up_after`."""
        if status is not None:  # the server answered: reachable
            self.since = None
            return None
        if error_kind != ErrorKind.CONNECT:
            return None
        now = self._clock()
        if self.since is None:
            self.since = now
        down_for = now - self.since
        if down_for < self.give_up_after:
            return None
        where = (
            "the proxy"
            if error is not None and error.startswith(UNREACHABLE)
            else f"the delivery endpoint {self.endpoint}"
        )
        return Stop(
            f"cannot reach {where}: every call has failed to connect for {down_for:.0f} s "
            f"(last: {error}; --give-up-after {self.give_up_after:g}); check that the "
            "server is up, then --resume sends the rest"
        )


def output_stop(reason: str, *, kept: bool, resumable: bool) -> str:
    """The stop line of an output that failed mid-run (`reason`): what to do, when what
    it holds is `kept` (OutputError.kept: a file on a full disk; not stdout, a reader
    gone, a file deleted under the run) and the command can --resume (not a schedule)."""
    if not (kept and resumable):
        return reason
    return (
        f"{reason}; the records written before are kept: once it can be written, "
        "run the same command with --resume to send the rest"
    )
