"""One output record per input record (pure): its format, its kinds, its one parser.

Rules:
- This module owns the record format. Records are built by the named constructors
  (`answered`, `invalid`, `dropped`, `dry_run`, `internal`) and read back only through
  `parse_record`: resume, merge and the report read output lines through it.
- An error kind is one of `ErrorKind`'s values or `http_kind(status)`; no other module
  spells one.
- `response` is the body as the server sent it: embedded as raw JSON (orjson.Fragment,
  never parsed and re-encoded) when it is JSON, its line breaks (whitespace between
  tokens: a JSONL record must stay on one line) written as spaces; a string when it is
  not JSON.
- A record is always writable: a string UTF-8 cannot carry (a lone surrogate) is
  written escaped (`events.printable`).
- Every error text passes through the run's `Secrets` so a token can never reach an
  output file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, Final

import orjson

from engine.core.events import Event, Invalid, printable
from engine.core.jsoncheck import is_json
from engine.core.responses import ResponseBody
from engine.core.rounding import rounded
from engine.core.secrets import Secrets

NO_SECRETS = Secrets()


class ErrorKind:
    """Every `error_kind` a record can carry, besides `http_kind(status)`.

    Plain `str` constants rather than a StrEnum: the kinds key the summary's `errors`
    counts, and orjson refuses an Enum as a dict key; a plain str also pickles and
    compares at str speed on the way to a worker's parent.
    """

    #: The transport's kinds: the call got no HTTP answer. These five are retried
    #: (core/retry.py); the last two are final.
    TIMEOUT: Final = "timeout"
    CONNECT: Final = "connect"
    DISCONNECTED: Final = "disconnected"
    PAYLOAD: Final = "payload"
    NETWORK: Final = "network"
    PROTOCOL: Final = "protocol"  # a malformed HTTP answer
    REQUEST: Final = "request"  # a call that cannot be sent (a bad URL or header)
    TOO_LARGE: Final = "too_large"  # an answer over --max-response-bytes (status kept)
    #: A proxy refused to carry the call (407, 403, a CONNECT answered non-2xx): not
    #: retried, the run stops; --resume sends it again (core/proxies.py).
    PROXY: Final = "proxy"
    #: An unexpected exception while handling one event (a bug): retried by --resume.
    INTERNAL: Final = "internal"
    #: The kinds of records that no server answer caused.
    INVALID: Final = "invalid"
    DROPPED: Final = "dropped"
    DRY_RUN: Final = "dry_run"
    #: A server certificate that failed verification, or a TLS handshake alert: not
    #: retried, the run stops at the first; --resume sends it again, once --cacert or
    #: the client certificate is fixed (net/tls.py).
    TLS: Final = "tls"


def http_kind(status: int) -> str:
    """The kind of a call answered with a non-2xx `status` ("http_404")."""
    return f"http_{status}"


@dataclass(slots=True)  # not frozen: one per call, see `Result`; never mutated
class Response:
    """What one call got back: a status and body, or an error."""

    status: int | None
    body: bytes
    sent_at: float
    latency_ms: float
    error: str | None = None
    error_kind: str | None = None
    retry_after: str | None = None


# Not frozen, by measurement: a frozen dataclass sets each field through
# object.__setattr__, 3.7 µs per Result against 0.5 µs (one per event). Never mutated.
@dataclass(slots=True)
class Result(ResponseBody):
    """The output record of one input record (`body`, `json()`: its response read back)."""

    seq: int
    id: str | None
    source: str
    status: int | None
    ok: bool
    attempts: int
    latency_ms: float | None
    sent_at: float | None
    error: str | None
    response: object
    error_kind: str | None = None
    #: When an open-model schedule (load, replay) meant the call to start (epoch s).
    scheduled_at: float | None = None
    retries: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        try:
            return orjson.dumps(self)
        except orjson.JSONEncodeError:  # a lone surrogate (a path, a library's id): escape it
            return orjson.dumps(_writable(self))


def _writable(value: Any) -> Any:
    """`value` with every string made printable (UTF-8 can carry it). Rare: make_event
    escapes ids already, and a body orjson parsed holds no lone surrogate."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Result):
        return Result(**{f.name: _writable(getattr(value, f.name)) for f in fields(value)})
    if isinstance(value, tuple):
        return [_writable(v) for v in value]
    return value


def jsonl(batch: list[Result]) -> bytes:
    """The records as JSONL: one line each, newline-terminated."""
    if len(batch) == 1:
        return _line(batch[0])
    return b"".join([_line(r) for r in batch])


#: Bytes of JSONL gathered into one piece by `jsonl_parts`.
PART_BYTES = 1 << 20


def jsonl_parts(batch: list[Result]) -> Iterator[bytes]:
    """`jsonl(batch)` in pieces of about PART_BYTES (a longer line is a piece alone, not
    copied again): a batch of big answers is never held twice over, encoded and joined."""
    pending: list[bytes] = []
    size = 0
    for result in batch:
        line = _line(result)
        if len(line) >= PART_BYTES:
            if pending:
                yield b"".join(pending)
                pending, size = [], 0
            yield line
            continue
        pending.append(line)
        size += len(line)
        if size >= PART_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


