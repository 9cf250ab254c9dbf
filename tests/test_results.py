"""Output records: body embedding, the server's words on a failure, error kinds, and the
one parser of a record line (pure)."""

from __future__ import annotations

import orjson
import pytest

from engine.core.events import Event, Invalid
from engine.core.records import (
    ErrorKind,
    RecordLine,
    Response,
    Result,
    answered,
    dropped,
    dry_run,
    embed_body,
    http_kind,
    invalid,
    parse_record,
    server_message,
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b'{"status":"Error","messages":["Missing required parameter x"]}',
            "Missing required parameter x",
            id="criteo-messages",
        ),
        pytest.param(b'{"Status Message":"Unauthorized"}', "Unauthorized", id="unauthorized"),
        pytest.param(
            b'{"error":"invalid_client","error_description":"bad  client"}',
            "bad client",
            id="oauth",
        ),
        pytest.param(
            b"<html>\n<b>502</b>  Bad   Gateway</html>",
            "<html> <b>502</b> Bad Gateway</html>",
            id="html-one-line",
        ),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"[1,2]", None, id="json-not-object"),
        pytest.param(b'{"x":1}', None, id="json-silent"),
        pytest.param(b"x" * 500, "x" * 160, id="capped"),
    ],
)
def test_server_message(body: bytes, expected: str | None) -> None:
    assert server_message(body) == expected


@pytest.mark.parametrize(
    ("body", "line"),
    [
        pytest.param(b'{"a": 1}', b'{"r":{"a": 1}}', id="raw-json-kept-as-sent"),
        pytest.param(b'{\n  "a": 1\n}', b'{"r":{   "a": 1 }}', id="multi-line-json-on-one-line"),
        pytest.param(
            b'{"price": 12.50,\r\n"big": 123456789012345678901234567890, "f": 1.0e2}\n',
            b'{"r":{"price": 12.50,  "big": 123456789012345678901234567890, "f": 1.0e2} }',
            id="multi-line-json-numbers-as-written",
        ),
        pytest.param(b"hello\nworld", b'{"r":"hello\\nworld"}', id="text-as-string"),
        pytest.param(b"\xff\xfe", b'{"r":"\xef\xbf\xbd\xef\xbf\xbd"}', id="bad-utf8-replaced"),
        pytest.param(b"", b'{"r":null}', id="empty-null"),
    ],
)
def test_embedded_body_stays_on_one_line(body: bytes, line: bytes) -> None:
    encoded = orjson.dumps({"r": embed_body(body)})
    assert encoded == line
    assert b"\n" not in encoded


# -- error kinds -----------------------------------------------------------------------------

EVENT = Event(7, "in.jsonl:8", "ev-7", None, (), ())


def _response(
    *,
    status: int | None = None,
    body: bytes = b"",
    sent_at: float = 1.0,
    error: str | None = None,
    error_kind: str | None = None,
) -> Response:
    return Response(status, body, sent_at, 2.0, error, error_kind)


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        pytest.param(
            answered(EVENT, _response(error="x", error_kind=ErrorKind.TIMEOUT), 1),
            b'"timeout"',
            id="transport",
        ),
        pytest.param(answered(EVENT, _response(status=404), 1), b'"http_404"', id="http"),
        pytest.param(answered(EVENT, _response(status=200), 1), b"null", id="ok"),
        pytest.param(invalid(Invalid(7, "in.jsonl:8", None, "bad")), b'"invalid"', id="invalid"),
        pytest.param(dropped(EVENT, 1.0, 4), b'"dropped"', id="dropped"),
        pytest.param(dry_run(EVENT, b"{}"), b'"dry_run"', id="dry-run"),
    ],
)
def test_error_kinds_are_written_as_plain_strings(record: Result, kind: bytes) -> None:
    assert b'"error_kind":' + kind + b"," in record.to_json()
    assert type(record.error_kind) in (str, type(None))  # never an Enum: a dict key in stats


def test_error_kind_values_stay_as_they_were() -> None:
    values = {k: v for k, v in vars(ErrorKind).items() if k.isupper()}
    assert values == {
        "TIMEOUT": "timeout",
        "CONNECT": "connect",
        "DISCONNECTED": "disconnected",
        "PAYLOAD": "payload",
        "NETWORK": "network",
        "PROTOCOL": "protocol",
        "REQUEST": "request",
        "TOO_LARGE": "too_large",
        "INTERNAL": "internal",
        "INVALID": "invalid",
        "DROPPED": "dropped",
        "DRY_RUN": "dry_run",
        "TLS": "tls",
        "PROXY": "proxy",
    }
    assert http_kind(503) == "http_503"


