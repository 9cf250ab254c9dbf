"""A result's `response` read back from Python (pure): `engine.deliver`'s callers get
the body as the record holds it, not orjson's opaque `Fragment`.

Rules:
- `body` is the bytes the record writes for it: a JSON body as sent (its line breaks as
  spaces, core/records.py), a text body in UTF-8; None when there was no body.
- `json()` is the value a JSON reader of the record finds there: a JSON body parsed
  (orjson: its numbers as numbers), a text body as its str, None for none.
- Nothing is parsed or copied until asked: the engine never calls these.
"""

from __future__ import annotations

from typing import Any

import orjson


class ResponseBody:
    """`body` and `json()` over a slotted dataclass's `response` field."""

    __slots__ = ()
    response: object

    @property
    def body(self) -> bytes | None:
        """The response's bytes as the record writes them (None: no body)."""
        value = self.response
        if value is None:
            return None
        if isinstance(value, str):
            return value.encode("utf-8", "surrogatepass")
        return orjson.dumps(value)  # a Fragment gives back its bytes as they are

    def json(self) -> Any:
        """The response as the record's reader sees it: JSON parsed, a text as a str."""
        value = self.response
        if isinstance(value, orjson.Fragment):
            return orjson.loads(orjson.dumps(value))
        return value
