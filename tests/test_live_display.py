"""The live display in a real pseudo-terminal, read back through a VT100 emulator (pyte).

Each test runs the CLI for a few seconds with stdin, stdout and stderr on a pty of 80 or
200 columns (the records go to -o) and checks what a user would see:
- while it ran the display showed its figures (a percent, the load's target rate...),
  and never took more rows than it has: a row wider than the terminal would wrap onto
  another one;
- at the end the screen holds the summary and nothing else: no line of the display is
  left behind, nothing scrolled.
"""

from __future__ import annotations

import gzip
import math
import os
import pty
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyte", reason="pyte (the test extra) reads the terminal's screen")

from pty_screen import PtyRun, run_in_pty

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")
BAR = ("━", "╸", "╺")

pytestmark = pytest.mark.slow


def adbatch(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "engine", *map(str, args)]


@pytest.fixture
def events(tmp_path: Path) -> Path:
    """240 valid page views: 5 s at --rate 48."""
    path = tmp_path / "events.jsonl"
    path.write_bytes((EXAMPLES / "pageviews.jsonl").read_bytes() * 6)
    return path


def summary_lines(run: PtyRun) -> list[str]:
    """The lines the CLI printed once the display was gone: they start `adbatch:` (the
    display never does), and load's figures block is indented under `adbatch: figures`."""
    text = CSI.sub("", run.raw.decode("utf-8", "replace"))
    lines: list[str] = []
    for line in re.split(r"\r?\n|\r", text):
        if line.startswith("adbatch:") or (
            lines and lines[-1] != "" and line.startswith("  ") and _in_block(lines)
        ):
            lines.append(line)
    return lines


def _in_block(lines: list[str]) -> bool:
    """The last `adbatch:` line so far opens the figures block."""
    last = next(line for line in reversed(lines) if line.startswith("adbatch:"))
    return last == "adbatch: figures"


def wrapped(lines: list[str], columns: int) -> list[str]:
    rows = []
    for line in lines:
        rows += [line[i : i + columns].rstrip() for i in range(0, len(line), columns)]
    return rows


def check_screens(run: PtyRun, *, display_rows: int, summaries: int) -> None:
    columns = run.columns
    lines = summary_lines(run)
    assert sum(line.startswith("adbatch:") for line in lines) == summaries, run.final
    # The end: the summary, wrapped as the terminal wraps it, and nothing else.
    assert run.final == wrapped(lines, columns)
    assert len(run.final) == sum(math.ceil(len(line) / columns) for line in lines)
    # Meanwhile: never more rows than the display has (a too-wide row would wrap).
    showing = [s for s in run.seen if s and not s[0].startswith("adbatch:")]
    assert showing, "the display never showed"
    assert max(len(screen) for screen in showing) <= display_rows, showing
    for screen in showing:
        assert all(len(row) <= columns for row in screen)


@pytest.mark.parametrize("columns", [80, 200])
def test_run_shows_percent_and_eta_then_only_the_summary(events: Path, columns: int) -> None:
    run = run_in_pty(
        adbatch("run", "--mock", "--rate", "48", events, "-o", events.with_suffix(".out")),
        columns=columns,
        cwd=str(ROOT),
    )
    assert run.returncode == 0, run.final
    check_screens(run, display_rows=2, summaries=1)
    seen = run.seen_text()
    assert re.search(r"\b[1-9]\d?%  [\d.]+ KB / [\d.]+ KB", seen), seen  # mid-run, by bytes
    assert "ETA" in seen
    assert re.search(r"\b[1-9]\d* done", seen)
    assert any(ch in seen for ch in BAR)


@pytest.mark.parametrize("columns", [80, 200])
def test_run_with_workers_shows_the_parent_s_progress(events: Path, columns: int) -> None:
    run = run_in_pty(
        adbatch(
            "run", "--mock", "--workers", "2", "--rate", "48", events,
            "-o", events.with_suffix(".out"),
        ),
        columns=columns,
        cwd=str(ROOT),
    )  # fmt: skip
    assert run.returncode == 0, run.final
    check_screens(run, display_rows=2, summaries=1)
    seen = run.seen_text()
    assert re.search(r"\b[1-9]\d?%  ", seen), seen
    assert "2 workers" in seen
    # the workers' own figures, summed in the parent
    assert re.search(r"\b[1-9][\d,]* ok · 0 failed · 0 invalid · p99 \d", seen), seen


