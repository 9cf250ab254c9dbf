"""`adbatch report`: a run's figures from its JSONL records or its `--series` file, by
engine.report; two files: the two runs side by side, with the change (CI's regression check).

Text on stdout; JSON and HTML only into the files asked for.
"""

from __future__ import annotations

import argparse
import sys
from itertools import chain
from typing import Any

from engine.cli.commands import command_help
from engine.cli.common import Subparsers, json_bytes, write_file
from engine.cli.hints import RecordCount
from engine.config import DEFAULT_MAX_RESPONSE_BYTES
from engine.core.events import printable
from engine.core.values import terminal_safe
from engine.errors import ConfigError, InputError
from engine.files.paths import check_outputs

#: The longest line report reads: a record holds its response, up to
#: --max-response-bytes (8 MiB by default) written as JSON, where a byte may take six
#: (\u0001); a longer line is counted as unreadable and skipped, never held whole.
LINE_LIMIT = 8 * DEFAULT_MAX_RESPONSE_BYTES


def add_parser(sub: Subparsers) -> None:
    """Add the report subcommand to the `adbatch` parser."""
    report_p = sub.add_parser(
        "report",
        help=command_help("report"),
        description="Recompute a run's figures (rate, latency percentiles, statuses, "
        "errors, per-second series) from its JSONL records or its --series file (told "
        "apart by the first line). With two files, show them side by side with the change.",
        epilog="Try it: adbatch report base.series.jsonl new.series.jsonl --html cmp.html",
    )
    report_p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="records or --series file of a run ('-': stdin); a second one to compare",
    )
    report_p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page")
    report_p.add_argument("--summary", metavar="FILE", help="also write the figures as JSON")
    report_p.add_argument("--title", default=None, help="title of the HTML page")
    report_p.set_defaults(handler=cmd_report)


def read_run(path: str) -> tuple[dict[str, Any], int]:
    """(figures as `Figures.to_dict()`, core/figures.py's block under "figures", the
    run's header under "run" when the file is a --series file; unreadable lines)."""
    from engine.core.serieslog import SeriesError, is_header, read_series
    from engine.report.lines import BoundedLines
    from engine.report.text import FileTally, figures_from_lines, file_figures

    try:
        stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    with stream:
        bounded = BoundedLines(stream, limit=LINE_LIMIT)
        read = iter(bounded)
        first = next(read, b"")
        lines = chain([first], read)
        if is_header(first):
            try:
                figures, head, elapsed, bad = read_series(lines)
            except SeriesError as exc:
                raise SeriesError(f"cannot report {printable(path)}: {exc}") from None
            data = figures.to_dict(elapsed_s=elapsed)
            data["figures"] = file_figures(figures, None)
            data["run"] = head
            return data, bad + bounded.too_long
        counted = RecordCount(lines)
        tally = FileTally()
        figures, bad = figures_from_lines(counted, tally=tally)
    counted.refuse_inputs(path)
    data = {**figures.to_dict(), "figures": file_figures(figures, tally)}
    return data, bad + bounded.too_long


def cmd_report(args: argparse.Namespace) -> int:
    paths: list[str] = args.files
    if len(paths) > 2:
        raise ConfigError("adbatch report takes one file, or two to compare")
    if paths.count("-") > 1:
        raise ConfigError("stdin ('-') can be read only once")
    # --summary and --html write files (one named `-` too); the text goes to stdout.
    files = [("--summary", args.summary), ("--html", args.html)]
    written = [(o, "./-" if p == "-" else p) for o, p in files] + [("the text report", "-")]
    check_outputs([("input", p) for p in paths], written)
    runs = [read_run(p) for p in paths]
    if len(runs) == 2:
        return _compare(args, paths, runs)
    from engine.report.text import text_report

    (data, bad), path = runs[0], paths[0]
    sys.stdout.write(terminal_safe(text_report(data, bad_lines=bad)))
    sys.stdout.flush()
    if args.summary:
        write_file(args.summary, json_bytes(data))
    if args.html:
        from engine.report.html import html_report

        # A path's (or --title's) undecodable byte is shown as its escape, as records do.
        title = printable(args.title or f"adbatch report: {path}")
        write_file(args.html, html_report(data, title=title).encode())
    return 0


def _compare(
    args: argparse.Namespace, paths: list[str], runs: list[tuple[dict[str, Any], int]]
) -> int:
    from engine.report.compare import compare_html, compare_rows, compare_text

    (a, bad_a), (b, bad_b) = runs
    names = (printable(paths[0]), printable(paths[1]))
    sys.stdout.write(terminal_safe(compare_text(a, b, names=names, bad_lines=bad_a + bad_b)))
    sys.stdout.flush()
    if args.summary:
        rows = compare_rows(a, b)
        write_file(args.summary, json_bytes({"a": names[0], "b": names[1], "rows": rows}))
    if args.html:
        title = printable(args.title or f"adbatch report: {names[0]} vs {names[1]}")
        write_file(args.html, compare_html(a, b, names=names, title=title).encode())
    return 0
