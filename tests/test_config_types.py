"""engine.Config from Python: a value of the wrong type is one ConfigError line naming the
field (it was an AttributeError, a TypeError, or accepted and a crash later), and the
repr shows no password, query value or header value (engine/core/fieldtypes.py)."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import pytest
from conftest import MOCK_TOKEN

import engine
from engine.mock import MockHandle

SECRET = "ZZsecret"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"partner_id": 12345},
                     "Config.partner_id must be str or None, got 12345 (int)", id="partner-id"),
        pytest.param({"concurrency": "8"}, "Config.concurrency must be int, got '8' (str)",
                     id="concurrency-str"),
        pytest.param({"concurrency": 2.5}, "Config.concurrency must be int, got 2.5 (float)",
                     id="concurrency-float"),
        pytest.param({"timeout": None}, "Config.timeout must be float, got None (NoneType)",
                     id="timeout-none"),
        pytest.param({"rate": "100"}, "Config.rate must be float or None, got '100' (str)",
                     id="rate-str"),
        pytest.param({"retries": "3"}, "Config.retries must be int, got '3' (str)",
                     id="retries-str"),
        pytest.param({"max_response_bytes": None},
                     "Config.max_response_bytes must be int, got None (NoneType)", id="max-none"),
        pytest.param({"token_wait": None},
                     "Config.token_wait must be float, got None (NoneType)", id="wait-none"),
        pytest.param({"inputs": "events.jsonl"},
                     "Config.inputs must be a tuple of str, got 'events.jsonl' (str)",
                     id="inputs-str"),
        pytest.param({"ordered": 1}, "Config.ordered must be bool, got 1 (int)", id="bool-int"),
        pytest.param({"workers": True}, "Config.workers must be int, got True (bool)",
                     id="int-bool"),
        pytest.param({"shard": [0, "2"]},
                     "Config.shard must be a tuple (int, int) or None, got [0, '2'] (tuple)",
                     id="shard-list"),
        pytest.param({"http_client": 2},
                     "Config.http_client must be one of 'http1', 'session', 'http2', got 2 (int)",
                     id="literal-int"),
    ],
)  # fmt: skip
def test_a_wrong_type_is_one_config_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(engine.ConfigError) as caught:
        engine.Config(mock=True, **({"inputs": ("x.jsonl",)} | options)).validated()
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"token": 12345678901234567890}, id="token"),
        pytest.param({"client_secret": [SECRET]}, id="client-secret"),
        pytest.param({"headers": (f"X-Api-Key: {SECRET}", 1)}, id="header"),
        pytest.param({"proxy": [f"http://u:{SECRET}@127.0.0.1:1"]}, id="proxy"),
        pytest.param({"endpoint": [f"http://u:{SECRET}@127.0.0.1:1/d?k={SECRET}"]}, id="url"),
        pytest.param({"headers": (f"X-Api-Key: {SECRET}".encode(),)}, id="header-bytes"),
        pytest.param({"endpoint": f"https://u:{SECRET}@h/d?k={SECRET}".encode()}, id="url-bytes"),
        pytest.param({"inputs": (f"https://u:{SECRET}@h/x.jsonl".encode(),)}, id="input-bytes"),
    ],
)
def test_a_wrong_type_never_shows_a_secret(options: dict[str, Any]) -> None:
    with pytest.raises(engine.ConfigError) as caught:
        engine.Config(**({"inputs": ("x.jsonl",)} | options)).validated()
    assert SECRET not in str(caught.value)
    assert "12345678901234567890" not in str(caught.value)
    assert "[redacted]" in str(caught.value)


def test_right_types_pass() -> None:
    """An int where a float is annotated is a number all the same; a Literal's other
    values keep their own message."""
    engine.Config(mock=True, inputs=("x.jsonl",), timeout=2, rate=100, shard=(0, 2)).validated()
    with pytest.raises(engine.ConfigError, match="--http-client must be http1, session or"):
        engine.Config(mock=True, http_client="http3").validated()  # type: ignore[arg-type]


def test_the_repr_shows_no_password_query_value_or_header_value() -> None:
    config = engine.Config(
        endpoint=f"https://u:{SECRET}1@127.0.0.1:1/d?api_key={SECRET}2",
        token=f"{SECRET}3" * 3,
        token_url=f"https://cid:{SECRET}4@127.0.0.1:2/oauth2/token",
        headers=(f"X-Api-Key: {SECRET}5",),
        client_id="cid",
        client_secret=f"{SECRET}6",
        inputs=(f"s3://AKIA:{SECRET}7@bucket/x.jsonl", "local@file.jsonl"),
        proxy=f"http://u:{SECRET}8@127.0.0.1:3",
    )
    shown = repr(config)
    assert SECRET not in shown
    assert "endpoint='https://u:[redacted]@127.0.0.1:1/d?api_key=[redacted]'" in shown
    assert "inputs=('s3://AKIA:[redacted]@bucket/x.jsonl', 'local@file.jsonl')" in shown
    assert "headers=('X-Api-Key: [redacted]',)" in shown
    assert "client_id='cid'" in shown


@pytest.mark.anyio
async def test_deliver_refuses_a_float_concurrency(mock: MockHandle) -> None:
    """concurrency=2.5 passed validated() and crashed in the memory stream's buffer size."""
    config = engine.Config(endpoint=mock.delivery_url, token=MOCK_TOKEN, concurrency=2.5)  # type: ignore[arg-type]

    async def drain() -> None:
        async with aclosing(engine.deliver([{"id": "e"}], config)) as results:
            async for _ in results:
                pass

    with pytest.raises(engine.ConfigError, match=r"Config.concurrency must be int, got 2.5"):
        await drain()
    assert mock.state.delivery_requests == 0


def test_a_list_for_a_tuple_field_is_taken_as_that_tuple() -> None:
    """A library caller's lists (`inputs=["a.jsonl"]`, as before field types were
    checked) are taken; a lone str is still not a tuple of str."""
    config = engine.Config(
        inputs=["a.jsonl"], headers=["X-A: b"], storage_options=[["k", "v"]], token="t"
    ).validated()
    assert (config.inputs, config.headers, config.storage_options) == (
        ("a.jsonl",), ("X-A: b",), (("k", "v"),)
    )  # fmt: skip
    with pytest.raises(engine.ConfigError, match=r"Config\.inputs must be a tuple of str"):
        engine.Config(inputs="a.jsonl", token="t").validated()
