"""Whether bytes are one JSON text, without building Python objects (pure).

Rules:
- `is_json(data)` is True exactly when `orjson.loads(data)` succeeds: the record of an
  answer embeds its body raw when it is JSON (records.embed_body), and that choice must
  not depend on which parser looked.
- simdjson (pysimdjson, a dependency where it has wheels) only says yes: it validates a
  2.7 KB delivery answer in ~0.9 µs against orjson.loads' 3.6 µs, which builds every dict
  and str to throw them away. Whatever it refuses, orjson decides: simdjson refuses some
  JSON that orjson takes (integers beyond 64 bits, objects nested 1024 deep), and a
  parser still held by a proxy raises. The one text simdjson takes and orjson refuses,
  a leading UTF-8 byte order mark, never reaches it. Without pysimdjson, orjson decides
  everything: the same answers.
- Bodies over `SIMD_MAX_BYTES` go to orjson: simdjson's parser keeps the capacity of
  the largest text it has seen, for the life of the process.
"""

from __future__ import annotations

from typing import Any

import orjson

try:
    import simdjson
except ImportError:  # optional: orjson decides alone
    _parse: Any = None
else:
    # One parser per process. Its parse holds the GIL throughout, and a parse while
    # another thread's result is still alive raises (then orjson decides).
    _parse = simdjson.Parser().parse

#: Larger bodies are checked by orjson (see the module's rules).
SIMD_MAX_BYTES = 256 << 10


def is_json(data: bytes) -> bool:
    """True when `data` is one JSON text, as orjson reads it (module rules)."""
    # A byte order mark (EF BB BF) is the one text simdjson takes and orjson refuses;
    # a JSON text never starts with EF otherwise (an int compare, not startswith).
    if _parse is not None and 0 < len(data) <= SIMD_MAX_BYTES and data[0] != 0xEF:
        try:
            _parse(data)
        except Exception:  # any refusal: orjson has the last word
            pass
        else:
            return True
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def simd_available() -> bool:
    """Whether simdjson does the first check (pysimdjson is installed)."""
    return _parse is not None
