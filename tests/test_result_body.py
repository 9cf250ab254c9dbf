"""A Result's response read back from Python (engine/core/responses.py): `json()` the body
parsed, `body` its bytes as the record writes them; `response` itself stays the raw
`orjson.Fragment` the record embeds (it printed as `<orjson.Fragment object at 0x...>`)."""

from __future__ import annotations

from contextlib import aclosing

import orjson
import pytest
from conftest import MOCK_TOKEN

import engine
from engine.core.records import Result, embed_body, jsonl
from engine.mock import MockHandle

EVENT = {
    "id": "e1",
    "criteo-partner-id": 12345,
    "retailer-visitor-id": "v-1",
    "event-type": "viewHome",
    "page-id": "viewHome_API_desktop",
}


@pytest.mark.anyio
async def test_deliver_results_read_their_body(mock: MockHandle) -> None:
    config = engine.Config(endpoint=mock.delivery_url, token=MOCK_TOKEN)
    async with aclosing(engine.deliver([EVENT, {"id": "bad"}], config)) as results:
        got = {r.id: r async for r in results}
    answer, invalid = got["e1"], got["bad"]
    assert isinstance(answer.response, orjson.Fragment)
    parsed = answer.json()
    assert parsed["status"] == "OK"
    assert isinstance(parsed["placements"], list)
    assert answer.body is not None
    assert orjson.loads(answer.body) == parsed
    assert answer.body in jsonl([answer])  # the record's own bytes
    assert (invalid.body, invalid.json()) == (None, None)


def _result(body: bytes) -> Result:
    return Result(0, "a", "s", 200, True, 1, 1.0, 1.0, None, embed_body(body))


@pytest.mark.parametrize(
    ("sent", "body", "value"),
    [
        pytest.param(b'{"p": 12.50, "k": [1]}', b'{"p": 12.50, "k": [1]}', {"p": 12.5, "k": [1]},
                     id="json-as-sent"),
        pytest.param(b'{"a":\r\n1}', b'{"a":  1}', {"a": 1}, id="json-breaks-as-spaces"),
        pytest.param(b"upstream down", b"upstream down", "upstream down", id="text"),
        pytest.param("caf\u00e9".encode(), "caf\u00e9".encode(), "caf\u00e9", id="utf8-text"),
        pytest.param(b"", None, None, id="empty"),
    ],
)  # fmt: skip
def test_body_and_json(sent: bytes, body: bytes | None, value: object) -> None:
    result = _result(sent)
    assert result.body == body
    assert result.json() == value
