"""The package's entry points: what `deliver` refuses, what `run` dispatches, one version."""

from __future__ import annotations

import importlib.metadata
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import MOCK_TOKEN
from web_app import serving

import engine
from engine.mock import MockHandle

pytestmark = pytest.mark.anyio

EVENT = {
    "id": "e1",
    "criteo-partner-id": 12345,
    "retailer-visitor-id": "v-1",
    "event-type": "viewHome",
    "page-id": "viewHome_API_desktop",
}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"workers": 2}, "workers", id="workers"),
        pytest.param({"output": "out.jsonl"}, "output", id="output"),
        pytest.param({"output": "out.jsonl", "resume": True}, "output, resume", id="resume"),
        pytest.param({"summary": "s.json"}, "summary", id="summary"),
        pytest.param({"series": "s.series"}, "series", id="series"),
        pytest.param({"shard": (0, 2)}, "shard", id="shard"),
    ],
)
async def test_deliver_refuses_what_it_cannot_honour(
    mock: MockHandle, options: dict[str, Any], named: str
) -> None:
    config = engine.Config(endpoint=mock.delivery_url, token=MOCK_TOKEN, **options)

    async def drain() -> None:
        async with aclosing(engine.deliver([EVENT], config)) as results:
            async for _ in results:
                pass

    with pytest.raises(engine.ConfigError, match=f"cannot honour {named}"):
        await drain()
    assert mock.state.delivery_requests == 0


async def test_deliver_leaves_a_summary_file_it_cannot_write_untouched(
    mock: MockHandle, tmp_path: Path
) -> None:
    """deliver() writes no summary: a `summary` path is refused before it is created
    (it was truncated to 0 bytes and never written)."""
    summary = tmp_path / "s.json"
    summary.write_bytes(b'{"kept": true}')
    config = engine.Config(endpoint=mock.delivery_url, token=MOCK_TOKEN, summary=str(summary))
    results = engine.deliver([EVENT], config)
    with pytest.raises(engine.ConfigError, match="cannot honour summary"):
        await anext(results)
    assert summary.read_bytes() == b'{"kept": true}'


async def test_deliver_yields_one_result_per_event(mock: MockHandle) -> None:
    config = engine.Config(endpoint=mock.delivery_url, token=MOCK_TOKEN)
    async with aclosing(engine.deliver([EVENT, {"id": "bad"}], config)) as results:
        got = sorted([(r.seq, r.ok, r.error_kind) async for r in results])
    assert got == [(0, True, None), (1, False, "invalid")]


def test_the_version_lives_in_one_place() -> None:
    assert importlib.metadata.version("adbatch") == engine.__version__
    from engine.version import DEFAULT_USER_AGENT

    assert DEFAULT_USER_AGENT == f"adbatch/{engine.__version__}"  # the full version


async def test_calls_carry_the_full_version_as_user_agent(mock: MockHandle) -> None:
    config = engine.Config(endpoint=mock.delivery_url, token=MOCK_TOKEN)
    async with aclosing(engine.deliver([EVENT], config)) as results:
        assert [r.ok async for r in results] == [True]
    sent = {r.headers.get("User-Agent") for r in mock.state.requests}
    assert sent == {f"adbatch/{engine.__version__}"}  # 0.1.0, not 0.1


async def _drained(events: Any, config: engine.Config, got: list[engine.Result]) -> None:
    async with aclosing(engine.deliver(events, config)) as results:
        async for result in results:
            got.append(result)  # noqa: PERF401 (one by one: those before a raise count)


async def test_deliver_raises_auth_error_when_the_token_is_refused(mock: MockHandle) -> None:
    """Every call refused (401): the run stops, as `run` does (exit 3); deliver() yields
    the answers it had, then raises AuthError (it ended silently, 1000 events giving ~40
    results)."""
    config = engine.Config(
        endpoint=mock.delivery_url, token="wrong-token-0123456", retries=0, concurrency=4
    )
    got: list[engine.Result] = []
    with pytest.raises(engine.AuthError, match="refused the token") as raised:
        await _drained([EVENT] * 1000, config, got)
    assert raised.value.exit_code == 3
    assert 0 < len(got) < 1000
    assert len(got) == mock.state.delivery_requests  # every call's answer was yielded
    assert {r.error_kind for r in got} == {"http_401"}


