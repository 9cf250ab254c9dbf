"""The secrets of a run and the one redactor (pure).

Rules:
- A run's secrets are gathered once, in one `Secrets`: the ones it was given (a static
  token, the client secret, a proxy's password) and the tokens its token provider has
  issued that an answer may still echo (engine/core/kept.py says which and for how
  long). The issued ones are asked for at each use (`issued()`), so a token renewed
  mid-run is covered from the moment it exists.
- Every text or byte string that leaves the process (records, error messages, the
  summary) goes through `redact` / `redact_bytes`; each secret becomes `[redacted]`.
- A secret is hunted in every spelling a server or a library may echo it in, in any mix
  character by character: raw; JSON-escaped (`\\uXXXX` in either hex case for any
  character, a surrogate pair beyond the BMP, `\\/` and the other short escapes, with
  the backslash itself escaped again when a text body holding it is written as a JSON
  string); percent-encoded (`%XX` of each UTF-8 byte in either hex case, `+` for a
  space). Client credentials also give the base64 of `id:secret` (HTTP Basic), standard
  and URL-safe, hunted in the same spellings (a raw one may leave its `=` padding).
- A redaction never breaks JSON: a match that starts or ends inside an escape takes the
  whole escape, so a body that was valid JSON stays valid JSON.
- Cheap when there is nothing to find: without a backslash or a percent sign (nor a `+`
  when a secret holds a space) only the raw spellings can occur, and a few substring
  scans say so. With escapes, a rough unescaping (`_unspelled`) and a substring scan
  filter first; the spelled-out pattern (compiled once per set of secrets, when first
  needed) runs only when the filter finds a secret, or for a secret it cannot filter
  (one holding a backslash, `%`, `"` or a control character, or too short).
- Secrets shorter than `min_length` (of any kind) are not hunted in records: replacing
  them would mangle ordinary words. A message made by the code that holds the secrets
  uses a `min_length` of 1: the token client's (the client secret, the proxy's credentials
  and the tokens it granted) and a proxy's refusal (its own credentials, core/proxies.py).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable
from urllib.parse import quote, quote_plus, unquote_to_bytes

#: Shorter "secrets" are not hunted in records: replacing them would mangle ordinary words.
MIN_SECRET_LENGTH = 8
REDACTED = "[redacted]"
_REDACTED_BYTES = REDACTED.encode()
_BACKSLASH = ord("\\")
_U = ord("u")


_NOT_IN_A_TOKEN = re.compile("[^\x20-\x7e]").search


def token_problem(token: str) -> str | None:
    """Why `token` cannot be sent as a bearer token (a control or non-ASCII character:
    a header cannot carry it as it is), or None. Names the character, never the token."""
    found = _NOT_IN_A_TOKEN(token)
    if found is None:
        return None
    code = ord(found.group())
    kind = "a control character" if code < 0x20 or 0x7F <= code < 0xA0 else "a non-ASCII character"
    return f"{kind} (U+{code:04X})"


def _no_tokens() -> tuple[str, ...]:
    return ()


def _hex(value: int, width: int) -> str:
    """A regex for `value` in hex, either case: 0x2f -> `2[fF]`."""
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in format(value, f"0{width}x"))


_SHORT_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "\b": "b",
    "\f": "f",
    "\n": "n",
    "\r": "r",
    "\t": "t",
}


#: An escape's backslash, perhaps escaped again: one or more, spelled so that every
#: alternative starts with a literal and the regex engine skips ahead by character set
#: (`\\\\+` would not let it: about 3.5x slower).
_ESC = r"\\\\*"


def _spellings(ch: str) -> str:
    """A regex for one character of a secret in any of its spellings (module rules).
    Escapes come before the raw character: a backslash prefers its escaped pair."""
    code = ord(ch)
    if code > 0xFFFF:
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        alts = [rf"{_ESC}u{_hex(high, 4)}{_ESC}u{_hex(low, 4)}"]
    else:
        alts = [rf"{_ESC}u{_hex(code, 4)}"]
    if ch in _SHORT_ESCAPES:
        alts.append(_ESC + re.escape(_SHORT_ESCAPES[ch]))
    alts.append("".join("%" + _hex(b, 2) for b in ch.encode("utf-8", "surrogatepass")))
    if ch == " ":
        alts.append(r"\+")
    alts.append(re.escape(ch))
    return "(?:" + "|".join(alts) + ")"


#: Base64's padding, which a secret's base64 form (held without it) may be followed by;
#: taking it after any secret is harmless (`=` is nothing to JSON).
_PADDING = _spellings("=") + "{0,2}"


def _pattern(secret: str) -> str:
    return "".join(_spellings(ch) for ch in secret) + _PADDING


def _basic(client_id: str, secret: str) -> tuple[str, ...]:
    """Base64 of `id:secret` (an HTTP Basic header's value), standard and URL-safe,
    without the `=` padding."""
    raw = f"{client_id}:{secret}".encode("utf-8", "surrogatepass")
    return tuple(
        dict.fromkeys(
            encode(raw).decode("ascii").rstrip("=")
            for encode in (base64.b64encode, base64.urlsafe_b64encode)
        )
    )


def _unicode_escapes(data: bytes) -> bytes:
    """`data` with each `\\uXXXX` as the UTF-8 of its code unit (a surrogate pair as two
    halves: secrets beyond the BMP are not filtered, see `_NO_PROBE`). A split and a
    cached lookup per escape: a regex with a callback costs several times more, and
    bodies from `ensure_ascii` encoders hold an escape for every non-ASCII character."""
    pieces = data.split(b"\\u")
    out = [pieces[0]]
    cache = _UNITS
    for piece in pieces[1:]:
        unit = cache.get(piece[:4])
        if unit is None:
            unit = _unit(piece[:4])
        out.append(piece if unit is _NOT_HEX else unit + piece[4:])
    return b"".join(out)


_NOT_HEX = b"\\u"
_UNITS: dict[bytes, bytes] = {}


def _unit(digits: bytes) -> bytes:
    if len(digits) != 4 or not all(b in _HEX_DIGITS for b in digits):
        return _NOT_HEX
    unit = chr(int(digits, 16)).encode("utf-8", "surrogatepass")
    if len(_UNITS) < 4096:
        _UNITS[digits] = unit
    return unit


#: `re`'s literal search: `b"\\u" in data` is ~3x slower on a body with many `\\"` (each
#: backslash a false start), and most escaped bodies hold no `\\u` at all.
_U_ESCAPE = re.compile(rb"\\u").search


def _unspelled(data: bytes, percents: Callable[[bytes], bytes]) -> bytes:
    """`data` with every escape a secret may hide behind undone, roughly: `\\uXXXX`
    decoded, backslashes dropped, `%XX` decoded (by `percents`, see `_percents`), `+`
    read as a space. Only a filter: a spelled secret leaves its probe
    (`_probe`) in the result; the pattern decides."""
    if b"\\" in data:
        if _U_ESCAPE(data) is not None:
            data = _unicode_escapes(data)
        data = data.replace(b"\\", b"")
    if b"%" in data:
        data = percents(data)
    return data.replace(b"+", b" ")


def _percents(probes: tuple[bytes, ...]) -> Callable[[bytes], bytes]:
    """`unquote_to_bytes`, when `data` holds a `%XX` escape of a byte a probe holds;
    else `data` as it is. A secret spelled in `data` leaves its probe in the decoded text
    from raw bytes, `+` and escapes of the probe's own bytes only (a probe holds no `%`):
    without such an escape, that probe is in `data` as it is. A JWT's
    probes hold letters, digits, `-`, `_` and `.`, which URLs seldom escape: the `%2F`s
    and `%3D`s of beacon URLs then cost one scan, not a Python loop over each `%`."""
    held = {b for probe in probes for b in probe}
    if 0x20 in held:  # a probe's space may be a secret's `+` (`_probe`), spelled `%2B`
        held.add(0x2B)
    if not held:
        return lambda data: data
    search = re.compile(_escapes_of(held).encode()).search
    return lambda data: data if search(data) is None else unquote_to_bytes(data)


def _escapes_of(held: set[int]) -> str:
    """A regex for the `%XX` escapes of the bytes `held`, in either hex case: one branch
    per high digit (`%(?:4[1-9a-fA-F]|...)`), not one per byte (several times slower on a
    body full of `%`)."""
    branches = []
    for high in sorted({b >> 4 for b in held}):
        lows = "".join(sorted({c for b in held if b >> 4 == high for c in f"{b & 15:x}{b & 15:X}"}))
        branches.append(f"{_hex(high, 1)}[{lows}]")
    return "%(?:" + "|".join(branches) + ")"


#: Characters that defeat `_unspelled` as a filter (they are escapes themselves, are
#: written as `\n`-like escapes, or lie beyond the BMP, which JSON writes as a surrogate
#: pair): a secret holding one is always looked for by pattern.
_NO_PROBE = re.compile('[\\\\%"\\x00-\\x1f\\x7f\U00010000-\U0010ffff]')
#: Undoing an escape just before a secret may eat its first characters (`\u004` then
#: a secret starting `1...`): the probe skips as many as an escape can eat.
_EATEN = 5


def _probe(secret: str) -> bytes | None:
    if _NO_PROBE.search(secret):
        return None
    probe = secret.encode("utf-8", "surrogatepass")[_EATEN:].replace(b"+", b" ")
    return probe or None  # a secret too short to probe: looked for by pattern


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _escape_around(data: bytes, i: int, floor: int) -> tuple[int, int] | None:
    """The (start, end) of the JSON escape (`\\n`, `\\u00e9`) that position `i` falls
    strictly inside, looking no further back than `floor`; None when it falls in none."""
    for back in range(1, 6):  # the escape's backslash is at most 5 bytes before `i`
        at = i - back
        if at < floor:
            return None
        byte = data[at]
        if byte == _BACKSLASH:
            run = 1  # an even run of backslashes is escaped backslashes, no escape
            while at - run >= floor and data[at - run] == _BACKSLASH:
                run += 1
            if run % 2 == 0:
                return None
            is_u = at + 1 < len(data) and data[at + 1] == _U
            if back == 1:
                return at, min(len(data), at + (6 if is_u else 2))
            if is_u and all(b in _HEX_DIGITS for b in data[at + 2 : i]):
                return at, min(len(data), at + 6)
            return None
        if byte not in _HEX_DIGITS and byte != _U:
            return None
    return None


class _Finder:
    """One set of secrets, hunted in UTF-8 bytes (text is hunted as its UTF-8)."""

    __slots__ = ("_literals", "_percents", "_probes", "_raws", "_regex", "_secrets", "_space")

    _probes: tuple[bytes, ...] | None

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._secrets = secrets
        self._raws = tuple(s.encode("utf-8", "surrogatepass") for s in secrets)
        self._space = any(" " in s for s in secrets)  # then `+` may spell it
        probes = [_probe(s) for s in secrets]
        # Found by `bytes.__contains__`: in text with its backslashes gone it is 2-4x
        # faster than `re`'s literal search for a 20-80 byte probe (a skip table).
        self._probes = None if None in probes else tuple(p for p in probes if p is not None)
        self._percents = _percents(self._probes or ())
        self._literals: tuple[bytes, ...] | None = None  # made when first needed
        self._regex: re.Pattern[bytes] | None = None  # compiled when first needed

    def redact_text(self, text: str) -> str:
        if "\\" not in text and "%" not in text and "+" not in text:
            for secret in self._secrets:
                if secret in text:
                    break
            else:
                return text
        return self.redact(text.encode("utf-8", "surrogatepass")).decode("utf-8", "surrogatepass")

    def redact(self, data: bytes) -> bytes:
        if b"\\" not in data and b"%" not in data and not (self._space and b"+" in data):
            # Only raw spellings can occur, and no escape can be broken.
            for raw in self._raws:
                if raw in data:
                    data = data.replace(raw, _REDACTED_BYTES)
            return data
        if not self._raws or self._filtered_out(data):
            return data
        return self._spelled(data)

    def _filtered_out(self, data: bytes) -> bool:
        """True when no secret can be spelled in `data` (its escapes undone, no probe is
        there); False when one may be, or the filter cannot tell."""
        probes = self._probes
        if probes is None:
            return False
        plain = _unspelled(data, self._percents)
        return not any(probe in plain for probe in probes)

    def _spelled(self, data: bytes) -> bytes:
        """Redact the usual spellings found as they are (a substring scan each), then,
        when the filter still sees a secret (a mixed spelling) or cannot filter, by pattern."""
        literals = self._literals
        if literals is None:
            literals = self._literals = _literals(self._secrets)
        spans = []
        for literal in literals:
            at = data.find(literal)
            while at >= 0:
                spans.append((at, at + len(literal)))
                at = data.find(literal, at + len(literal))
        if spans:
            data = _redact_spans(data, sorted(spans))
        if self._filtered_out(data):
            return data
        regex = self._regex
        if regex is None:
            # Longest first: a secret holding another is taken whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            pattern = "|".join(_pattern(s) for s in ordered)
            regex = self._regex = re.compile(pattern.encode("utf-8", "surrogatepass"))
        return _redact_spans(data, [found.span() for found in regex.finditer(data)])


def _literals(secrets: tuple[str, ...]) -> tuple[bytes, ...]:
    """The spellings servers and libraries use whole (each character the same way), and
    those again inside a JSON string (backslashes doubled): found by substring scans."""
    found: dict[bytes, None] = {}
    for secret in secrets:
        lower = _hex_lower(quote(secret, safe=""))
        spelled = {
            secret,
            secret.replace("/", "\\/"),
            _orjson_like(secret),
            _every_u(secret, upper=False),
            _every_u(secret, upper=True),
            quote(secret, safe=""),
            lower,
            quote_plus(secret, safe=""),
            _hex_lower(quote_plus(secret, safe="")),
        }
        for text in spelled | {t.replace("\\", "\\\\") for t in spelled if "\\" in t}:
            found[text.encode("utf-8", "surrogatepass")] = None
    return tuple(sorted(found, key=len, reverse=True))


def _orjson_like(text: str) -> str:
    """`text` inside a JSON string as a compact encoder writes it (`"`, `\\`, controls)."""
    out = []
    for ch in text:
        if ch in _SHORT_ESCAPES and ch != "/":
            out.append("\\" + _SHORT_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _every_u(text: str, *, upper: bool) -> str:
    units = text.encode("utf-16-be", "surrogatepass")
    codes = (int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2))
    return "".join(f"\\u{c:04X}" if upper else f"\\u{c:04x}" for c in codes)


def _hex_lower(text: str) -> str:
    return re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def _redact_spans(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    """`data` with each (start, end) span (sorted by start) as `[redacted]`; overlapping
    spans merge, and a span that starts or ends inside a JSON escape takes the escape."""
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    parts: list[bytes] = []
    pos = 0
    for start, end in merged:
        if end <= pos:
            continue
        escape = _escape_around(data, max(start, pos), pos)
        first = max(start, pos) if escape is None else escape[0]
        escape = _escape_around(data, end, first)
        last = end if escape is None else escape[1]
        parts.append(data[pos:first])
        parts.append(_REDACTED_BYTES)
        pos = last
    if not parts:
        return data
    parts.append(data[pos:])
    return b"".join(parts)


class Secrets:
    """What must never be written, and the redactor for it."""

    __slots__ = ("_finders", "_given", "_issued", "_min_length")

    def __init__(
        self,
        given: Iterable[str | None] = (),
        *,
        issued: Callable[[], Iterable[str]] = _no_tokens,
        min_length: int = MIN_SECRET_LENGTH,
        basic: Iterable[tuple[str | None, str | None]] = (),
    ) -> None:
        """`basic`: (client id, client secret) pairs, whose HTTP Basic form is hunted too."""
        self._min_length = min_length
        derived = [b for cid, secret in basic if cid and secret for b in _basic(cid, secret)]
        # Each secret once, however many names it goes by: every redaction scans for each.
        self._given = tuple(
            dict.fromkeys(s for s in (*given, *derived) if s and len(s) >= min_length)
        )
        self._issued = issued
        # Compiled patterns by set of secrets (a renewal adds one set; few per run).
        self._finders: dict[tuple[str, ...], _Finder] = {}

    def texts(self) -> tuple[str, ...]:
        """Every secret to hunt now: the given ones, then the newest tokens issued."""
        given = self._given
        issued = [t for t in self._issued() if len(t) >= self._min_length and t not in given]
        return given + tuple(issued) if issued else given

    def _finder(self) -> _Finder:
        texts = self.texts()
        found = self._finders.get(texts)
        if found is None:
            if len(self._finders) >= 64:  # tokens renewed many times: keep the newest sets
                self._finders.clear()
            found = self._finders[texts] = _Finder(texts)
        return found

    def redact(self, text: str) -> str:
        return self._finder().redact_text(text)

    def redact_bytes(self, data: bytes) -> bytes:
        return self._finder().redact(data)
