"""Which paths name the same file: an output must never be an input or another output.

Rules:
- Checked before anything is opened for writing, with `stat` only (nothing is opened,
  so a named pipe given as an input is not consumed by the check).
- A file that exists is known by (st_dev, st_ino), whatever the spelling: symlink, hard
  link, `./x`, absolute or relative. A file that does not exist yet (an output about to
  be created) is known by its resolved real path, so a dangling symlink and its target
  are the same output.
- `-` is stdin as an input and stdout as an output (records with no -o, or -o -): when
  the shell redirected it to a regular file (`< in.jsonl`, `>> in.jsonl`), that file
  is compared like any other (fstat of fd 0 or 1). A pipe, a terminal, and character
  devices (`/dev/null`, which may be an input and an output at once) are not compared:
  writing to them destroys nothing.
- The manifests a command writes beside an output are outputs; those it reads are inputs.
- A URL is known by its store and path (storage.canonical): `s3a://b/k` is `s3://b/k`,
  `file:///abs/x` is the local file /abs/x. The check runs before anything at an output
  is removed or opened (partjoin.clear_output runs after it, in open_run).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from engine.config import Config
from engine.errors import ConfigError
from engine.files.manifests import manifest_path
from engine.files.storage import canonical, is_url

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
            return ("file", info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None
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
        if path is not None and (key := file_key(path, fd=0)) is not None:
            seen.setdefault(key, _name(role, path, output=False))
    for role, path in outputs:
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
    process writes them), --summary, and the manifest beside -o of a --shard or Ray run."""
    output = (config.output or "-") if records else config.output
    named: list[Named] = [("-o" if config.output else "the records", output)]
    named.append(("--summary", config.summary))
    named.append(("--series", config.series))
    if config.output not in (None, "-") and (config.shard is not None or config.backend == "ray"):
        named.append(("the manifest of -o", manifest_path(config.output)))
    return named