def _line(r: Result) -> bytes:
    """`r.to_json()` and its newline. Every field in order, as a dict: orjson writes a
    slotted dataclass at twice the cost (1.17 against 0.65 µs, the dict's making included).
    The newline by orjson: `to_json() + b"\n"` copied each line once more."""
    try:
        return orjson.dumps(
            {"seq": r.seq, "id": r.id, "source": r.source, "status": r.status, "ok": r.ok,
             "attempts": r.attempts, "latency_ms": r.latency_ms, "sent_at": r.sent_at,
             "error": r.error, "response": r.response, "error_kind": r.error_kind,
             "scheduled_at": r.scheduled_at, "retries": r.retries},
            option=orjson.OPT_APPEND_NEWLINE,
        )  # fmt: skip
    except orjson.JSONEncodeError:
        return r.to_json() + b"\n"


#: How a JSON text can begin (RFC 8259: whitespace, then a value; orjson takes no BOM).
_MAY_BE_JSON = re.compile(rb'[ \t\r\n]*[{\["\-0-9tfn]')
_VALUE_START = frozenset(b'{["-0123456789tfn')
_BREAKS_AS_SPACES = bytes.maketrans(b"\r\n", b"  ")


def embed_body(body: bytes) -> object:
    """The body for the record: raw JSON when it parses, else text (None when empty)."""
    if not body:
        return None
    # orjson checks all of it first (10 ms for 8 MiB); the regex only when the first byte
    # does not settle it (0.17 µs a call).
    if body[0] not in _VALUE_START and not _MAY_BE_JSON.match(body):
        return body.decode("utf-8", "replace")
    if not is_json(body):  # checked without building it (core/jsoncheck.py)
        return body.decode("utf-8", "replace")
    # In a JSON text a line break can only be whitespace between tokens (one in a string
    # is not JSON): as a space the record stays one line, and the body the same text, its
    # numbers and keys as written. find: `in` costs twice as much here.
    if body.find(b"\n") >= 0 or body.find(b"\r") >= 0:
        return orjson.Fragment(body.translate(_BREAKS_AS_SPACES))
    return orjson.Fragment(body)


def _unsent(
    item: Event | Invalid,
    error: str | None,
    kind: str,
    *,
    ok: bool = False,
    response: object = None,
    scheduled_at: float | None = None,
) -> Result:
    """The record of an item no HTTP answer decided: no status, no attempt, no latency."""
    return Result(
        item.seq, item.id, item.source, None, ok, 0, None, None, error, response, kind,
        scheduled_at,
    )  # fmt: skip


def invalid(item: Invalid) -> Result:
    """The record of an input line that is not a valid event: nothing was sent."""
    return _unsent(item, item.error, ErrorKind.INVALID)


def dropped(event: Event, scheduled_at: float, limit: int) -> Result:
    """The record of a scheduled call that found every slot busy (load's open model)."""
    error = f"dropped: {limit} calls already in flight (--max-in-flight)"
    return _unsent(event, error, ErrorKind.DROPPED, scheduled_at=round(scheduled_at, 6))


def dry_run(event: Event, shown: bytes) -> Result:
    """The record of `--dry-run`: `shown` (the call as JSON) instead of an answer."""
    return _unsent(event, None, ErrorKind.DRY_RUN, ok=True, response=orjson.Fragment(shown))


#: What an internal error's text may hold: a record stays one short line.
_INTERNAL_TEXT_MAX = 300


def internal(item: Event | Invalid, exc: Exception, secrets: Secrets = NO_SECRETS) -> Result:
    """The record of an item whose handling raised `exc` (a bug, not the server's doing):
    nothing is known of its call; the exception's type and message on one line.
    Redacted before it is cut short: a cut secret would escape its redaction."""
    text = secrets.redact(" ".join(f"{type(exc).__name__}: {exc}".split()))
    if len(text) > _INTERNAL_TEXT_MAX:
        text = text[: _INTERNAL_TEXT_MAX - 3] + "..."
    return _unsent(item, text, ErrorKind.INTERNAL)


def server_message(body: bytes, secrets: Secrets = NO_SECRETS) -> str | None:
    """The server's own words for a failure, short and on one line (None when silent).
    Redacted before it is cut short: a cut secret would escape its redaction."""
    if not body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = secrets.redact_bytes(body)[:800].decode("utf-8", "replace")[:200]
    else:
        if not isinstance(data, dict):
            return None
        found = next(
            (
                data[k]
                for k in ("messages", "Status Message", "error_description", "error", "message")
                if k in data
            ),
            None,
        )
        if isinstance(found, list):
            found = "; ".join(str(m) for m in found[:3])
        if not isinstance(found, str) or not found:
            return None
        text = secrets.redact(found)
    text = " ".join(text.split())
    return text[:160] or None


