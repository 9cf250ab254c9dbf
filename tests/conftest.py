"""Shared fixtures: anyio on asyncio, a running mock, small event files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from engine.mock import MockConfig, MockHandle, running_mock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def mock() -> AsyncIterator[MockHandle]:
    """The embedded mock on a free loopback port, recording requests."""
    async with running_mock(MockConfig(record_requests=True)) as handle:
        yield handle


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write a list of dicts (or raw byte lines) as a JSONL file; returns its path."""

    def write(rows: list[object], name: str = "events.jsonl") -> Path:
        path = tmp_path / name
        lines = [r if isinstance(r, bytes) else orjson.dumps(r) for r in rows]
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        return path

    return write
