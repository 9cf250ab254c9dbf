"""The record of input a read error left unread, and how `--resume` knows one (one home).

A read of the input that fails for a reason that may pass (the disk, the store) ends
the file, or a --workers span, with one `invalid` record that says so; `--resume` reads
that input again (files/resume.py). Its text is made here and recognised here only:
a truncated gzip or an over-long line, which will not read better next time, are not
such records.
"""

from __future__ import annotations

#: How the record ends: the rest of its file, or its span's records, were not read.
REST_OF_FILE = "the rest of this file is unread"
THIS_RECORD = "this record is unread"


def unread_error(why: object, *, what: str = "input", end: str = REST_OF_FILE) -> str:
    """The error of the record a read error (`why`) left: `what` could not be read."""
    return f"{what} could not be read ({why}); {end}"


def is_unread_error(error: object) -> bool:
    """Whether `error` is an `unread_error`'s text."""
    return (
        type(error) is str
        and " could not be read (" in error
        and error.endswith((REST_OF_FILE, THIS_RECORD))
    )
