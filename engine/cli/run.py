"""`adbatch run`, `adbatch merge` and `adbatch mock`: parse, call the entry point, report.

Each command reads its arguments, calls one entry point (engine.api.run, which picks
one process, --workers or Ray; engine.distributed.merge; engine.mock.serve) and turns
its answer into stderr lines and an exit code; nothing else.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from functools import partial

from engine import api
from engine.cli import hints
from engine.cli.argtypes import duration, storage_option
from engine.cli.commands import command_help
from engine.cli.common import Subparsers, json_bytes, run_async, say, write_file
from engine.cli.options import config_from_args, shard
from engine.cli.run_options import add_run_options
from engine.config import Config
from engine.core.shown import quoted
from engine.core.stats import Summary
from engine.core.thresholds import judged, verdict_line
from engine.errors import ConfigError


def add_parsers(sub: Subparsers) -> None:
    """Add the run, merge and mock subcommands to the `adbatch` parser."""
    _add_run_parser(sub)
    _add_merge_parser(sub)
    _add_mock_parser(sub)


def _add_run_parser(sub: Subparsers) -> None:
    run_p = sub.add_parser(
        "run",
        help=command_help("run"),
        description="Send one delivery call per input event and write one "
        "JSONL record per input line.",
    )
    add_run_options(run_p)
    _add_distribution_options(run_p)
    run_p.add_argument("--summary", metavar="FILE", help="also write the run's figures as JSON")
    run_p.set_defaults(handler=cmd_run)


def _add_distribution_options(p: argparse.ArgumentParser) -> None:
    dist = p.add_argument_group("beyond one process")
    dist.add_argument(
        "--shard",
        type=shard,
        metavar="I/N",
        help="take only shard I of N (I from 0, e.g. $JOB_COMPLETION_INDEX/4); "
        "join the outputs with `adbatch merge`",
    )
    dist.add_argument(
        "--shard-by",
        choices=("position", "id"),
        help="assign records to shards by position (default) or by a hash of their id",
    )
    dist.add_argument(
        "--backend",
        choices=("local", "ray"),
        help="local (default) or ray: spread the run over a Ray cluster (RAY_ADDRESS, "
        "or a local Ray); needs the extra adbatch[ray]",
    )


def _add_merge_parser(sub: Subparsers) -> None:
    merge_p = sub.add_parser(
        "merge",
        help=command_help("merge"),
        description="Join the outputs of `adbatch run --shard I/N` into one file, each "
        "record once, and check every input record is there exactly once.",
    )
    merge_p.add_argument(
        "parts", nargs="+", metavar="PART", help="shard output files or URLs (a URL glob too)"
    )
    merge_p.add_argument(
        "-o", "--output", required=True, metavar="PATH", help="merged file (or URL)"
    )
    merge_p.add_argument(
        "--storage-option",
        dest="storage_options",
        action="append",
        type=storage_option,
        metavar="KEY=VALUE",
        help="an fsspec option for URL parts and output, as for run (repeatable)",
    )
    merge_p.set_defaults(handler=cmd_merge)


def _add_mock_parser(sub: Subparsers) -> None:
    mock_p = sub.add_parser(
        "mock",
        help=command_help("mock"),
        description="Serve the embedded mock of the delivery host and its OAuth2 token "
        "endpoint, with faults on demand (each a probability per call).",
    )
    mock_p.add_argument(
        "--host",
        type=_host,
        default="127.0.0.1",
        help="address to listen on (default: %(default)s)",
    )
    mock_p.add_argument(
        "--port", type=_port, default=8080, help="port, 0 for any free one (default: %(default)s)"
    )
    mock_p.add_argument(
        "--latency",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="seconds added to every delivery answer (default: %(default)s)",
    )
    mock_p.add_argument(
        "--token-lifetime",
        type=_seconds,
        default=900.0,
        metavar="S",
        help="lifetime of the tokens the token endpoint issues (default: %(default)s)",
    )
    mock_p.add_argument(
        "--fixed-body",
        metavar="FILE",
        help="answer every valid delivery call with this file's bytes (benchmarks)",
    )
    _add_fault_options(mock_p.add_argument_group("faults (probabilities 0..1, at most 1 together)"))
    mock_p.set_defaults(handler=cmd_mock)


def _add_fault_options(faults: argparse._ArgumentGroup) -> None:
    for option, what in (
        ("--p500", "answer 500"),
        ("--p503", "answer 503 with Retry-After: 0"),
        ("--p429", "answer 429 with Retry-After: 0"),
        ("--reset", "drop the connection without an answer"),
        ("--slow", "hold the answer --slow-seconds first"),
    ):
        faults.add_argument(
            option, type=_probability, default=0.0, metavar="P", help=f"{what} (default: 0)"
        )
    faults.add_argument(
        "--slow-seconds",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="how long a --slow answer is held (default: %(default)s)",
    )
    faults.add_argument(
        "--every-call",
        action="store_true",
        help="draw a fault for every call (default: only for a query's first call, so a "
        "retry, or the same event sent again by load, is answered)",
    )
    faults.add_argument(
        "--seed", type=int, default=0, help="seed of the fault draws (default: %(default)s)"
    )


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {quoted(text)}")
    return int(text)


def _host(text: str) -> str:
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if not host or not host.isascii() or not host.isprintable() or any(c in host for c in " /"):
        raise argparse.ArgumentTypeError(f"expected a host name or address, got {quoted(text)}")
    return host


def _number(text: str, low: float, high: float, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not low <= value <= high:  # NaN too
        raise argparse.ArgumentTypeError(f"expected {what}, got {quoted(text)}")
    return value


def _seconds(text: str) -> float:
    """The one duration grammar (`50ms`, `2s`, `15m`, a bare number of seconds), at most
    a year (the mock's timers)."""
    value = duration(text)
    if value > 86400.0 * 366:
        raise argparse.ArgumentTypeError(f"expected at most a year, got {text!r}")
    return value


def _probability(text: str) -> float:
    return _number(text, 0.0, 1.0, "a probability 0..1 (e.g. 0.05)")


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config.records != "all":
        raise ConfigError(
            "run writes one record per input line (--resume reads them): --records is "
            "for load and replay; keep the failures with: jq -c 'select(.ok|not)'"
        )
    if config.series is not None:
        raise ConfigError("--series is for load and replay; run's figures: --summary FILE")
    if "-" in config.inputs and sys.stdin.isatty():
        say("reading events from stdin (JSONL; Ctrl-D ends, Ctrl-C aborts)")
    csv_stdin = hints.stdin_looks_like_csv(config)
    # open_run checks --summary against the inputs and -o, and creates it, before the run.
    summary = run_async(partial(api.run, handle_signals=True), config)
    return finish_run(summary, config, csv_stdin=csv_stdin)


def finish_run(summary: Summary, config: Config, *, csv_stdin: bool = False) -> int:
    """What `run` says of a finished run on stderr, its --summary file, its exit code."""
    summary = judged(summary, config.thresholds)  # run has no schedule: p99 is from the send
    say(summary.line())
    for verdict in summary.thresholds:
        say(verdict_line(verdict))
    if summary.stopped:
        say(f"stopped: {summary.stopped}")
    for hint in hints.after_summary(summary, csv_stdin=csv_stdin):
        say(hint)
    if config.summary:
        data = {"summary": summary, "exit_code": summary.exit_code}
        write_file(config.summary, json_bytes(data), after_run=True)
    if summary.interrupted is not None:
        # The output is closed and synced; a reader thread may still block on stdin,
        # and the interpreter would wait for it at exit: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(summary.exit_code)
    return int(summary.exit_code)


def cmd_merge(args: argparse.Namespace) -> int:
    # Lazy: a command's own modules load only when it runs.
    from engine.distributed.merge import merge_outputs
    from engine.files.storage import shown
    from engine.runtime.shutdown import Interrupted

    options = tuple(args.storage_options or ())
    try:
        report = merge_outputs(args.parts, args.output, options=options, handle_signals=True)
    except Interrupted as stop:  # its upload aborted: no half object, no upload left open
        output = shown(args.output)
        say(f"merge interrupted by {stop} before {output} was written whole; run it again")
        return 128 + stop.signum
    if report.exactly_once:
        say(report.line())
        return 0
    say(f"error: {report.line()}")
    return 1


def cmd_mock(args: argparse.Namespace) -> int:
    # Lazy: a command's own modules load only when it runs.
    from engine.mock import MockConfig, serve

    fixed_body = None
    if args.fixed_body:
        try:
            with open(args.fixed_body, "rb") as f:
                fixed_body = f.read()
        except OSError as exc:
            raise ConfigError(
                f"cannot read --fixed-body {args.fixed_body}: {exc.strerror or exc}"
            ) from None
    if args.p500 + args.p503 + args.p429 + args.reset + args.slow > 1.0 + 1e-9:
        raise ConfigError("--p500, --p503, --p429, --reset and --slow add up to more than 1")
    config = MockConfig(
        latency=args.latency,
        token_lifetime=args.token_lifetime,
        fixed_body=fixed_body,
        fail_500=args.p500,
        fail_503=args.p503,
        fail_429=args.p429,
        drop=args.reset,
        slow=args.slow,
        slow_seconds=args.slow_seconds,
        seed=args.seed,
        faults_first_attempt_only=not args.every_call,
    )
    try:
        serve(host=args.host, port=args.port, config=config)
    except OSError as exc:  # a busy port, an address not of this machine
        where = f"[{args.host}]" if ":" in args.host else args.host
        # asyncio's bind error wraps the errno's text in its own sentence: say the errno's.
        errno = exc.errno or 0
        why = os.strerror(errno) if errno > 0 else exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {where}:{args.port}: {why}") from None
    return 0