@pytest.mark.parametrize("columns", [80, 200])
def test_load_shows_rate_latency_and_token(tmp_path: Path, columns: int) -> None:
    run = run_in_pty(
        adbatch(
            "load", "--mock", EXAMPLES / "pageviews.jsonl", "--rate", "50", "--duration", "5s",
            "-o", tmp_path / "out.jsonl",
        ),
        columns=columns,
        cwd=str(ROOT),
    )  # fmt: skip
    assert run.returncode == 0, run.final
    check_screens(run, display_rows=3, summaries=3)  # + `adbatch: figures`
    seen = run.seen_text()
    assert re.search(r"\ds / 5s", seen), seen
    if columns >= 200:  # at 80 columns the rows may be cut before their end
        assert "of 50/s target" in seen
        assert "last s p50" in seen
        assert "token valid" in seen
        assert re.search(r"0 errors · 0 dropped", seen)


@pytest.mark.parametrize("columns", [80, 200])
def test_load_with_workers_shows_the_schedule_from_the_workers_figures(
    tmp_path: Path, columns: int
) -> None:
    """The parent draws load's display from the workers' summed figures (issue 14)."""
    out = tmp_path / "out.jsonl"
    run = run_in_pty(
        adbatch(
            "load", "--mock", "--workers", "2", EXAMPLES / "pageviews.jsonl", "--rate", "50",
            "--duration", "5s", "-o", out,
        ),
        columns=columns,
        cwd=str(ROOT),
    )  # fmt: skip
    assert run.returncode == 0, run.final
    check_screens(run, display_rows=3, summaries=3)  # + `adbatch: figures`
    seen = run.seen_text()
    assert re.search(r"\ds / 5s", seen), seen  # the schedule's clock, not input read
    assert "workers" not in seen  # not run's display
    assert re.search(r"\b[1-9][\d,]* done", seen), seen  # the workers' calls, summed
    if columns >= 200:
        assert "of 50/s target" in seen
        assert re.search(r"last s p50 [\d.]+ ms, p99 [\d.]+ ms", seen), seen
        assert "token static" in seen or "token valid" in seen, seen
        assert re.search(r"0 errors · 0 dropped", seen)


def test_replay_with_workers_shows_the_display(tmp_path: Path) -> None:
    run = run_in_pty(
        adbatch(
            "replay", "--mock", "--workers", "2", EXAMPLES / "access.log", "--speed", "20",
            "--max-gap", "2", "-o", tmp_path / "out.jsonl",
        ),
        columns=200,
        cwd=str(ROOT),
    )  # fmt: skip
    assert run.returncode == 0, run.final
    check_screens(run, display_rows=3, summaries=3)  # + `adbatch: figures`
    seen = run.seen_text()
    assert re.search(r"\ds elapsed", seen), seen
    assert re.search(r"\b[1-9][\d,]* done", seen), seen


@pytest.mark.parametrize("columns", [80, 200])
def test_replay_shows_the_display(tmp_path: Path, columns: int) -> None:
    run = run_in_pty(
        adbatch(
            "replay", "--mock", EXAMPLES / "access.log", "--speed", "20", "--max-gap", "2",
            "-o", tmp_path / "out.jsonl",
        ),
        columns=columns,
        cwd=str(ROOT),
    )  # fmt: skip
    assert run.returncode == 0, run.final
    check_screens(run, display_rows=3, summaries=3)  # + `adbatch: figures`
    assert re.search(r"\ds elapsed", run.seen_text())


@pytest.mark.parametrize(
    ("command", "rows"),
    [
        pytest.param(["run", "--rate", "48"], 2, id="run-2-rows"),
        pytest.param(["load", "--rate", "48", "--duration", "2s"], 3, id="load-3-rows"),
    ],
)
def test_a_terminal_as_tall_as_the_display_keeps_none_of_it(
    tmp_path: Path, command: list[str], rows: int
) -> None:
    """A terminal exactly as tall as the display: rich's last line end would scroll its
    first row into the scrollback, left there when the display is erased. What scrolled
    off and what stays are the summary's lines only."""
    run = run_in_pty(
        adbatch(*command, "--mock", EXAMPLES / "pageviews.jsonl", "-o", tmp_path / "out.jsonl"),
        columns=200,
        cwd=str(ROOT),
        rows=rows,
    )
    assert run.returncode == 0, run.final
    assert any(not s[0].startswith("adbatch:") for s in run.seen if s), "no display"
    assert run.scrolled + run.final == wrapped(summary_lines(run), 200), run.scrolled


