"""The package's entry points: what `deliver` refuses, what `run` dispatches, one version."""

from __future__ import annotations

import importlib.metadata
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from conftest import MOCK_TOKEN

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
