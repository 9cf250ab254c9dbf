"""What a load test or a replay is asked to do (`LoadPlan`), what it shows while it runs
(`LiveState`) and what it found (`LoadOutcome`). No I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from engine.config import Config
from engine.core.errors import ConfigError
from engine.core.events import Item
from engine.core.pacing import Pacer, RatePacer
from engine.core.series import Figures
from engine.core.stats import Summary

Scheduled = tuple[float | None, Item]  # (due offset in seconds, item); None: write at once

#: The fewest slots a computed --max-in-flight gives (the old fixed default).
DEFAULT_MAX_IN_FLIGHT = 256


def max_in_flight_for(peak_rate: float | None, timeout: float) -> int:
    """The default --max-in-flight: enough slots that a server stall no longer than
    --timeout drops nothing, peak rate x (timeout + 1 s), at least 256. A slot is a call
    in flight, not a connection (runtime/loop.py connection_budget)."""
    if peak_rate is None or not math.isfinite(peak_rate):
        return DEFAULT_MAX_IN_FLIGHT
    return max(DEFAULT_MAX_IN_FLIGHT, math.ceil(peak_rate * (timeout + 1.0)))
DEFAULT_REORDER = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadPlan:
    """What `load` / `replay` adds to the batch Config (the schedule and its limits)."""

    mode: Literal["load", "replay"] = "load"
    pacer: Pacer | None = None
    loop: bool = True
    speed: float = 1.0
    max_gap: float | None = None
    reorder: int = DEFAULT_REORDER
    access_log: bool = False
    #: Calls in flight at most; None: computed from the schedule's peak rate and
    #: --timeout (`sized`), and then `computed` is True.
    max_in_flight: int | None = None
    computed: bool = False
    #: With every slot busy: "drop" the call (load's default) or "wait" for a slot
    #: (replay's default; wrk2's model: the wait counts in the latency from the schedule).
    when_full: Literal["drop", "wait"] | None = None
    #: After a client stall: "spread" the late calls at <= 1.25x the scheduled rate, or
    #: "skip" (drop and count) the calls more than 100 ms late (k6's behaviour).
    catch_up: Literal["spread", "skip"] = "spread"

    @property
    def slots(self) -> int:
        """--max-in-flight as given or computed (`sized`)."""
        return DEFAULT_MAX_IN_FLIGHT if self.max_in_flight is None else self.max_in_flight

    def sized(self, *, timeout: float, peak_rate: float | None) -> LoadPlan:
        """This plan with its --max-in-flight computed when the user gave none:
        `peak_rate` is the schedule's (pacing.RatePacer.peak, replay's --rate)."""
        if self.max_in_flight is not None:
            return self
        slots = max_in_flight_for(peak_rate, timeout)
        return replace(self, max_in_flight=slots, computed=True)

    @property
    def drops(self) -> bool:
        return (self.when_full or ("drop" if self.mode == "load" else "wait")) == "drop"

    def validated(self) -> LoadPlan:
        if self.mode == "load" and self.pacer is None:
            raise ConfigError("load needs a schedule: --rate, --ramp-from/--ramp-to or --stages")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigError(f"--max-in-flight must be at least 1, got {self.max_in_flight}")
        if not (self.speed > 0 and math.isfinite(self.speed)):
            raise ConfigError(f"--speed must be a positive number, got {self.speed}")
        if self.max_gap is not None and not self.max_gap > 0:
            raise ConfigError(f"--max-gap must be a positive number of seconds, got {self.max_gap}")
        if self.reorder < 0:
            raise ConfigError(f"--reorder must be 0 or more, got {self.reorder}")
        if self.when_full not in (None, "drop", "wait"):
            raise ConfigError(f"--when-full must be drop or wait, got {self.when_full!r}")
        if self.catch_up not in ("spread", "skip"):
            raise ConfigError(f"--catch-up must be spread or skip, got {self.catch_up!r}")
        return self


def sized_plan(config: Config, plan: LoadPlan) -> LoadPlan:
    """`plan` with its --max-in-flight computed from its peak rate (--rate, a ramp's or
    the stages' highest; replay: its --rate cap, else the 256 floor) and --timeout."""
    peak = plan.pacer.peak if isinstance(plan.pacer, RatePacer) else config.rate
    return plan.sized(timeout=config.timeout, peak_rate=peak)


@dataclass(slots=True)
class LiveState:
    """What the progress display reads while the run goes on."""

    figures: Figures = field(default_factory=Figures)
    scheduled: int = 0
    cut_off: int = 0  # calls in flight cut off by the run's stop (after --grace): no record
    in_flight: int = 0
    total: int | None = None
    duration: float | None = None
    started: float = 0.0
    token: str = "static"


@dataclass(frozen=True, slots=True)
class LoadOutcome:
    """A finished load or replay: the batch summary plus the open-model figures."""

    summary: Summary
    figures: dict[str, object]
    scheduled: int
    late_in_log: int = 0
    #: Attempts sent, retries included; shown apart from the calls when `retrying`
    #: (--retries above 0: the server gets more than the plan).
    attempts: int = 0
    retrying: bool = False
    cut_off: int = 0  # calls in flight cut off when the run's --grace ran out

    @property
    def exit_code(self) -> int:
        return self.summary.exit_code

    @property
    def not_sent(self) -> int:
        """Calls scheduled but not sent because the run stopped first (a signal, a stop of
        its own): every scheduled call is sent, dropped, cut off or this."""
        f = self.figures
        sent, dropped = f["sent"], f["dropped"]
        assert isinstance(sent, int)
        assert isinstance(dropped, int)
        return self.scheduled - sent - dropped - self.cut_off

    def line(self) -> str:
        f = self.figures
        lat = f["corrected_latency_ms"]
        assert isinstance(lat, dict)
        text = f"{self.scheduled} scheduled, {f['sent']} sent, {f['dropped']} dropped"
        if self.not_sent:
            text += f", {self.not_sent} not sent (the run stopped)"
        if self.cut_off:
            text += f", {self.cut_off} cut off in flight (no record)"
        if self.retrying:
            text += f", {self.attempts} attempts sent (retries on)"
        if lat.get("p50") is not None:
            text += (
                f"; latency from schedule p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
                f"max {lat['max']:.1f} ms"
            )
        if self.late_in_log:
            text += f"; {self.late_in_log} log lines past the reorder window sent at once"
        return text
