"""Ranged reads of an object that fail for a reason that may pass, tried again in place.

Rules:
- An fsspec file reads an object through its block cache, which asks `fetcher(start,
  end)` for each range. That call is wrapped: when it raises anything but a final error
  (a 5xx, a reset, a timeout: the store's trouble, not the object's), the same range is
  asked for again after each pause of `PAUSES`; the last failure is raised as an
  OSError in words of the caller's (`describe`: redacted), and the reader ends the file
  with its one "could not be read" record as before.
- Final, never tried again: no such object, permission denied, a closed file or a bad
  argument (`_FINAL`). A file without a block cache (an http stream of unknown size) is
  left as it is.
- The drivers' own retries run inside each call (botocore tries a 5xx five times, s3fs
  a reset or a timeout of the body): these pauses cover a store that stays unwell for
  longer than they wait.
- A range answered short (fewer bytes than the object holds there: a store or proxy
  that cuts its answers) is such a failure too, where fsspec asked again for the rest,
  a few bytes a time, and made lines of what came.
- Nothing here reads the bytes: the cache keeps what it was given, so a range read again
  is placed where the failed one would have been, and no line is read twice or skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

#: Seconds to wait before each new try of a range that failed (then it fails for good).
PAUSES = (0.5, 1.0, 2.0)
_FINAL = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
          ValueError, TypeError, NotImplementedError)  # fmt: skip

F = TypeVar("F")


class ShortRead(OSError):
    """A store answered a range with fewer bytes than the object holds there."""


def _retrying(
    fetch: Callable[[int, int], Any], describe: Callable[[Exception], str], size: int | None
) -> Callable[[int, int], Any]:
    def fetcher(start: int, end: int) -> Any:
        for pause in (*PAUSES, None):
            try:
                data = fetch(start, end)
                want = None if size is None else min(end, size) - start
                if want is not None and isinstance(data, bytes) and len(data) < want:
                    raise ShortRead(f"the store sent {len(data)} of the {want} bytes asked for")
                return data
            except Exception as exc:
                if pause is None or isinstance(exc, _FINAL):
                    raise OSError(describe(exc)) from None
                time.sleep(pause)
        raise AssertionError("unreachable")  # the last pass returns or raises

    return fetcher


def retrying(file: F, describe: Callable[[Exception], str]) -> F:
    """`file` (an fsspec file open for reading), its ranged reads tried again on a
    transient failure (see the module's rules); a read that fails for good raises
    OSError(`describe(its error)`), whatever the driver raised (aiohttp's errors are not
    OSErrors, and their text quotes the URL whole)."""
    cache = getattr(file, "cache", None)
    fetch = getattr(cache, "fetcher", None)
    if cache is not None and callable(fetch):
        size = getattr(file, "size", None)
        cache.fetcher = _retrying(fetch, describe, size if isinstance(size, int) else None)
    return file