def answered(
    event: Event,
    resp: Response,
    attempts: int,
    secrets: Secrets = NO_SECRETS,
    *,
    retries: tuple[str, ...] = (),
    note: str | None = None,
) -> Result:
    """The record of an answered event; `retries` says why earlier attempts failed and
    `note` why the last failure was not retried."""
    status = resp.status
    # An error with a status (too_large keeps the status it came with) is not ok.
    ok = status is not None and 200 <= status < 300 and resp.error is None
    error: str | None
    kind: str | None
    if resp.error is not None:
        error, kind = secrets.redact(resp.error), resp.error_kind
    elif not ok:
        detail = server_message(resp.body, secrets)
        error = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
        kind = http_kind(status) if status is not None else None
    else:
        error, kind = None, None
    if error is not None and note is not None:
        error = f"{error}; {note}"
    return Result(
        event.seq,
        event.id,
        event.source,
        status,
        ok,
        attempts,
        rounded(resp.latency_ms, 3),
        rounded(resp.sent_at, 6),
        error,
        embed_body(resp.body),
        kind,
        None,
        retries,
    )


# -- reading records back ------------------------------------------------------------------


# Not frozen, by measurement: a frozen dataclass costs 1 µs more per line, and resume and
# merge read millions of lines. Never mutated.
@dataclass(slots=True)
class RecordLine:
    """One output line as readers see it (`parse_record`).

    The key (`seq`, `id`, `source`) is read at once; the figures (`status`, `ok`, ...)
    when asked, so a reader of keys alone (resume) does not pay for them. A field of
    the wrong type reads as absent (records of older versions are read as they are).

    `seq` is None when the line is a JSON object but not an adbatch record (no seq >= 0,
    `source` string and `id` string or null): the report still takes its figures,
    resume and merge refuse it. `id` is None and `source` "" then.
    """

    seq: int | None
    id: str | None
    source: str
    fields: dict[str, Any]  # the whole object, as parsed

    @property
    def status(self) -> int | None:
        status = self.fields.get("status")
        return status if type(status) is int else None

    @property
    def ok(self) -> bool:
        return self.fields.get("ok") is True

    @property
    def error_kind(self) -> str | None:
        kind = self.fields.get("error_kind")
        return kind if type(kind) is str else None

    @property
    def latency_ms(self) -> float | None:
        return _num(self.fields.get("latency_ms"))

    @property
    def transient(self) -> bool:
        """`is_transient` of this record: `--resume` sends its event again."""
        return is_transient(self.status, self.error_kind)

    @property
    def sent_at(self) -> float | None:
        return _num(self.fields.get("sent_at"))

    @property
    def scheduled_at(self) -> float | None:
        return _num(self.fields.get("scheduled_at"))


#: The error kinds of records `--resume` sends again: no answer came (the transport's
#: kinds: `disconnected` and `payload` are the network failing mid-answer, as retryable
#: as a reset), the handling failed (internal) or a proxy refused it (proxy: once the proxy
#: or its credentials are fixed); another try may well succeed.
TRANSIENT_KINDS = frozenset(
    {
        ErrorKind.TLS,  # final for this run, but fixable by its options (see above)
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECT,
        ErrorKind.DISCONNECTED,
        ErrorKind.PAYLOAD,
        ErrorKind.NETWORK,
        ErrorKind.INTERNAL,
        ErrorKind.PROXY,
    }
)
#: The statuses of records `--resume` sends again (with every 5xx).
TRANSIENT_STATUSES = frozenset({401, 408, 429})


def is_transient(status: int | None, error_kind: str | None) -> bool:
    """True when a record so ended may end otherwise if sent again (401, 408, 429, 5xx,
    timeout, connect, network, internal...): `--resume` does not count it as answered.

    Final: 2xx, the other 4xx, and a record whose kind is its own, whatever its status
    (`too_large`: the answer came, only too big; `invalid`, `request`, `protocol`...)."""
    if error_kind in TRANSIENT_KINDS:
        return True
    if error_kind is not None and not error_kind.startswith("http_"):
        return False
    return status is not None and (status in TRANSIENT_STATUSES or 500 <= status <= 599)


_SEQ_HEAD = b'{"seq":'


def record_seq(line: bytes, *, checked: bool = False) -> int | None:
    """The seq of an output line; None when it is not an adbatch record (`parse_record`).

    `checked`: the line was read by `parse_record` already (resume indexed it), so its
    seq is taken from its head as the writers put it (`{"seq":N,`, the first field of
    `Result`) without parsing the whole line again.
    """
    if checked and line.startswith(_SEQ_HEAD):
        comma = line.find(b",", 7, 40)
        digits = line[7:comma]
        if comma > 7 and digits.isdigit():
            return int(digits)
    record = parse_record(line)
    return None if record is None else record.seq


def _num(value: object) -> float | None:
    return float(value) if type(value) is float or type(value) is int else None


_ABSENT = object()


def parse_record(line: bytes) -> RecordLine | None:
    """The record of one output line; None when the line is not a JSON object."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    seq, source, event_id = obj.get("seq"), obj.get("source"), obj.get("id", _ABSENT)
    if (
        type(seq) is int
        and seq >= 0
        and type(source) is str
        and (event_id is None or type(event_id) is str)
    ):
        return RecordLine(seq, event_id, source, obj)
    return RecordLine(None, None, "", obj)