async def test_deliver_raises_fatal_error_when_the_endpoint_is_unreachable() -> None:
    """A port bound but not listening refuses every connection: FatalError, not AuthError."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        endpoint = f"http://127.0.0.1:{port}/delivery/retailmedia"
        config = engine.Config(endpoint=endpoint, token=MOCK_TOKEN, retries=0, concurrency=4)
        got: list[engine.Result] = []
        with pytest.raises(engine.FatalError, match="cannot reach") as raised:
            await _drained([EVENT] * 500, config, got)
    assert not isinstance(raised.value, engine.AuthError)
    assert 0 < len(got) < 500
    assert {r.error_kind for r in got} == {"connect"}


@pytest.mark.parametrize(("events", "at"), [(1, 1), (3, 3), (50, 1)])
async def test_deliver_closed_early_ends_quietly(mock: MockHandle, events: int, at: int) -> None:
    """The documented way to stop early: aclosing and a break (it raised
    BaseExceptionGroup(GeneratorExit))."""
    config = engine.Config(endpoint=mock.delivery_url, token=MOCK_TOKEN, concurrency=4)
    seen = 0
    async with aclosing(engine.deliver([EVENT] * events, config)) as results:
        async for result in results:
            seen += 1
            assert result.ok
            if seen == at:
                break
    assert seen == at


async def test_deliver_lets_the_callers_exception_through(mock: MockHandle) -> None:
    config = engine.Config(endpoint=mock.delivery_url, token=MOCK_TOKEN, concurrency=4)

    async def consume() -> None:
        async with aclosing(engine.deliver([EVENT] * 50, config)) as results:
            async for _ in results:
                raise ValueError("the caller's own")

    with pytest.raises(ValueError, match="caller's own") as raised:
        await consume()
    assert type(raised.value) is ValueError


def _raising_events() -> Iterator[dict[str, object]]:
    for i in range(10):
        yield {**EVENT, "id": f"e{i}"}
    raise RuntimeError("the source failed")


async def _raising_async_events() -> AsyncIterator[dict[str, object]]:
    for event in _raising_events():
        yield event


@pytest.mark.parametrize("source", [_raising_events, _raising_async_events])
async def test_deliver_raises_the_events_iterators_exception_as_itself(
    mock: MockHandle, source: Callable[[], Any]
) -> None:
    """The events before it are answered and yielded, then the caller's RuntimeError (it
    came out in three ExceptionGroups, with no result)."""
    config = engine.Config(endpoint=mock.delivery_url, token=MOCK_TOKEN)
    got: list[engine.Result] = []
    with pytest.raises(RuntimeError, match="the source failed") as raised:
        await _drained(source(), config, got)
    assert type(raised.value) is RuntimeError
    assert sorted(r.id or "" for r in got if r.ok) == [f"e{i}" for i in range(10)]


async def test_deliver_makes_an_event_with_a_key_not_a_str_invalid(mock: MockHandle) -> None:
    """{7: "x"}, a tuple or a bytes key: that event's `invalid` result (an int key killed
    the run, AttributeError in ExceptionGroups; a bytes key was sent as a parameter)."""
    config = engine.Config(endpoint=mock.delivery_url, token=MOCK_TOKEN, ordered=True)
    events: list[dict[Any, object]] = [
        EVENT,
        {**EVENT, "id": "int", 7: "x"},
        {**EVENT, "id": "tuple", ("a", 1): "x"},
        {**EVENT, "id": "bytes", b"k": "x"},
        EVENT,
    ]
    got: list[engine.Result] = []
    await _drained(events, config, got)
    assert [(r.id, r.error_kind) for r in got] == [
        ("e1", None), ("int", "invalid"), ("tuple", "invalid"), ("bytes", "invalid"), ("e1", None)
    ]  # fmt: skip
    assert [r.error for r in got[1:4]] == [
        "event key 7 is not a string (int)",
        "event key ('a', 1) is not a string (tuple)",
        "event key b'k' is not a string (bytes)",
    ]
    assert mock.state.delivery_requests == 2


SECRET_TOKEN = "STATICtokenQWERTY1234567"
ISSUED_TOKEN = "ISSUEDtokenABCDEFGH123456"


def _echoing_app() -> web.Application:
    """A delivery host that echoes the bearer token in its answer, as JSON and as text;
    /oauth2/token issues ISSUED_TOKEN."""

    async def deliver(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if request.query.get("keywords") == "text":
            return web.Response(text=f"you sent {auth}")
        return web.json_response({"status": "OK", "echo": auth})

    async def token(request: web.Request) -> web.Response:
        body = {"access_token": ISSUED_TOKEN, "token_type": "bearer", "expires_in": 3600}
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/delivery/retailmedia", deliver)
    app.router.add_post("/oauth2/token", token)
    return app


@pytest.mark.parametrize("oauth", [False, True], ids=["static", "oauth"])
async def test_deliver_yields_results_redacted(oauth: bool) -> None:
    """docs/reliability.md: one redactor at the one boundary every writer uses. The token
    a server echoed was in Result.response and to_json() in clear."""
    search = {**EVENT, "event-type": "viewSearchResult", "page-id": "viewSearchResult_API"}
    events = [EVENT, {**search, "keywords": "text"}]
    async with serving(_echoing_app()) as base:
        credentials: dict[str, Any] = (
            {"token_url": f"{base}/oauth2/token", "client_id": "cid",
             "client_secret": "client-secret-0123456789"}
            if oauth else {"token": SECRET_TOKEN}
        )  # fmt: skip
        config = engine.Config(endpoint=f"{base}/delivery/retailmedia", ordered=True,
                               **credentials)  # fmt: skip
        got: list[engine.Result] = []
        await _drained(events, config, got)
    assert [r.ok for r in got] == [True, True]
    token = ISSUED_TOKEN if oauth else SECRET_TOKEN
    for result in got:
        assert token.encode() not in result.to_json()
        assert b"Bearer [redacted]" in result.to_json()
    assert got[1].response == "you sent Bearer [redacted]"
    assert orjson.loads(got[0].to_json())["response"] == {
        "status": "OK", "echo": "Bearer [redacted]"
    }  # fmt: skip


_CLEAN = engine.Result(
    seq=0, id="e1", source="<events>:1", status=200, ok=True, attempts=1, latency_ms=1.0,
    sent_at=1.0, error=None, response=orjson.Fragment(b'{"status":"OK"}'),
)  # fmt: skip
_SPELLED = "STATICtokenQWERTY1234567".replace("Q", "\\u0051")  # a JSON body's spelling


@pytest.mark.parametrize(
    ("field", "value", "redacted"),
    [
        pytest.param("id", f"id-{SECRET_TOKEN}", "id-[redacted]", id="id"),
        pytest.param("source", f"{SECRET_TOKEN}.jsonl:3", "[redacted].jsonl:3", id="source"),
        pytest.param("error", f"bad token {SECRET_TOKEN}", "bad token [redacted]", id="error"),
        pytest.param("response", f"you sent {SECRET_TOKEN}", "you sent [redacted]", id="text"),
        pytest.param(
            "response",
            orjson.Fragment(f'{{"echo":"Bearer {_SPELLED}","n":1}}'.encode()),
            b'{"echo":"Bearer [redacted]","n":1}',
            id="json-body-escaped",
        ),
        pytest.param(
            "retries",
            ("timeout", f"http_401 {SECRET_TOKEN}"),
            ("timeout", "http_401 [redacted]"),
            id="retries",
        ),
    ],
)
def test_deliver_redacts_each_field_of_a_result(
    field: str, value: object, redacted: object
) -> None:
    """engine/api.py `_redacted`: each field through the run's Secrets; the others, and a
    result with no secret, untouched (the same object)."""
    from dataclasses import replace

    from engine.api import _redacted
    from engine.core.secrets import Secrets

    secrets = Secrets([SECRET_TOKEN])
    assert _redacted(_CLEAN, secrets) is _CLEAN
    clean = _CLEAN if field == "retries" else replace(_CLEAN, **{field: f"no {SECRET_TOKEN[:8]}"})
    assert _redacted(clean, secrets) is clean
    result = replace(_CLEAN, **{field: value})
    got = _redacted(result, secrets)
    if isinstance(redacted, bytes):
        assert got.body == redacted
    else:
        assert getattr(got, field) == redacted
    assert replace(got, **{field: None}) == replace(result, **{field: None})
    assert SECRET_TOKEN.encode() not in got.to_json()
    assert secrets.redact_bytes(result.to_json()) == got.to_json()  # as `run` writes it
