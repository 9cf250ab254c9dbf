"""`adbatch run`, `adbatch merge` and `adbatch mock`: parse, call the entry point, report.

Each command reads its arguments, calls one entry point (engine.api.run, which picks
one process, --workers or Ray; engine.distributed.merge; engine.mock.serve) and turns
its answer into stderr lines and an exit code; nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

from engine import api
from engine.cli.common import Subparsers, json_bytes, run_async, say, write_file
from engine.cli.options import config_from_args, shard
from engine.cli.run_options import add_run_options
from engine.errors import ConfigError


def add_parsers(sub: Subparsers) -> None:
    """Add the run, merge and mock subcommands to the `adbatch` parser."""
    _add_run_parser(sub)
    _add_merge_parser(sub)
    _add_mock_parser(sub)


def _add_run_parser(sub: Subparsers) -> None:
    run_p = sub.add_parser(
        "run",
        help="send one delivery call per input event",
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
        help="join the outputs of `run --shard` and check they cover the input exactly once",
        description="Join the outputs of `adbatch run --shard I/N` into one file, each "
        "record once, and check every input record is there exactly once.",
    )
    merge_p.add_argument("parts", nargs="+", metavar="PART", help="shard output files")
    merge_p.add_argument("-o", "--output", required=True, metavar="PATH", help="merged file")
    merge_p.set_defaults(handler=cmd_merge)


def _add_mock_parser(sub: Subparsers) -> None:
    mock_p = sub.add_parser(
        "mock",
        help="serve the embedded mock delivery + token server",
        description="Serve the embedded mock of the delivery host and its OAuth2 token endpoint.",
    )
    mock_p.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    mock_p.add_argument(
        "--port", type=int, default=8080, help="port, 0 for any (default: %(default)s)"
    )
    mock_p.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds added to every answer (default: %(default)s)",
    )
    mock_p.add_argument(
        "--token-lifetime",
        type=float,
        default=900.0,
        metavar="S",
        help="lifetime of issued tokens (default: %(default)s)",
    )
    mock_p.add_argument(
        "--fixed-body",
        metavar="FILE",
        help="answer every valid delivery call with this file's bytes (benchmarks)",
    )
    mock_p.set_defaults(handler=cmd_mock)


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if "-" in config.inputs and sys.stdin.isatty():
        say("reading events from stdin (JSONL; Ctrl-D ends, Ctrl-C aborts)")
    # open_run checks --summary against the inputs and -o, and creates it, before the run.
    summary = run_async(partial(api.run, handle_signals=True), config)
    say(summary.line())
    if summary.stopped:
        say(f"stopped: {summary.stopped}")
    if config.summary:
        data = {"summary": summary, "exit_code": summary.exit_code}
        write_file(config.summary, json_bytes(data))
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

    report = merge_outputs(args.parts, args.output)
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
    serve(
        host=args.host,
        port=args.port,
        config=MockConfig(
            latency=args.latency, token_lifetime=args.token_lifetime, fixed_body=fixed_body
        ),
    )
    return 0
