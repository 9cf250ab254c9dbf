"""One JSONL line -> its object, numbers as written (the readers' parser).

Rules:
- orjson reads the line. A float whose text matters (any but the timestamp's, which is
  read as a number anyway) is given back its text as written, `12.50` staying `12.50`,
  where the line shows it beyond doubt; else the stdlib parser reads the line again with
  `parse_float=RawNumber` (and integers past 64 bits, NaN, what orjson refuses).
- A line that is not a JSON object is an error text, never an exception.
"""

from __future__ import annotations

import json
import re

import orjson

from engine.core.events import RawNumber


def _has_float(obj: dict[str, object]) -> bool:
    """A float whose text matters: any but the timestamp's, which is read as a number
    anyway (and is in nearly every line: keeping it off the slow path is the point).
    By exact types (orjson makes no subclasses): cheaper than isinstance."""
    for key, value in obj.items():
        kind = type(value)
        if kind is float:
            if key != "timestamp":
                return True
        elif kind is list and float in map(type, value):  # type: ignore[call-overload]
            return True
    return False


# After a top-level key, in a line that orjson read: its value when it is a number.
_NUMBER_AFTER_KEY = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)")


def _key_end(raw: bytes, quoted: bytes) -> int | None:
    """Where `quoted` ends in `raw`, when it is there once as a string of its own; else
    None. Overlapping matches count: a match can end on the next string's opening quote
    (`"k":1,":1,":2.5` holds `":1,"` twice, once across a `"k"`'s closing quote). With no
    backslash in `raw`, a string starts at an even count of quotes before it."""
    end = None
    at = raw.find(quoted)
    while at != -1:
        if raw.count(b'"', 0, at) % 2 == 0:  # an opening quote: a whole string
            if end is not None:
                return None
            end = at + len(quoted)
        at = raw.find(quoted, at + 1)
    return end


def _restore_floats(raw: bytes, obj: dict[str, object]) -> bool:
    """Give each top-level float of `obj` (but the timestamp) its text as `raw` wrote it;
    False when that is not certain, and the stdlib parser reads the line instead.

    Certain when: `raw` holds no backslash (so every `"` delimits a string, and no key
    is written with an escape), holds no object but the top one (lists of scalars only:
    every key is a top-level key), and the key appears once as a string (no duplicate)."""
    if b"\\" in raw:
        return False
    for key, value in obj.items():
        kind = type(value)
        if kind is float:
            if key == "timestamp":
                continue
            end = _key_end(raw, b'"' + key.encode() + b'"')
            if end is None:
                return False
            found = _NUMBER_AFTER_KEY.match(raw, end)
            if found is None:
                return False
            text = found.group(1).decode("ascii")
            # orjson reads an integer past 64 bits as a float; the stdlib as an int.
            obj[key] = int(text) if text.lstrip("-").isdigit() else RawNumber(text)
        elif kind is dict:
            return False
        elif kind is list and not {float, dict, list}.isdisjoint(map(type, value)):  # type: ignore[call-overload]
            return False
    return True


def parse_json_line(raw: bytes) -> tuple[dict[str, object] | None, str | None]:
    """One JSONL line -> (object, None) or (None, error)."""
    try:
        obj = orjson.loads(raw)
        exact = not (isinstance(obj, dict) and _has_float(obj)) or _restore_floats(raw, obj)
    except orjson.JSONDecodeError as exc:
        first_error = str(exc)
        exact = False
        obj = None
    else:
        first_error = ""
    if not exact:
        # Keep numbers as written (12.50 stays 12.50) and accept integers past 64 bits.
        try:
            obj = json.loads(raw.decode("utf-8"), parse_float=RawNumber)
        except UnicodeDecodeError:
            return None, "line is not valid UTF-8"
        except RecursionError:
            return None, "malformed JSON: nested too deeply"
        except ValueError as exc:
            return None, f"malformed JSON: {first_error or exc}"
    if not isinstance(obj, dict):
        return None, f"line is not a JSON object (got {type(obj).__name__})"
    return obj, None
