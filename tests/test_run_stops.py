"""A run that stops itself (issue 12, items 4 and 8), against real servers on 127.0.0.1.

- An unexpected exception in one event's handling is that event's record (error_kind
  "internal"); 20 in a row stop the run with exit 70. Triggered through the engine's
  named plug points (a TokenProvider, a Transport); the CLI says the stop of such a run's
  Summary and exits 70 (no genuine input raises in the engine: nothing triggers it end to
  end).
- A server that refuses every call (429) for --give-up-after seconds stops the run with
  exit 3; --resume against a healthy server finishes the job.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import orjson
import pytest
from conftest import MOCK_TOKEN, config_for, exactly_once, read_records

from engine import Config, run
from engine.cli.load import _finish as finish_load
from engine.cli.run import finish_run
from engine.core.query import Request
from engine.core.records import Response
from engine.core.stats import Summary
from engine.errors import AuthError
from engine.load.plan import LoadOutcome
from engine.mock import MockConfig, MockHandle, running_mock
from engine.net.auth import StaticToken, TokenProvider
from engine.net.transport import Transport
from engine.runtime.engine import Engine
from engine.runtime.feeds import file_feed
from engine.runtime.session import open_run

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SECRET = "t0ken-never-written"


def _events(n: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"e{i}",
            "criteo-partner-id": 12345,
            "retailer-visitor-id": f"v{i:04d}",
            "event-type": "viewHome",
            "page-id": "viewHome_API_desktop",
        }
        for i in range(n)
    ]


async def _run_with(
    config: Config, *, tokens: TokenProvider | None = None, transport: Transport | None = None
) -> Summary:
    """A one-process run, as api.run_local does it, on the given plug points."""
    async with open_run(config, tokens=tokens if tokens is not None else True) as session:
        engine = Engine(
            session.config,
            session.tokens,
            transport or session.transport,
            secrets=session.secrets,
        )
        return await engine.execute(
            file_feed(session.config, session.counts),
            session.emit,
            session.counts,
            write_now=session.write,
        )


class _FlakyToken(StaticToken):
    """A token store that fails on every `every`-th read, naming the token as it fails."""

    def __init__(self, token: str, every: int) -> None:
        super().__init__(token)
        self.every = every
        self.reads = 0
        self.raised = 0

    def authorization(self) -> str | None:
        self.reads += 1
        if self.reads % self.every == 0:
            self.raised += 1
            raise RuntimeError(f"token store\nunreachable (had {MOCK_TOKEN})")
        return super().authorization()


class _RevokedToken(StaticToken):
    """A token store whose token is never usable, and whose error quotes the token."""

    def authorization(self) -> str | None:
        return None  # the mandatory window: the call waits for a fresh one

    async def wait_authorization(self) -> str | None:
        raise AuthError(f"the store says {MOCK_TOKEN} was revoked")


class _OneBadEvent:
    """A Transport that raises for one visitor's call and sends the others."""

    def __init__(self, inner: Transport, visitor: str) -> None:
        self.inner = inner
        self.marker = f"retailer-visitor-id={visitor}&"

    async def send(self, request: Request, authorization: str | None) -> Response:
        if self.marker in request.url:
            await anyio.lowlevel.checkpoint()
            raise KeyError("x")
        return await self.inner.send(request, authorization)


# -- item 4: one event's failure is that event's record ------------------------------------


@pytest.mark.parametrize("client", ["http1", "session"])
async def test_a_token_provider_that_raises_fails_only_those_events(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path, client: str
) -> None:
    out = tmp_path / "out.jsonl"
    provider = _FlakyToken(MOCK_TOKEN, every=3)
    # "In a row" is in the order records complete, and a raise completes at once while a
    # call takes a while: -c 4 keeps successes coming between the failures.
    config = config_for(mock, write_jsonl(_events(60)), out, http_client=client, concurrency=4)
    summary = await _run_with(config, tokens=provider)

    records = read_records(out)
    assert sorted(r["seq"] for r in records) == list(range(60))  # the run went on
    internal = [r for r in records if r["error_kind"] == "internal"]
    assert len(internal) == provider.raised == 20
    for r in internal:
        assert r["error"] == "RuntimeError: token store unreachable (had [redacted])"
        assert (r["status"], r["ok"], r["response"]) == (None, False, None)
    assert all(r["ok"] for r in records if r["error_kind"] != "internal")
    assert mock.state.delivery_requests == 40  # the 20 were never sent
    assert MOCK_TOKEN.encode() not in out.read_bytes()
    assert summary.errors == {"internal": 20}
    assert (summary.stopped, summary.exit_code) == (None, 1)


