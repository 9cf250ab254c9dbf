"""No expired token on the wire, and --resume completes the job (issue 12, item 7).

The CLI in a subprocess against the real mock in this process: the mock checks each
token's expiry itself (on its own clock, from when it issued the token) and counts the
calls that came with an expired one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import anyio
import orjson
import pytest
from conftest import events, exactly_once, read_records

from engine.mock import MockConfig, MockHandle, running_mock

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
FIXED_BODY = b'{"status":"OK","page-uid":"pu","placements":[]}'

#: Both HTTP clients, in one process and with --workers 2 (the parent holds the token).
SETUPS = pytest.mark.parametrize(
    "options",
    [
        pytest.param(["--http-client", "http1"], id="http1"),
        pytest.param(["--http-client", "session"], id="session"),
        pytest.param(["--http-client", "http1", "--workers", "2"], id="http1-workers"),
        pytest.param(["--http-client", "session", "--workers", "2"], id="session-workers"),
    ],
)


def start(mock: MockHandle, inputs: Path, out: Path, *args: str) -> subprocess.Popen[bytes]:
    """`adbatch run` on client credentials against the mock's token endpoint."""
    env = {
        **os.environ,
        "ADBATCH_CLIENT_ID": "mock-client",
        "ADBATCH_CLIENT_SECRET": "mock-secret",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("ADBATCH_TOKEN", None)
    err = out.with_name(f"stderr-{time.monotonic_ns()}.txt")
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine",
                "run",
                "--endpoint",
                mock.delivery_url,
                "--token-url",
                mock.token_url,
                "-o",
                str(out),
                "--no-progress",
                *args,
                str(inputs),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    _STDERR[proc.pid] = err
    return proc


_STDERR: dict[int, Path] = {}


async def ended(proc: subprocess.Popen[bytes], limit: float = 30) -> tuple[int, str]:
    """Poll without blocking the event loop (the mock serves on it)."""
    with anyio.fail_after(limit):
        while proc.poll() is None:  # noqa: ASYNC110 - a child's exit is no anyio event
            await anyio.sleep(0.01)
    stderr = _STDERR.pop(proc.pid).read_text()
    assert "Traceback" not in stderr, stderr
    return proc.returncode, stderr


async def kill_token_endpoint_after_first_token(
    mock: MockHandle, proc: subprocess.Popen[bytes]
) -> None:
    """The token endpoint answers 503 from the moment the run has its first token."""
    with anyio.fail_after(20):
        while mock.state.tokens_issued == 0:
            assert proc.poll() is None, "the run ended before it had a token"
            await anyio.sleep(0.002)
    mock.state.config = replace(mock.state.config, token_down=True)


@pytest.mark.slow
@SETUPS
async def test_dead_token_endpoint_stops_the_run_unsent_events_unwritten_then_resume(
    tmp_path: Path, write_jsonl: Callable[..., Path], options: list[str]
) -> None:
    n = 2000  # at 400/s, far more than one 1.5 s token can serve
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    mock_config = MockConfig(token_lifetime=1.5, fixed_body=FIXED_BODY)
    async with running_mock(mock_config) as mock:
        args = ["-c", "16", "--token-wait", "0.3", *options]
        proc = start(mock, inputs, out, "--rate", "400", *args)
        await kill_token_endpoint_after_first_token(mock, proc)
        rc, stderr = await ended(proc)
        state = mock.state
        # No call went out with a token past its expiry, nor was refused for one.
        assert (state.expired_token_uses, state.unauthorized) == (0, 0)
        assert rc == 3, stderr
        stopped = [line for line in stderr.splitlines() if line.startswith("adbatch: stopped:")]
        assert len(stopped) == 1, stderr
        assert mock.token_url in stopped[0]
        assert "token" in stopped[0]
        assert "mock-secret" not in stderr
        sent = state.delivery_requests
        records = read_records(out)
        # A record for each call made, none for the events that found no token.
        assert 0 < len(records) == sent < n
        assert {r["status"] for r in records} == {200}

        mock.state.config = replace(mock.state.config, token_down=False, token_lifetime=900.0)
        resumed = start(mock, inputs, out, "--resume", *args)
        rc, stderr = await ended(resumed)
        assert rc == 0, stderr
        assert f"{len(records)} already answered" in stderr
        # Every event was sent exactly once over the two runs.
        assert mock.state.delivery_requests == n
        assert mock.state.expired_token_uses == 0
    final = read_records(out)
    exactly_once(final, n)
    assert all(r["ok"] for r in final)


@pytest.mark.slow
@pytest.mark.parametrize(
    "options", [pytest.param([], id="1-process"), pytest.param(["--workers", "2"], id="workers")]
)
async def test_a_resume_stopped_by_a_dead_token_endpoint_still_leaves_one_line_per_event(
    tmp_path: Path, write_jsonl: Callable[..., Path], options: list[str]
) -> None:
    """Exit 3 in the middle of a --resume: the events it sent again replace their old
    records, the others keep theirs; one line per event either way."""
    n = 2000
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    old = {
        "status": 503,
        "ok": False,
        "attempts": 4,
        "latency_ms": 1.0,
        "sent_at": 1.0,
        "error": "HTTP 503; gave up after 4 attempts",
        "response": None,
        "error_kind": "http_503",
        "scheduled_at": None,
        "retries": [],
    }
    out.write_bytes(
        b"".join(
            orjson.dumps({"seq": i, "id": f"ev-{i}", "source": f"{inputs}:{i + 1}", **old}) + b"\n"
            for i in range(n)
        )
    )
    mock_config = MockConfig(token_lifetime=1.5, fixed_body=FIXED_BODY)
    async with running_mock(mock_config) as mock:
        args = ["--resume", "-c", "16", "--token-wait", "0.3", *options]
        proc = start(mock, inputs, out, "--rate", "400", *args)
        await kill_token_endpoint_after_first_token(mock, proc)
        rc, stderr = await ended(proc)
        assert rc == 3, stderr
        assert (mock.state.expired_token_uses, mock.state.unauthorized) == (0, 0)
        middle = read_records(out)
        exactly_once(middle, n)
        sent = mock.state.delivery_requests
        assert 0 < sum(r["status"] == 200 for r in middle) == sent < n
        assert {r["status"] for r in middle} == {200, 503}

        mock.state.config = replace(mock.state.config, token_down=False, token_lifetime=900.0)
        rc, stderr = await ended(start(mock, inputs, out, *args))
        assert rc == 0, stderr
        assert mock.state.delivery_requests == n
    final = read_records(out)
    exactly_once(final, n)
    assert all(r["ok"] for r in final)
