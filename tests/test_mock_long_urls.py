"""The embedded mock and long URLs (engine/mock/server.py): a request line up to 64 KiB is
answered as the delivery host would (aiohttp's 8190 bytes made it 400); a longer one is
aiohttp's 400 alone, never an "Error handling request" traceback on stderr."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import engine
from engine.mock import running_mock

ROOT = Path(__file__).parent.parent
#: The mock's limit (engine/mock/server.MAX_LINE_BYTES), as the docs say it.
MAX_LINE_BYTES = 64 << 10


def _event(event_id: str, length: int) -> dict[str, object]:
    return {
        "id": event_id,
        "criteo-partner-id": 12345,
        "retailer-visitor-id": "v-1",
        "event-type": "viewSearchResult",
        "page-id": "viewSearchResult_API_desktop",
        "keywords": "k" * length,
    }


@pytest.mark.anyio
async def test_deliver_long_urls_through_the_mock(caplog: pytest.LogCaptureFixture) -> None:
    events = [_event("9k", 9000), _event("60k", 60_000), _event("past", MAX_LINE_BYTES)]
    async with running_mock() as mock:
        config = engine.Config(endpoint=mock.delivery_url, token="mock-token", ordered=True)
        with caplog.at_level(logging.DEBUG):
            got = [(r.id, r.status) async for r in engine.deliver(events, config)]
        assert mock.state.delivery_requests == 2  # the last never reached the handler
    assert got == [("9k", 200), ("60k", 200), ("past", 400)]
    assert not [r for r in caplog.records if "Error handling request" in r.getMessage()]


@pytest.mark.slow
def test_run_mock_prints_no_traceback(tmp_path: Path) -> None:
    events = tmp_path / "long.jsonl"
    lines = [_event("9k", 9000), _event("past", MAX_LINE_BYTES)]
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--mock", "--ordered", str(events), "-o", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # the summary line alone
    assert "Traceback" not in done.stderr
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [(r["id"], r["status"], r["error_kind"]) for r in records] == [
        ("9k", 200, None),
        ("past", 400, "http_400"),
    ]