async def test_a_transport_that_raises_for_one_event(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = config_for(mock, write_jsonl(_events(30)), out)
    async with open_run(config) as session:
        assert session.transport is not None
        transport = _OneBadEvent(session.transport, "v0007")
        engine = Engine(session.config, session.tokens, transport, secrets=session.secrets)
        summary = await engine.execute(
            file_feed(session.config, session.counts), session.emit, session.counts
        )
    records = {r["seq"]: r for r in read_records(out)}
    assert len(records) == 30
    assert records[7]["error"] == "KeyError: 'x'"
    assert records[7]["error_kind"] == "internal"
    assert all(r["ok"] for seq, r in records.items() if seq != 7)
    assert summary.exit_code == 1


async def test_a_stop_reason_that_quotes_the_token_is_redacted(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """Whoever wrote it, a stop reason reaches stderr and --summary: redacted where the
    run's stop is set."""
    out = tmp_path / "out.jsonl"
    config = config_for(mock, write_jsonl(_events(5)), out)
    summary = await _run_with(config, tokens=_RevokedToken(MOCK_TOKEN))
    assert summary.stopped == "the store says [redacted] was revoked"
    assert summary.exit_code == 3
    assert mock.state.delivery_requests == 0


async def test_twenty_internal_errors_in_a_row_stop_the_run_with_70(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    provider = _FlakyToken(MOCK_TOKEN, every=1)
    summary = await _run_with(config_for(mock, write_jsonl(_events(300)), out), tokens=provider)

    assert summary.exit_code == summary.stop_code == 70
    assert summary.stopped is not None
    assert summary.stopped.startswith("20 events in a row failed with an internal error")
    assert "(last: RuntimeError: token store unreachable (had [redacted]))" in summary.stopped
    records = read_records(out)
    assert 20 <= len(records) < 300  # stopped: the rest was neither sent nor written
    assert all(r["error_kind"] == "internal" for r in records)
    assert mock.state.delivery_requests == 0


# No input reaches the engine that makes its handling raise (an --endpoint whose port is
# past 65535 did, until config validation refused it): the CLI's exit 70 is tested on a
# Summary the API gives for a run on a raising plug point, through what each command
# says and returns of it.


async def test_cli_exit_70_with_a_one_line_hint(
    mock: MockHandle,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, path = tmp_path / "out.jsonl", tmp_path / "summary.json"
    config = config_for(mock, write_jsonl(_events(200)), out, summary=str(path))
    summary = await _run_with(config, tokens=_FlakyToken(MOCK_TOKEN, every=1))
    capsys.readouterr()
    code = finish_run(summary, config)

    err = capsys.readouterr().err
    assert code == 70, err
    assert "Traceback" not in err
    stopped = [line for line in err.splitlines() if line.startswith("adbatch: stopped:")]
    assert stopped == [
        "adbatch: stopped: 20 events in a row failed with an internal error (last: "
        "RuntimeError: token store unreachable (had [redacted])); this is a bug in adbatch: "
        "please report it with the records' error lines; --resume sends them again"
    ]
    records = read_records(out)
    assert 20 <= len(records) < 200
    assert {r["error_kind"] for r in records} == {"internal"}
    assert MOCK_TOKEN.encode() not in out.read_bytes()
    data = orjson.loads(path.read_bytes())  # the --summary file says 70 too
    assert data["exit_code"] == 70
    assert data["summary"]["stop_code"] == 70
    assert MOCK_TOKEN.encode() not in path.read_bytes()


async def test_load_and_replay_say_the_stop_and_exit_70(
    mock: MockHandle,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, path = tmp_path / "out.jsonl", tmp_path / "summary.json"
    config = config_for(mock, write_jsonl(_events(100)), out)
    summary = await _run_with(config, tokens=_FlakyToken(MOCK_TOKEN, every=1))
    figures = {"sent": 20, "dropped": 0, "corrected_latency_ms": {}}
    capsys.readouterr()
    code = finish_load(LoadOutcome(summary, figures, scheduled=100), str(path))

    err = capsys.readouterr().err
    assert code == 70, err
    assert "adbatch: stopped: 20 events in a row failed with an internal error" in err
    assert orjson.loads(path.read_bytes())["summary"]["stop_code"] == 70


async def test_resume_sends_internal_records_again(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    events = write_jsonl(_events(100))
    first = await _run_with(config_for(mock, events, out), tokens=_FlakyToken(MOCK_TOKEN, 1))
    assert first.exit_code == 70
    failed = {r["seq"] for r in read_records(out)}

    second = await run(config_for(mock, events, out, resume=True))
    assert second.exit_code == 0
    records = read_records(out)
    exactly_once(records, 100)  # the internal lines were replaced by their new record
    assert all(r["ok"] for r in records)
    assert failed
    assert mock.state.delivery_requests == 100  # the internal ones were sent this time


# -- item 8: throttled forever means stop -------------------------------------------------


def _refusing() -> MockConfig:
    """Every call answered 429 with Retry-After: 1, retries included."""
    return MockConfig(fail_429=1.0, faults_first_attempt_only=False, retry_after="1")


@pytest.mark.slow
@pytest.mark.parametrize("client", ["http1", "session"])
async def test_throttled_for_good_stops_with_3_then_resume_finishes(
    write_jsonl: Callable[..., Path], tmp_path: Path, client: str
) -> None:
    out = tmp_path / "out.jsonl"
    events = write_jsonl(_events(40))
    options = {"http_client": client, "concurrency": 4}
    async with running_mock(_refusing()) as refusing:
        first = await run(
            config_for(refusing, events, out, give_up_after=1.0, retries=1, **options)
        )
    assert first.exit_code == 3
    assert first.stopped is not None
    assert first.stopped.startswith("the server has refused every call (HTTP 429/503) for")
    assert "--resume picks up the rest" in first.stopped
    refused = read_records(out)
    assert 0 < len(refused) < 40  # stopped: not every event was tried
    assert {r["status"] for r in refused} == {429}
    assert all(r["attempts"] == 2 for r in refused)

    async with running_mock() as healthy:
        second = await run(config_for(healthy, events, out, resume=True, **options))
        sent = healthy.state.delivery_requests
    assert second.exit_code == 0
    records = read_records(out)
    exactly_once(records, 40)  # one line per input line, its latest outcome
    assert all(r["ok"] for r in records)
    assert sent == 40  # the refused events too: a 429 record is not an answer


async def _cli(*args: str, cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await anyio.run_process(
        [sys.executable, "-m", "engine", "run", "--no-progress", *args],
        cwd=cwd,
        env=env,
        check=False,
    )
    return proc.returncode, proc.stderr.decode()


@pytest.mark.slow
async def test_cli_gives_up_with_3_and_the_message_then_resume_under_two_workers(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """Each worker gives up on its own; the parent ends the run with 3 and one message."""
    events = write_jsonl(_events(400))
    common = ["--token", MOCK_TOKEN, "-c", "4", "--workers", "2", "-o", "out.jsonl"]
    async with running_mock(_refusing()) as refusing:
        code, err = await _cli(
            "--endpoint",
            refusing.delivery_url,
            "--give-up-after",
            "1",
            "--retries",
            "1",
            *common,
            str(events),
            cwd=tmp_path,
        )
    assert code == 3, err
    assert "Traceback" not in err
    stopped = [line for line in err.splitlines() if line.startswith("adbatch: stopped:")]
    assert len(stopped) == 1, err
    assert "the server has refused every call (HTTP 429/503) for" in stopped[0]
    assert "--resume picks up the rest" in stopped[0]
    first = read_records(tmp_path / "out.jsonl")
    assert 0 < len(first) < 400
    assert {r["status"] for r in first} == {429}

    async with running_mock() as healthy:
        code, err = await _cli(
            "--endpoint", healthy.delivery_url, "--resume", *common, str(events), cwd=tmp_path
        )
    assert code == 0, err
    records = read_records(tmp_path / "out.jsonl")
    exactly_once(records, 400)
    assert all(r["ok"] for r in records)