# -- the parser ------------------------------------------------------------------------------


def _line(**fields: object) -> bytes:
    record = {"seq": 3, "id": "ev-3", "source": "in.jsonl:4", "status": 200, "ok": True}
    return orjson.dumps({**record, **fields}) + b"\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            answered(EVENT, _response(status=503, sent_at=5.5), 3).to_json(),
            (7, "ev-7", "in.jsonl:8", 503, False, "http_503", 2.0, 5.5, None),
            id="written-by-answered",
        ),
        pytest.param(
            dropped(EVENT, 9.25, 4).to_json(),
            (7, "ev-7", "in.jsonl:8", None, False, "dropped", None, None, 9.25),
            id="written-by-dropped",
        ),
        pytest.param(
            _line(id=None, latency_ms=3, sent_at=1),
            (3, None, "in.jsonl:4", 200, True, None, 3.0, 1.0, None),
            id="null-id-int-numbers",
        ),
        pytest.param(
            _line(status=True, ok=1, error_kind=5, latency_ms="3", sent_at=False),
            (3, "ev-3", "in.jsonl:4", None, False, None, None, None, None),
            id="wrong-types-read-as-absent",
        ),
        pytest.param(
            b'{"ok":true,"status":200}',
            (None, None, "", 200, True, None, None, None, None),
            id="object-without-key",
        ),
        pytest.param(_line(seq=-1), (None, None, "", 200, True, None, None, None, None), id="neg"),
        pytest.param(
            _line(seq=True),
            (None, None, "", 200, True, None, None, None, None),
            id="bool",
        ),
        pytest.param(
            b'{"seq":3,"source":"in.jsonl:4","status":200,"ok":true}',
            (None, None, "", 200, True, None, None, None, None),
            id="no-id-field",
        ),
        pytest.param(_line(id=7), (None, None, "", 200, True, None, None, None, None), id="int-id"),
        pytest.param(b'{"seq":3,"id":"ev-3","sou', None, id="torn"),
        pytest.param(b"[1]", None, id="not-an-object"),
        pytest.param(b"", None, id="empty"),
    ],
)
def test_parse_record(line: bytes, expected: tuple[object, ...] | None) -> None:
    record = parse_record(line)
    assert (None if record is None else _view(record)) == expected


def _view(r: RecordLine) -> tuple[object, ...]:
    """The record's fields, in `Result`'s order."""
    return (
        r.seq,
        r.id,
        r.source,
        r.status,
        r.ok,
        r.error_kind,
        r.latency_ms,
        r.sent_at,
        r.scheduled_at,
    )


ODD_IDS = ["", 'a"b', "back\\slash", "tab\tnew\nline", "\u00e9\U0001f600", "\\", "\x00"]


@pytest.mark.parametrize("event_id", [*ODD_IDS, None])
def test_the_parser_reads_every_constructor_s_record(event_id: str | None) -> None:
    event = Event(123, 'in "x".jsonl:124', event_id, None, (), ())
    lines = [
        answered(event, _response(status=200, body=b'{"seq":1}'), 1).to_json(),
        invalid(Invalid(123, "in.jsonl:124", event_id, "bad")).to_json(),
        dropped(event, 1.0, 2).to_json(),
        dry_run(event, b'{"url":"x"}').to_json(),
    ]
    for line in lines:
        record = parse_record(line)
        assert record is not None
        assert (record.seq, record.id) == (123, event_id)


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b'{"seq":5}', id="seq-only"),
        pytest.param(b'{"seq":5,"id":"x"}', id="no-source"),
        pytest.param(b'{"seq":05,"id":null,"source":"s"}', id="not-json"),
        pytest.param(b'{"id":null,"seq":5}', id="other-order-no-source"),
        pytest.param(b"garbage", id="garbage"),
    ],
)
def test_the_parser_refuses_what_is_not_a_record(line: bytes) -> None:
    record = parse_record(line)
    assert record is None or record.seq is None


def test_the_parser_takes_any_field_order() -> None:
    record = parse_record(b'{"source":"s","id":null,"seq":9,"ok":true}')
    assert record is not None
    assert record.seq == 9
