"""`adbatch load` and `adbatch replay`: parse, call engine.api.run_load, report.

The run options (inputs, output, endpoint, token, --rate, ...) are the batch command's
(`run_options.add_run_options`); these subcommands add the schedule and the measurement.
Turning the schedule options into a pacer is parsing: the pacers are engine.core.pacing's.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from functools import partial

from engine.api import run_load
from engine.cli.commands import command_help
from engine.cli.common import Subparsers, json_bytes, run_async, say, write_file
from engine.cli.options import (
    config_from_args,
    duration,
    nonneg_rate,
    positive_duration,
    positive_float,
    positive_int,
)
from engine.cli.run_options import add_run_options
from engine.config import Config
from engine.core.pacing import RatePacer, constant, parse_stages, ramp, stages
from engine.core.thresholds import judged, verdict_line
from engine.core.values import terminal_safe
from engine.errors import ConfigError
from engine.files.sources import STDIN
from engine.load.plan import DEFAULT_MAX_IN_FLIGHT, DEFAULT_REORDER, LoadOutcome, LoadPlan


def add_parsers(sub: Subparsers) -> None:
    """Add the load and replay subcommands to the `adbatch` parser."""
    _add_load_parser(sub)
    _add_replay_parser(sub)


def _add_load_parser(sub: Subparsers) -> None:
    load_p = sub.add_parser(
        "load",
        help=command_help("load"),
        description="Send the input's events (cycled) on a schedule: a constant rate, a "
        "linear ramp or k6-style stages. Calls start on time whatever the server's "
        "latency; past --max-in-flight they are dropped (and counted), never delayed.",
        epilog="Try it: adbatch load --mock examples/pageviews.jsonl --rate 50 "
        "--duration 5s -o /dev/null",
    )
    add_run_options(load_p)
    g = load_p.add_argument_group("schedule (--rate is the constant rate)")
    g.add_argument(
        "--duration",
        type=duration,
        metavar="DURATION",
        help="how long: 30s, 500ms, 2m, 1m30s, 1h (seconds if bare)",
    )
    g.add_argument(
        "--ramp-from", type=nonneg_rate, metavar="RATE", help="ramp start rate: 0, 500/s, 1k"
    )
    g.add_argument("--ramp-to", type=nonneg_rate, metavar="RATE", help="ramp end rate")
    g.add_argument(
        "--stages",
        metavar="SPEC",
        help='k6 stages, each ramping from the previous rate: "30s:100,1m:1k/s,30s:0"; '
        '"0s:R" jumps at once (steps)',
    )
    g.add_argument(
        "--no-loop",
        action="store_true",
        help="stop at the end of the input instead of cycling it",
    )
    _add_measure_options(load_p)
    load_p.set_defaults(handler=cmd_load)


def _add_replay_parser(sub: Subparsers) -> None:
    replay_p = sub.add_parser(
        "replay",
        help=command_help("replay"),
        description="Replay recorded traffic: each event goes at its `timestamp`, scaled by "
        "--speed. Reads event files and access logs of delivery calls (combined log "
        "format). --rate caps the rate on top (delays, never drops).",
        epilog="Try it: adbatch replay --mock examples/pageviews.jsonl --speed 10 -o /dev/null",
    )
    add_run_options(replay_p)
    g = replay_p.add_argument_group("replay")
    g.add_argument(
        "--speed",
        type=positive_float,
        default=1.0,
        metavar="X",
        help="time factor: 2 replays twice as fast (default: %(default)s)",
    )
    g.add_argument(
        "--max-gap",
        type=positive_duration,
        metavar="DURATION",
        help="longest idle wait between two calls, in seconds of replay",
    )
    g.add_argument(
        "--reorder",
        type=int,
        default=DEFAULT_REORDER,
        metavar="N",
        help="window that puts a slightly out-of-order log back in order "
        "(default: %(default)s events; 0: off)",
    )
    g.add_argument(
        "--access-log",
        action="store_true",
        help="read inputs as access logs (default: detected from .log or the first line)",
    )
    _add_measure_options(replay_p)
    replay_p.set_defaults(handler=cmd_replay)


def _add_measure_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("open model and measurement")
    g.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=None,
        metavar="N",
        help="calls in flight at most (default: the peak rate x (--timeout + 1 s), at "
        f"least {DEFAULT_MAX_IN_FLIGHT}, so a server stall up to --timeout drops nothing; "
        "replay: from its --rate, not the log's own peak, which it does not scan first; "
        "with --workers N, split between them); -c is refused here",
    )
    g.add_argument(
        "--when-full",
        choices=("drop", "wait"),
        default=None,
        help="with --max-in-flight calls in flight: drop the next call (load's default) "
        "or wait for a free slot (replay's default; the wait counts in the latency "
        "from the schedule)",
    )
    g.add_argument(
        "--catch-up",
        choices=("spread", "skip"),
        default="spread",
        help="after a client stall (GC, SIGSTOP): spread the late calls at most 25%% above "
        "the scheduled rate (default), or skip the calls more than 100 ms late, counted "
        "as dropped (k6's behaviour)",
    )
    g.add_argument("--summary", metavar="FILE", help="write the run's figures here as JSON")
    g.add_argument(
        "--series",
        metavar="FILE",
        help="write one line per second of the figures here (mergeable histograms and "
        "counters, by scheduled and by send time); adbatch report reads it",
    )


def pacer_from_args(args: argparse.Namespace, rate: float | None) -> RatePacer:
    duration: float | None = args.duration
    ramping = args.ramp_from is not None or args.ramp_to is not None
    chosen = sum([args.stages is not None, ramping, rate is not None and not ramping])
    if args.stages is not None:
        if ramping or rate is not None or duration is not None:
            raise ConfigError(
                "--stages sets the whole schedule: drop --rate, --ramp-* and --duration"
            )
        return stages(parse_stages(args.stages))
    if ramping:
        if args.ramp_from is None or args.ramp_to is None:
            raise ConfigError("a ramp needs both --ramp-from and --ramp-to")
        if rate is not None:
            raise ConfigError("give --rate or --ramp-from/--ramp-to, not both")
        if duration is None:
            raise ConfigError("a ramp needs --duration")
        return ramp(args.ramp_from, args.ramp_to, duration)
    if chosen == 0 or rate is None:
        raise ConfigError("load needs a schedule: --rate R, --ramp-from/--ramp-to or --stages")
    if duration is None and not args.no_loop:
        raise ConfigError("give --duration (or --no-loop to go once through the input)")
    if duration == 0:
        raise ConfigError("--duration must be more than 0")
    return constant(rate, math.inf if duration is None else duration)


def cmd_load(args: argparse.Namespace) -> int:
    return _run(args, LoadPlan(mode="load"))


def cmd_replay(args: argparse.Namespace) -> int:
    if args.reorder < 0:
        raise ConfigError(f"--reorder must be 0 or more, got {args.reorder}")
    plan = LoadPlan(
        mode="replay",
        speed=args.speed,
        max_gap=args.max_gap,
        reorder=args.reorder,
        access_log=args.access_log,
        max_in_flight=args.max_in_flight,
        when_full=args.when_full,
        catch_up=args.catch_up,
    )
    return _run(args, plan)


#: load and replay send the schedule, not more: no retries unless asked (run keeps 3).
LOAD_DEFAULTS: dict[str, object] = {"retries": 0}


def refuse_unhonoured(args: argparse.Namespace, config: Config, mode: str) -> None:
    """Options a load test or a replay cannot honour: exit 2, one line, nothing sent."""
    if config.resume:
        raise ConfigError(
            f"{mode} cannot --resume: it sends a schedule, not the events an output lacks; "
            "start a new run with a new -o"
        )
    if config.ordered:
        raise ConfigError(
            f"{mode} cannot --ordered: calls start on a schedule and are written as they end"
        )
    if config.dry_run:
        raise ConfigError(
            f"{mode} cannot --dry-run: to see the calls, use adbatch run --dry-run on the input"
        )
    if args.concurrency is not None:
        raise ConfigError(
            f"{mode} does not take -c/--concurrency: its calls in flight are --max-in-flight's"
        )
    if config.workers > 1 and STDIN in config.inputs:
        raise ConfigError(
            f"{mode} --workers {config.workers} reads its input in every worker: "
            "give a file, not stdin"
        )


def _run(args: argparse.Namespace, plan: LoadPlan) -> int:
    config = config_from_args(args, defaults=LOAD_DEFAULTS)
    refuse_unhonoured(args, config, plan.mode)
    config = _records_off_terminal(config)
    progress = config.progress
    if plan.mode == "load":
        plan = LoadPlan(
            mode="load",
            pacer=pacer_from_args(args, config.rate),
            loop=not args.no_loop,
            max_in_flight=args.max_in_flight,
            when_full=args.when_full,
            catch_up=args.catch_up,
        )
    # open_run checks --summary against the inputs and -o, and creates it, before the run.
    outcome: LoadOutcome = run_async(
        partial(run_load, config, plan, progress=progress, handle_signals=True)
    )
    outcome = replace(outcome, summary=judged(outcome.summary, config.thresholds))
    return _finish(outcome, config.summary)


def _records_off_terminal(config: Config) -> Config:
    """No -o and stdout a terminal: a load test's records would scroll by by the
    thousand; write none and say how to keep them."""
    if config.output is not None or config.records == "none" or not sys.stdout.isatty():
        return config
    say("records not written to the terminal: give -o FILE")
    return config.with_changes(records="none")


def _finish(outcome: LoadOutcome, summary_path: str | None) -> int:
    from engine.report.text import figures_text

    say(outcome.summary.line(sent=True))
    say(outcome.line())
    if outcome.summary.figures:
        say("figures")
        for row in figures_text(outcome.summary.figures).splitlines():  # each its own line
            print(terminal_safe(row, line=True), file=sys.stderr)
    for verdict in outcome.summary.thresholds:
        say(verdict_line(verdict))
    if outcome.summary.stopped:
        say(f"stopped: {outcome.summary.stopped}")
    if summary_path:
        data = {
            "summary": outcome.summary,
            "scheduled": outcome.scheduled,
            # scheduled = sent + dropped + not_sent + cut_off (the last two: the run stopped)
            "not_sent": outcome.not_sent,
            "cut_off": outcome.cut_off,
            # Attempts sent, retries included (== sent with --retries 0, the default).
            "attempts": outcome.attempts,
            **outcome.figures,
        }
        write_file(summary_path, json_bytes(data), after_run=True)
    return outcome.exit_code
