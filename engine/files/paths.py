"""Which paths name the same file: an output must never be an input or another output;
and which name a standard stream that was closed.

Rules:
- Checked before anything is opened for writing, with `stat` only (nothing is opened,
  so a named pipe given as an input is not consumed by the check).
- A file that exists is known by (st_dev, st_ino), whatever the spelling: symlink, hard
  link, `./x`, absolute or relative. A file that does not exist yet (an output about to
  be created) is known by its resolved real path, so a dangling symlink and its target
  are the same output.
- `-` is stdin as an input and stdout as an output (records with no -o, or -o -): when
  the shell redirected it to a regular file (`< in.jsonl`, `>> in.jsonl`) or a pipe
  (`| cat`), that file or pipe is compared like any other (fstat of fd 0 or 1), so
  `--summary /dev/stdout` is not mixed into the records piped on stdout. A terminal and
  character devices (`/dev/null`, which may be an input and an output at once) are not
  compared: what goes there destroys nothing. Nor is a socket on stdin against one on
  stdout: under inetd or socat the same socket is how a command reads and answers.
- A standard stream closed when the command started (`<&-`, `>&-`, `2>&-`) holds
  /dev/null from then on (`hold_closed_streams`, cli.main's first step), so no file or
  socket opened later takes its number (uvloop aborts closing an fd 0-2, and a record
  written to fd 1 would reach that file). Reading events from it or writing records (or
  another output) to it is exit 2, one line: they would be lost.
- A stdout or stderr whose reader goes away during the run (EPIPE: `adbatch load ...
  2>&1 | head`) loses what is written to it from then on, and nothing else
  (`drop_unread_messages`, before the command starts): a message or a report not read
  never changes the exit code or a file. Records on stdout are written to its fd, not
  through sys.stdout: a reader gone before them is still an output error.
- The manifests a command writes beside an output are outputs; those it reads are inputs.
- A URL is known by its store and path (storage.canonical): `s3a://b/k` is `s3://b/k`,
  `file:///abs/x` is the local file /abs/x. The check runs before anything at an output
  is removed or opened (partjoin.clear_output runs after it, in open_run).
"""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from engine.config import Config
from engine.errors import ConfigError
from engine.files.manifests import manifest_path
from engine.files.storage import canonical, is_url

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

#: A path with what it is for in the command: ("input", "a.jsonl"), ("-o", "out.jsonl").
#: `-` is stdin among the inputs, stdout among the outputs.
Named = tuple[str, str | None]


def file_key(path: str, *, fd: int | None = None) -> tuple[object, ...] | None:
    """What identifies the file at `path`; None when it is not one to compare. `-` is
    the file open as `fd` (0: stdin, 1: stdout; None: not compared)."""
    if is_url(path):  # an object: known by its store and path, however spelled
        place = canonical(path)
        if place is None:
            return ("url", path)
        if place[0] not in ("file", "local"):
            return ("url", *place)
        path = place[1]  # a file:// URL is a local file: compared as one
    try:
        if path == "-":
            if fd is None:
                return None
            info = os.fstat(fd)
            mode = info.st_mode
            if stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or (fd == 1 and stat.S_ISSOCK(mode)):
                return ("file", info.st_dev, info.st_ino)
            return None
        info = os.stat(path)
    except FileNotFoundError:
        return ("path", os.path.realpath(path))
    except (OSError, ValueError):
        return None  # cannot be looked at (a closed fd): opening it will say why
    if stat.S_ISCHR(info.st_mode):
        return None
    return ("file", info.st_dev, info.st_ino)


def _name(role: str, path: str, *, output: bool) -> str:
    if path == "-":
        return f"stdout ({role})" if output else "stdin"
    return f"the input {path}" if role == "input" else f"{role} {path}"


def check_outputs(inputs: Iterable[Named], outputs: Iterable[Named]) -> None:
    """Raise ConfigError (exit 2) naming both paths when an output is the same file as
    an input (role "input", or the option that reads it: "--token-file") or as another
    output. `-`: stdin among `inputs`, stdout among `outputs`."""
    seen: dict[tuple[object, ...], str] = {}
    for role, path in inputs:
        if path is not None:
            _refuse_closed(role, path, fd=0)
        if path is not None and (key := file_key(path, fd=0)) is not None:
            seen.setdefault(key, _name(role, path, output=False))
    for role, path in outputs:
        if path is not None:
            _refuse_closed(role, path, fd=1)
        if path is None or (key := file_key(path, fd=1)) is None:
            continue
        name = _name(role, path, output=True)
        if key in seen:
            raise ConfigError(
                f"{name} is the same file as {seen[key]}: "
                "an output must not overwrite an input or another output"
            )
        seen[key] = name


