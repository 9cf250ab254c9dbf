"""The summary's words: dropped calls are counted apart, never as failed, and a count of
one is singular (core/stats.py Summary.line, report/text.py)."""

from __future__ import annotations

import pytest

from engine.core.records import ErrorKind
from engine.core.stats import RunStats, TokenStats, plural, summarize


def _stats(*, ok: int = 0, failed: int = 0, dropped: int = 0) -> RunStats:
    stats = RunStats()
    for _ in range(ok):
        stats.add(status=200, ok=True, invalid=False, latency_ms=1.0, error_kind=None)
    for _ in range(failed):
        stats.add(status=500, ok=False, invalid=False, latency_ms=1.0, error_kind="http")
    for _ in range(dropped):
        stats.add(
            status=None, ok=False, invalid=False, latency_ms=None, error_kind=ErrorKind.DROPPED
        )
    return stats


def test_dropped_calls_are_not_failed_ones() -> None:
    summary = summarize(_stats(ok=3, failed=2, dropped=765), elapsed_s=1.0)
    line = summary.line()
    assert "3 ok, 2 failed, 765 dropped, 0 invalid" in line, line
    assert "dropped x" not in line, line
    assert "765 failed" not in line, line
    assert "errors: http x2" in line
    assert (summary.failed, summary.dropped) == (2, 765)
    assert summary.figures["dropped"] == 765
    assert summary.figures["errors"] == 2
    assert summary.exit_code == 1  # a dropped call is still a call the plan lost


def test_only_dropped_still_exits_1_and_lists_no_error() -> None:
    summary = summarize(_stats(ok=1, dropped=1), elapsed_s=1.0)
    assert summary.exit_code == 1
    assert "1 dropped" in summary.line()
    assert "errors:" not in summary.line()


def test_no_drop_no_dropped_word() -> None:
    assert "dropped" not in summarize(_stats(ok=2), elapsed_s=1.0).line()


@pytest.mark.parametrize(
    ("n", "one", "many", "expected"),
    [
        (1, "event", None, "1 event"),
        (0, "event", None, "0 events"),
        (2, "blank line", None, "2 blank lines"),
        (1, "retry", "retries", "1 retry"),
        (3, "retry", "retries", "3 retries"),
    ],
)
def test_plural(n: int, one: str, many: str | None, expected: str) -> None:
    assert plural(n, one, many) == expected


def test_counts_of_one_are_singular() -> None:
    stats = _stats(ok=1)
    stats.blank_lines = 1
    stats.retries["http_503"] = 1
    tokens = TokenStats()
    tokens.fetched, tokens.renewals, tokens.waits = 1, 1, 1
    line = summarize(stats, elapsed_s=1.0, tokens=tokens).line()
    for word in ("1 event ", "1 blank line ", "1 retry ", "1 renewal", "1 call waited"):
        assert word in line, (word, line)
    for wrong in ("1 events", "1 blank lines", "1 retries", "1 renewals", "1 calls"):
        assert wrong not in line, (wrong, line)


def test_report_figures_singular() -> None:
    from engine.report.text import figures_text

    summary = summarize(_stats(ok=1), elapsed_s=1.0)
    text = figures_text(summary.figures)
    assert "1 ok of 1 call; 0 errors, 0 dropped" in text, text


def test_a_schedule_s_rate_is_said_as_sent() -> None:
    """load's and replay's rate is the calls sent per second over their send span (not
    events over the run): their line says so, run's says events per second."""
    summary = summarize(_stats(ok=4), elapsed_s=2.0)
    assert summary.line().startswith("4 events in 2.00s (2.0/s): 4 ok")
    assert summary.line(sent=True).startswith("4 events in 2.00s (sent at 2.0/s): 4 ok")


def test_a_dry_run_is_not_an_error_in_the_line() -> None:
    stats = RunStats()
    for _ in range(3):
        stats.add(status=None, ok=True, invalid=False, latency_ms=None, error_kind="dry_run")
    line = summarize(stats, elapsed_s=1.0).line()
    assert line.endswith("3 ok, 0 failed, 0 invalid; 3 calls shown, not sent"), line
