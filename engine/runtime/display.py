"""The live display on a terminal: a few lines on stderr, redrawn in place, gone at the end.

Rules:
- Shown only when the run asks (`Config.progress`: the CLI asks when stderr is a
  terminal, the records do not go to that terminal, and `--no-progress` is not given).
- Never wider than the terminal: every row is cut to the width of stderr's terminal,
  read again at each refresh (a resize is followed; a stale COLUMNS is not believed),
  never wrapped, so rich knows how many lines it drew and redraws exactly those.
- Transient: the lines are erased when the display ends, however the run ends; the CLI
  then prints the summary where they were. Nothing scrolls: the rows are cut to the
  terminal's height less the line rich's last line end leaves (2 rows show the first).
- The records may go to stdout: stdout is left alone. Whatever Python writes to
  sys.stderr while the display shows (a warning, a log line) is printed above it
  through the display's console, not across it.
- Refreshed by the event loop every `every` seconds, no refresh thread: the figures
  are read on the loop that changes them, and the run never waits on the display.
- What the rows say is the callers' (`View`, built by runtime/progress.py and
  load/progress.py); this module only draws them.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

REFRESH_S = 0.5


@dataclass(frozen=True, slots=True)
class Bar:
    """A row drawn as a bar `fraction` full (0..1) followed by `text`."""

    fraction: float
    text: str


Row = str | Bar
#: The rows to show, given the seconds since the display started.
View = Callable[[float], Sequence[Row]]


async def show_live(view: View, *, every: float = REFRESH_S) -> None:
    """Draw `view(elapsed)` on stderr every `every` seconds until cancelled, then erase it."""
    from rich.console import Console  # rich loads only when a display shows
    from rich.live import Live

    console = Console(file=sys.stderr, highlight=False)
    # rich believes FORCE_COLOR or TTY_COMPATIBLE (set by many CI systems) and would draw
    # on a file or a pipe: ask the stream itself too.
    if not _isatty(sys.stderr) or not console.is_terminal or console.is_dumb_terminal:
        return  # no cursor to move: no display rather than lines that scroll
    start = time.perf_counter()
    with Live(
        console=console,
        auto_refresh=False,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=True,
        vertical_overflow="crop",
    ) as live:
        while True:
            await anyio.sleep(every)
            _fit(console)
            # rich ends the display with a line end below its rows: on a terminal as
            # tall as the rows, the first would scroll into the scrollback, and stay.
            rows = view(time.perf_counter() - start)[: console.height - 1]
            live.update(_render(rows), refresh=True)


def _isatty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # closed
        return False


def _fit(console: Console) -> None:
    """The console's width: stderr's terminal now (rich would ask stdin first, then
    believe COLUMNS)."""
    try:
        size = os.get_terminal_size(sys.__stderr__.fileno() if sys.__stderr__ else 2)
    except (OSError, ValueError):
        return
    console.width = max(1, size.columns)
    console.height = max(1, size.lines)


def _render(rows: Sequence[Row]) -> RenderableType:
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    parts: list[RenderableType] = []
    for row in rows:
        if isinstance(row, Bar):
            grid = Table.grid(expand=True, padding=(0, 1))
            grid.add_column(ratio=1, min_width=10)
            grid.add_column(no_wrap=True, overflow="ellipsis")
            fraction = min(1.0, max(0.0, row.fraction))
            grid.add_row(ProgressBar(total=1.0, completed=fraction), Text(row.text))
            parts.append(grid)
        else:
            parts.append(Text(row, no_wrap=True, overflow="ellipsis"))
    return Group(*parts)


# -- the figures' words, shared by the views ------------------------------------------------


def count(n: int) -> str:
    """1234567 -> '1,234,567'."""
    return f"{n:,}"


def size(n: float) -> str:
    """Bytes, short: '812 B', '4.1 KB', '1.2 GB' (powers of 1000, as `ls -h --si`)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def span(seconds: float | None) -> str:
    """A duration, short: '42s', '3m05s', '2h07m'; '-' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(done: float, total: float, elapsed: float) -> float | None:
    """Seconds left at the average pace so far; None before anything is done."""
    if done <= 0 or total <= 0 or elapsed <= 0:
        return None
    return max(0.0, elapsed * (total - done) / done)


class RateMeter:
    """Events per second over about the last `window` seconds (the display's clock)."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self._samples: list[tuple[float, int]] = []

    def rate(self, now: float, total: int) -> float:
        samples = self._samples
        samples.append((now, total))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.pop(0)
        then, before = samples[0]
        return (total - before) / (now - then) if now > then else 0.0
