"""Run a command in a real pseudo-terminal of a given size and watch its screen.

`run_in_pty(argv, columns=80)` starts the command with stdin, stdout and stderr on the
slave side of a fresh pty (window size set by TIOCSWINSZ, as a terminal emulator does),
feeds every byte the command writes through `pyte` (a VT100 emulator) and returns the
final screen, with every distinct screen seen while the command ran.

The screen is taller than anything the tests print, so nothing scrolls out of sight: a
line left behind stays on the final screen. Given `rows`, a short terminal: the lines
scrolled off its top are kept in order (`scrolled`), as a terminal's scrollback keeps them.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

ROWS = 60


@dataclass
class PtyRun:
    returncode: int
    columns: int
    final: list[str]  # the final screen's lines, right-stripped, trailing blanks dropped
    seen: list[list[str]] = field(default_factory=list)  # every distinct screen
    raw: bytes = b""
    scrolled: list[str] = field(default_factory=list)  # off the top, right-stripped

    def seen_text(self) -> str:
        return "\n".join("\n".join(screen) for screen in self.seen)


def _lines(display: Sequence[str]) -> list[str]:
    lines = [line.rstrip() for line in display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def run_in_pty(
    argv: Sequence[str],
    *,
    columns: int,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 60.0,
    rows: int = ROWS,
) -> PtyRun:
    import pyte

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    environ.update({"TERM": "xterm-256color", **(env or {})})
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        environ.pop(name, None)
    process = subprocess.Popen(
        list(argv),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=environ,
        cwd=cwd,
        start_new_session=True,
    )
    os.close(slave)
    screen = pyte.HistoryScreen(columns, rows, history=100_000)
    stream = pyte.ByteStream(screen)
    seen: list[list[str]] = []
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave end is closed
                break
            if not data:
                break
            chunks.append(data)
            stream.feed(data)
            lines = _lines(screen.display)
            if not seen or seen[-1] != lines:
                seen.append(lines)
        returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    scrolled = [
        "".join(line[x].data for x in range(columns)).rstrip() for line in screen.history.top
    ]
    return PtyRun(
        returncode, columns, _lines(screen.display), seen, b"".join(chunks), scrolled
    )  # fmt: skip
