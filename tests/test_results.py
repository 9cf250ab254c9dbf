"""Output records: body embedding and the server's words on a failure (pure)."""

from __future__ import annotations

import orjson
import pytest

from engine.core.records import embed_body, server_message


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
        pytest.param(b'{\n  "a": 1\n}', b'{"r":{"a":1}}', id="multi-line-json-compacted"),
        pytest.param(b"hello\nworld", b'{"r":"hello\\nworld"}', id="text-as-string"),
        pytest.param(b"\xff\xfe", b'{"r":"\xef\xbf\xbd\xef\xbf\xbd"}', id="bad-utf8-replaced"),
        pytest.param(b"", b'{"r":null}', id="empty-null"),
    ],
)
def test_embedded_body_stays_on_one_line(body: bytes, line: bytes) -> None:
    encoded = orjson.dumps({"r": embed_body(body)})
    assert encoded == line
    assert b"\n" not in encoded