@pytest.mark.parametrize(
    ("workers", "columns"),
    [pytest.param("1", 80, id="1-process"), pytest.param("2", 200, id="workers")],
)
def test_run_of_a_gzip_file_goes_by_compressed_bytes(
    tmp_path: Path, workers: str, columns: int
) -> None:
    from engine.runtime.display import size

    raw = (EXAMPLES / "pageviews.jsonl").read_bytes() * 6  # 240 events: 5 s at --rate 48
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(raw))
    run = run_in_pty(
        adbatch("run", "--mock", "--workers", workers, "--rate", "48", path,
                "-o", tmp_path / "out.jsonl"),
        columns=columns,
        cwd=str(ROOT),
    )  # fmt: skip
    assert run.returncode == 0, run.final
    check_screens(run, display_rows=2, summaries=1)
    seen = run.seen_text()
    compressed = re.escape(size(path.stat().st_size))
    assert re.search(rf"\b[1-9]\d?%  [\d.]+ k?B / {compressed}  .*ETA", seen, re.I), seen
    assert f"/ {size(len(raw))}" not in seen  # not the bytes gzip gives


def test_run_of_a_pipe_shows_counts_and_rate_without_a_total(events: Path) -> None:
    """stdin from a pipe has no size: no bar, no percent, no ETA; counts and the rate."""
    command = " ".join(shlex.quote(str(a)) for a in adbatch(
        "run", "--mock", "--rate", "48", "-", "-o", events.with_suffix(".out")))  # fmt: skip
    run = run_in_pty(
        ["sh", "-c", f"cat {shlex.quote(str(events))} | {command}"], columns=80, cwd=str(ROOT)
    )
    assert run.returncode == 0, run.final
    check_screens(run, display_rows=1, summaries=1)
    seen = run.seen_text()
    assert re.search(r"\b[1-9][\d,]* done · \d+/s · ", seen), seen
    assert "ETA" not in seen
    assert not any(ch in seen for ch in BAR)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="plain"),
        # rich alone would believe these and draw on a file: the CLI asks the file itself
        pytest.param({"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"},
                     id="forced-terminal"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["run", "load"])
def test_no_display_when_stderr_is_not_a_terminal(
    tmp_path: Path, command: str, env: dict[str, str]
) -> None:
    """stdin and stdout on a terminal, stderr to a file (`2> log`): the file holds the
    summary lines and nothing else."""
    master, slave = pty.openpty()
    log = tmp_path / "stderr.log"
    schedule = ["--rate", "50", "--duration", "2s"] if command == "load" else ["--rate", "100"]
    try:
        with open(log, "wb") as err:
            done = subprocess.run(
                adbatch(command, "--mock", EXAMPLES / "pageviews.jsonl", *schedule,
                        "-o", tmp_path / "out.jsonl"),
                stdin=slave, stdout=slave, stderr=err, cwd=ROOT, timeout=60, check=False,
                env={**os.environ, "TERM": "xterm-256color", **env},
            )  # fmt: skip
    finally:
        os.close(slave)
        os.close(master)
    assert done.returncode == 0
    text = log.read_text()
    lines = text.splitlines()
    assert lines
    # The summary lines, and load's figures block indented under its "adbatch: figures".
    assert all(line.startswith(("adbatch: ", "  ")) for line in lines), text
    assert "\x1b" not in text
    assert not any(ch in text for ch in BAR)


@pytest.mark.parametrize(
    ("args", "why"),
    [
        pytest.param(["--no-progress", "-o", "{out}"], "asked", id="no-progress"),
        pytest.param([], "the records are on the terminal", id="records-on-stdout"),
    ],
)
def test_no_display(events: Path, args: list[str], why: str) -> None:
    out = str(events.with_suffix(".out"))
    run = run_in_pty(
        adbatch("run", "--mock", "--rate", "200", events, *(a.format(out=out) for a in args)),
        columns=80,
        cwd=str(ROOT),
    )
    assert run.returncode == 0
    text = run.raw.decode("utf-8", "replace")
    assert not any(ch in text for ch in BAR), why
    assert " done · " not in text, why
