"""Which paths name the same file: an output must never be an input or another output.

Rules:
- Checked before anything is opened for writing, with `stat` only (nothing is opened,
  so a named pipe given as an input is not consumed by the check).
- A file that exists is known by (st_dev, st_ino), whatever the spelling: symlink, hard
  link, `./x`, absolute or relative. A file that does not exist yet (an output about to
  be created) is known by its resolved real path, so a dangling symlink and its target
  are the same output.
- `-` (stdin, stdout) and character devices (`/dev/null`, a terminal, which may be an
  input and an output at once) are not compared: writing to them destroys nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from engine.errors import ConfigError

#: A path with what it is for in the command: ("input", "a.jsonl"), ("-o", "out.jsonl").
Named = tuple[str, str | None]


def file_key(path: str) -> tuple[object, ...] | None:
    """What identifies the file at `path`; None when it is not one to compare."""
    if path == "-":
        return None
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return ("path", os.path.realpath(path))
    except (OSError, ValueError):
        return None  # cannot be looked at: opening it will say why
    if stat.S_ISCHR(info.st_mode):
        return None
    return ("file", info.st_dev, info.st_ino)


def check_outputs(inputs: Iterable[Named], outputs: Iterable[Named]) -> None:
    """Raise ConfigError (exit 2) naming both paths when an output is the same file as
    an input (role "input", or the option that reads it: "--token-file") or as another
    output."""
    seen: dict[tuple[object, ...], str] = {}
    for role, path in inputs:
        if path is not None and (key := file_key(path)) is not None:
            seen.setdefault(key, f"the input {path}" if role == "input" else f"{role} {path}")
    for role, path in outputs:
        if path is None or (key := file_key(path)) is None:
            continue
        if key in seen:
            raise ConfigError(
                f"{role} {path} is the same file as {seen[key]}: "
                "an output must not overwrite an input or another output"
            )
        seen[key] = f"{role} {path}"
