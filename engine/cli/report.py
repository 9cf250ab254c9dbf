"""`adbatch report`: a run's figures from its JSONL output, by engine.report.

Text on stdout; JSON and HTML only into the files asked for.
"""

from __future__ import annotations

import argparse
import sys

from engine.cli.common import Subparsers, json_bytes, write_file
from engine.core.events import printable
from engine.errors import InputError
from engine.files.paths import check_outputs


def add_parser(sub: Subparsers) -> None:
    """Add the report subcommand to the `adbatch` parser."""
    report_p = sub.add_parser(
        "report",
        help="figures of an output file: text table, JSON, one-page HTML with plots",
        description="Recompute a run's figures (rate, latency percentiles, statuses, "
        "errors, per-second series) from its JSONL output.",
    )
    report_p.add_argument("output_file", metavar="OUT.jsonl", help="records of a run ('-': stdin)")
    report_p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page")
    report_p.add_argument("--summary", metavar="FILE", help="also write the figures as JSON")
    report_p.add_argument("--title", default=None, help="title of the HTML page")
    report_p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    # Lazy: a command's own modules load only when it runs.
    from engine.report.text import figures_from_lines, text_report

    path = args.output_file
    # --summary and --html write files (one named `-` too); the text goes to stdout.
    files = [("--summary", args.summary), ("--html", args.html)]
    written = [(o, "./-" if p == "-" else p) for o, p in files] + [("the text report", "-")]
    check_outputs([("input", path)], written)
    try:
        stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    with stream:
        figures, bad = figures_from_lines(stream)
    data = figures.to_dict()
    sys.stdout.write(text_report(data, bad_lines=bad))
    sys.stdout.flush()
    if args.summary:
        write_file(args.summary, json_bytes(data))
    if args.html:
        from engine.report.html import html_report

        # A path's (or --title's) undecodable byte is shown as its escape, as records do.
        title = printable(args.title or f"adbatch report: {path}")
        write_file(args.html, html_report(data, title=title).encode())
    return 0