def written_by(config: Config, *, records: bool = True) -> list[Named]:
    """The files a run writes: its records (stdout without -o, when `records`: this
    process writes them, and --records is not none), --summary, and the manifest beside
    -o of a --shard or Ray run."""
    output = config.output
    if output is None and records and config.records != "none":
        output = "-"
    named: list[Named] = [("-o" if config.output else "the records", output)]
    named.append(("--summary", config.summary))
    named.append(("--series", config.series))
    if config.output not in (None, "-") and (config.shard is not None or config.backend == "ray"):
        named.append(("the manifest of -o", manifest_path(config.output)))
    return named


#: The standard streams closed when the command started (`hold_closed_streams`).
_closed: set[int] = set()
_STREAMS = {0: "stdin", 1: "stdout", 2: "stderr"}
#: The names of a standard stream, as `/dev/stdout`, `/dev/fd/1`, `/proc/self/fd/1`.
_STREAM_NAMES = {
    name: fd
    for fd, stream in _STREAMS.items()
    for name in (f"/dev/{stream}", f"/dev/fd/{fd}", f"/proc/self/fd/{fd}")
}


def hold_closed_streams() -> None:
    """Open /dev/null onto each of fd 0, 1 and 2 that is closed, and give sys its stream
    there (Python leaves `sys.stdout` None then): the number stays taken, so no file or
    socket opened later gets it, and the fd is remembered as closed (`_refuse_closed`)."""
    for fd in _STREAMS:
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:  # (a lower fd closed too is filled first: null == fd)
            os.dup2(null, fd)
            os.close(null)
        _closed.add(fd)
        stream = open(fd, "r" if fd == 0 else "w", closefd=False, errors="backslashreplace")
        setattr(sys, _STREAMS[fd], stream)


class _Unread(io.FileIO):
    """A standard stream's fd where what is written once the reader has gone (EPIPE)
    is lost instead of raising: it was a message, and the run goes on to its end.
    stderr (`any_error`) loses what it cannot write for any reason (a log file on a full
    disk: ENOSPC, EIO): the run's exit code is never a message's."""

    any_error = False

    def write(self, data: ReadableBuffer, /) -> int:
        try:
            return super().write(data)
        except BrokenPipeError:
            return memoryview(data).nbytes
        except OSError:
            if not self.any_error:
                raise
            return memoryview(data).nbytes


def drop_unread_messages() -> None:
    """Make sys.stdout and sys.stderr, when they are the process's own streams, lose
    what is written after their reader has gone rather than raise BrokenPipeError
    (where a message was said, or at exit, when Python flushes them): same encoding
    and buffering, on the same fd. Called by the `adbatch` command only: a program that
    calls the CLI in-process keeps its own streams."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or stream is not getattr(sys, f"__{name}__"):
            continue
        try:
            stream.flush()
            fd = stream.fileno()
            os.fstat(fd)
        except (OSError, ValueError):
            continue  # closed: hold_closed_streams puts /dev/null there
        raw = _Unread(fd, "w", closefd=False)
        raw.any_error = name == "stderr"  # stdout may be the product (report, config)
        # Buffered as it was: Python's stderr has no buffer (each message goes out as it
        # is said, to a pipe too), stdout one.
        unbuffered = isinstance(getattr(stream, "buffer", None), io.RawIOBase)
        writer = raw if unbuffered else io.BufferedWriter(raw)
        setattr(
            sys,
            name,
            io.TextIOWrapper(
                writer,
                encoding=stream.encoding,
                errors=stream.errors,
                line_buffering=stream.line_buffering,
                write_through=stream.write_through,
            ),
        )


def _stream_named(path: str) -> int | None:
    """The standard stream `path` names (`/dev/stdout`, `//dev/stdout`, `/dev/fd/1`,
    `/proc/self/fd/1`, or a symlink to one of them, followed link by link: resolved
    whole, a held stream is only /dev/null), or None."""
    for _ in range(40):  # the kernel's own limit on links followed
        folder, name = os.path.split(os.path.abspath(path))
        path = os.path.join(os.path.realpath(folder), name)  # /dev/fd -> /proc/<pid>/fd
        own = path.replace(f"/proc/{os.getpid()}/", "/proc/self/", 1)
        for named in (path, own):
            if named in _STREAM_NAMES:
                return _STREAM_NAMES[named]
        try:
            path = os.path.join(os.path.dirname(path), os.readlink(path))
        except OSError:  # not a link (or not there): no stream
            return None
    return None


def _refuse_closed(role: str, path: str, *, fd: int) -> None:
    """ConfigError when `path` (`-`: fd `fd`; 0 for an input, 1 for an output) names a
    standard stream that was closed when the command started: what is read from it or
    written to it would be lost."""
    std = fd if path == "-" else _stream_named(path)
    if std is None or std not in _closed:
        return
    stream = _STREAMS[std]
    if fd == 0:
        what = "the events" if role == "input" else role
        raise ConfigError(f"{stream} is closed: {what} cannot be read from it; name a file")
    what = "the records" if role in ("the records", "-o") else role
    hint = "give -o FILE" if what == "the records" else "name a file"
    if role == "the text report":
        hint = "redirect stdout to a file (> FILE)"
    raise ConfigError(f"{stream} is closed: {what} would be lost; {hint}")
