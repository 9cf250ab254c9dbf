"""One output record per input record (pure).

`response` is the body as the server sent it: embedded as raw JSON (orjson.Fragment, no
parse-and-re-encode) when it is JSON on one line, re-encoded compactly only when it
spans lines (a JSONL record must stay on one), and a string when it is not JSON.
Every error text passes through `redact` so a token can never reach an output file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from engine.core.events import Event, Invalid


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
class Result:
    """The output record of one input record."""

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
        return orjson.dumps(self)


def jsonl(batch: list[Result]) -> bytes:
    """The records as JSONL: one line each, newline-terminated."""
    return b"".join([r.to_json() + b"\n" for r in batch])


def embed_body(body: bytes) -> object:
    """The body for the record: raw JSON when it parses, else text (None when empty)."""
    if not body:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    if b"\n" in body or b"\r" in body:
        return parsed
    return orjson.Fragment(body)


#: Shorter "secrets" are not hunted in text: replacing them would mangle ordinary words.
MIN_SECRET_LENGTH = 8


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, "[redacted]")
    return text


def invalid_result(item: Invalid) -> Result:
    return Result(
        item.seq, item.id, item.source, None, False, 0, None, None, item.error, None, "invalid"
    )


def server_message(body: bytes) -> str | None:
    """The server's own words for a failure, short and on one line (None when silent)."""
    if not body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:200].decode("utf-8", "replace")
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
        text = found
    text = " ".join(text.split())
    return text[:160] or None


def response_result(
    event: Event,
    resp: Response,
    attempts: int,
    secrets: Iterable[str] = (),
    *,
    retries: tuple[str, ...] = (),
    note: str | None = None,
) -> Result:
    """The record of an answered event; `retries` says why earlier attempts failed and
    `note` why the last failure was not retried."""
    status = resp.status
    ok = status is not None and 200 <= status < 300
    error: str | None
    kind: str | None
    if resp.error is not None:
        error, kind = redact(resp.error, secrets), resp.error_kind
    elif not ok:
        detail = server_message(resp.body)
        error = f"HTTP {status}: {redact(detail, secrets)}" if detail else f"HTTP {status}"
        kind = f"http_{status}"
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
        round(resp.latency_ms, 3),
        round(resp.sent_at, 6),
        error,
        embed_body(resp.body),
        kind,
        retries=retries,
    )
