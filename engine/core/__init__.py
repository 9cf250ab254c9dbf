"""Pure: the standard library's pure parts, orjson and itself (no I/O, no clock)."""
