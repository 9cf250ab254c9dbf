"""Dynamic tokens through whole runs against the real mock: renewal, failures, 401 storms."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import read_records

import engine
from engine.mock import MockConfig, MockHandle, running_mock

FIXED_BODY = b'{"status":"OK","page-uid":"pu","onLoadBeacon":"","placements":[]}'


def event(i: int) -> dict[str, object]:
    return {
        "id": f"e{i}",
        "criteo-partner-id": 12345,
        "retailer-visitor-id": f"rv-{i}",
        "event-type": "viewHome",
        "page-id": "viewHome_API_desktop",
    }


def dynamic(mock: MockHandle, **options: Any) -> engine.Config:
    return engine.Config(
        endpoint=mock.delivery_url,
        token_url=mock.token_url,
        client_id="mock-client",
        client_secret="mock-secret",
        **options,
    )


def max_in_flight(records: list[dict[str, Any]]) -> int:
    edges: list[tuple[float, int]] = []
    for r in records:
        start = r["sent_at"]
        edges += [(start, 1), (start + r["latency_ms"] / 1000.0, -1)]
    edges.sort()
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


@pytest.mark.slow
@pytest.mark.anyio
async def test_long_run_renews_ahead_without_blocking(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    # 2.5 s tokens, 3+ lifetimes; a slow server (2 s per answer) at a modest pace keeps
    # ~240 calls in flight without saturating a busy 2-core CI box.
    lifetime, rate, seconds = 2.5, 120.0, 7.5
    count = int(rate * seconds)
    mock_config = MockConfig(token_lifetime=lifetime, latency=2.0, fixed_body=FIXED_BODY)
    async with running_mock(mock_config) as mock:
        events = write_jsonl([event(i) for i in range(count)])
        out = tmp_path / "out.jsonl"
        config = dynamic(
            mock, inputs=(str(events),), output=str(out), concurrency=500, rate=rate, timeout=10
        )
        start = time.monotonic()
        summary = await engine.run(config)
        elapsed = time.monotonic() - start
        wall_offset = time.time() - time.monotonic()
        state = mock.state
    records = read_records(out)

    # Every event 200, none sent with an expired token, none refused.
    assert summary.ok == count
    assert len(records) == count
    outcomes = Counter((r["status"], r["attempts"], r["error_kind"]) for r in records)
    assert outcomes == {(200, 1, None): count}
    assert state.expired_token_uses == 0
    assert state.unauthorized == 0
    # Several lifetimes, with 200+ calls in flight.
    assert elapsed > 3 * lifetime
    assert max_in_flight(records) >= 200
    # Token requests = run length / renewal period (0.75-0.81 of the lifetime), not more.
    assert state.token_requests == summary.tokens_fetched == summary.token_renewals + 1
    assert elapsed / lifetime <= state.token_requests <= 2 + elapsed / (0.75 * lifetime)
    times = state.token_request_times
    gaps = [b - a for a, b in pairwise(times)]
    # No early or duplicate renewal (the advisory window starts at 75% of the lifetime;
    # the server sees requests with some lag), and each one before the token expired.
    assert all(0.7 * lifetime <= g < lifetime for g in gaps), gaps
    # No call waited for a renewal, and latency around renewals is that of the rest.
    assert summary.token_waits == 0
    assert summary.token_failures == 0
    renewals = [t + wall_offset for t in state.token_request_times[1:]]
    near = [r["latency_ms"] for r in records if any(abs(r["sent_at"] - t) < 0.25 for t in renewals)]
    rest = [
        r["latency_ms"] for r in records if all(abs(r["sent_at"] - t) >= 0.25 for t in renewals)
    ]
    assert len(near) >= 50
    assert statistics.median(near) <= statistics.median(rest) * 1.1 + 50.0
    assert "tokens: " in summary.line()


@pytest.mark.slow
@pytest.mark.anyio
async def test_token_endpoint_failing_every_other_request(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    # 4 s of calls at 2 s tokens: two renewals at least (--rate is exact now: 3 s of
    # calls took ~3.4 s before and let a second renewal in, by luck).
    lifetime, rate, seconds = 2.0, 200.0, 4.0
    count = int(rate * seconds)
    mock_config = MockConfig(token_lifetime=lifetime, token_fail_every=2, fixed_body=FIXED_BODY)
    async with running_mock(mock_config) as mock:
        events = write_jsonl([event(i) for i in range(count)])
        out = tmp_path / "out.jsonl"
        config = dynamic(mock, inputs=(str(events),), output=str(out), concurrency=64, rate=rate)
        summary = await engine.run(config)
        state = mock.state
    records = read_records(out)
    assert summary.ok == count
    assert summary.failed == 0
    assert all(r["status"] == 200 for r in records)
    assert state.expired_token_uses == 0
    assert state.unauthorized == 0
    # Every renewal's first try failed and was retried while the old token served.
    assert summary.token_renewals >= 2
    assert summary.token_failures == state.token_failures >= summary.token_renewals
    assert "failed" in summary.token_line()


@pytest.mark.slow
@pytest.mark.anyio
async def test_401_storm_one_renewal_every_call_retried_once() -> None:
    # 200 calls answered, then the mock revokes every token, then 300 calls go out with
    # the revoked token while the one renewal takes 1 s: a storm of concurrent 401s.
    first, second = 200, 300
    revoked = anyio.Event()
    mock_config = MockConfig(latency=0.05, token_latency=1.0, fixed_body=FIXED_BODY)
    async with running_mock(mock_config) as mock:

        async def events() -> AsyncIterator[dict[str, object]]:
            for i in range(first):
                yield event(i)
            await revoked.wait()
            for i in range(first, first + second):
                yield event(i)

        config = dynamic(mock, concurrency=second)
        results = []
        async with aclosing(engine.deliver(events(), config)) as stream:
            async for result in stream:
                results.append(result)
                if len(results) == first:
                    mock.state.revoke_all_tokens()
                    revoked.set()
        state = mock.state
    assert len(results) == first + second
    assert all(r.ok and r.status == 200 for r in results)
    retried = [r for r in results if r.attempts == 2]
    assert len(retried) == state.unauthorized >= 100  # each 401 retried, once
    assert all(r.attempts in (1, 2) for r in results)
    assert state.token_requests == 2  # the first token and one renewal
    assert state.expired_token_uses == 0


@pytest.mark.anyio
async def test_401_on_a_fresh_token_is_final() -> None:
    # Tokens from one mock, calls to another that knows none of them: every call 401.
    async with running_mock() as issuer, running_mock(MockConfig(static_tokens=())) as host:
        config = engine.Config(
            endpoint=host.delivery_url,
            token_url=issuer.token_url,
            client_id="mock-client",
            client_secret="mock-secret",
            concurrency=8,
            fail_fast_401=1000,
        )
        results: list[engine.Result] = []

        async def drain() -> None:
            async with aclosing(engine.deliver((event(i) for i in range(40)), config)) as got:
                async for result in got:
                    results.append(result)  # noqa: PERF401 (those before the raise count)

        # Every call refused, as `run` says (exit 3): the results, then AuthError.
        with pytest.raises(engine.AuthError, match="refused the token"):
            await drain()
    assert len(results) == 40
    assert all(r.status == 401 and not r.ok for r in results)
    assert all(r.attempts in (1, 2) for r in results)
    assert any(r.attempts == 2 for r in results)  # the first 401s did get a renewal
    # A 401-driven renewal at most once a second, not one per event.
    assert issuer.state.token_requests <= 3


@pytest.mark.anyio
async def test_mock_run_uses_the_token_endpoint(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    events = write_jsonl([event(i) for i in range(20)])
    out = tmp_path / "out.jsonl"
    summary = await engine.run(engine.Config(inputs=(str(events),), output=str(out), mock=True))
    assert summary.ok == 20
    assert summary.dynamic_tokens
    assert summary.tokens_fetched == 1
    assert "tokens: 1 fetched" in summary.line()


@pytest.mark.anyio
async def test_tokens_never_reach_the_output(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    # A server that echoes the Authorization header back in its body.
    async with running_mock(MockConfig(record_requests=True)) as mock:
        events = write_jsonl([event(i) for i in range(10)] + [b"{not json"])
        out = tmp_path / "out.jsonl"
        summary = await engine.run(dynamic(mock, inputs=(str(events),), output=str(out)))
        token = mock.state.requests[0].headers["Authorization"][7:]
    assert summary.ok == 10
    data = out.read_bytes()
    assert token.encode() not in data
    assert b"mock-secret" not in data


@pytest.mark.anyio
async def test_dry_run_with_client_credentials_asks_for_no_token(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    async with running_mock() as mock:
        events = write_jsonl([event(i) for i in range(3)])
        out = tmp_path / "out.jsonl"
        summary = await engine.run(
            dynamic(mock, inputs=(str(events),), output=str(out), dry_run=True)
        )
        assert mock.state.token_requests == 0
        assert mock.state.delivery_requests == 0
    records = read_records(out)
    assert summary.ok == 3
    assert all(r["response"]["headers"]["Authorization"] == "Bearer [redacted]" for r in records)


@pytest.mark.anyio
async def test_token_endpoint_lost_mid_run_stops_and_keeps_the_records(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    count = 3000
    async with running_mock(MockConfig(token_lifetime=1.0, fixed_body=FIXED_BODY)) as mock:
        events = write_jsonl([event(i) for i in range(count)])
        out = tmp_path / "out.jsonl"
        config = dynamic(
            mock, inputs=(str(events),), output=str(out), concurrency=16, rate=500, token_wait=0.3
        )
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                nonlocal summary
                summary = await engine.run(config)

            summary: engine.Summary | None = None
            tg.start_soon(go)
            with anyio.fail_after(10):
                while mock.state.delivery_requests < 100:  # noqa: ASYNC110 (the mock's counter)
                    await anyio.sleep(0.01)
            mock.state.revoke_all_tokens()
            mock.state.config = replace(mock.state.config, clients=())
    assert summary is not None
    assert summary.stopped is not None
    assert mock.token_url in summary.stopped
    assert "invalid_client" in summary.stopped
    assert summary.exit_code == 3
    records = read_records(out)
    assert len(records) == summary.events < count  # stopped reading, lost nothing read
    assert {r["status"] for r in records} <= {200, 401}


@pytest.mark.slow
@pytest.mark.anyio
async def test_slow_renewal_makes_calls_wait_never_send_an_expired_token(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    # The token endpoint answers in 0.5 s, later than the mandatory window of a 2 s token
    # starts (0.25 s after its renewal at the latest): calls wait for the renewal in flight.
    lifetime, rate, seconds = 2.0, 200.0, 2.5
    count = int(rate * seconds)
    mock_config = MockConfig(token_lifetime=lifetime, token_latency=0.5, fixed_body=FIXED_BODY)
    async with running_mock(mock_config) as mock:
        events = write_jsonl([event(i) for i in range(count)])
        out = tmp_path / "out.jsonl"
        config = dynamic(mock, inputs=(str(events),), output=str(out), concurrency=64, rate=rate)
        summary = await engine.run(config)
        state = mock.state
    assert summary.ok == count
    assert state.expired_token_uses == 0
    assert state.unauthorized == 0
    assert summary.token_waits > 0
    assert summary.token_renewals >= 1
    assert summary.token_renewal_ms_max is not None
    assert summary.token_renewal_ms_max >= 500.0


@pytest.mark.slow
@pytest.mark.anyio
async def test_renewal_does_not_queue_behind_a_saturated_delivery_pool(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    # 4 connections for delivery, each busy for 1 s: a renewal that shared that pool
    # would wait up to a second for a connection; on its own pool it takes ms.
    lifetime, count = 1.5, 12
    mock_config = MockConfig(token_lifetime=lifetime, latency=1.0, fixed_body=FIXED_BODY)
    async with running_mock(mock_config) as mock:
        events = write_jsonl([event(i) for i in range(count)])
        out = tmp_path / "out.jsonl"
        config = dynamic(mock, inputs=(str(events),), output=str(out), concurrency=4, timeout=5)
        summary = await engine.run(config)
        state = mock.state
    assert summary.ok == count
    assert summary.token_renewals >= 2
    assert summary.token_waits == 0
    assert state.expired_token_uses == 0
    assert summary.token_renewal_ms_max is not None
    assert summary.token_renewal_ms_max < 500.0


@pytest.mark.anyio
async def test_library_deliver_raises_auth_error_for_wrong_credentials() -> None:
    async with running_mock() as mock:
        config = dynamic(mock).with_changes(client_secret="wrong-secret-123")
        with pytest.raises(engine.AuthError, match="refused the client credentials") as info:
            async for _ in engine.deliver([event(0)], config):
                pass
        assert mock.state.delivery_requests == 0
    assert "wrong-secret-123" not in str(info.value)


@pytest.mark.slow
@pytest.mark.anyio
async def test_load_command_renews_tokens_too(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    from engine.core.pacing import constant
    from engine.load.driver import run_load
    from engine.load.plan import LoadPlan

    lifetime = 1.5
    mock_config = MockConfig(token_lifetime=lifetime, fixed_body=FIXED_BODY)
    async with running_mock(mock_config) as mock:
        out = tmp_path / "out.jsonl"
        config = dynamic(mock, inputs=(str(write_jsonl([event(i) for i in range(5)])),))
        outcome = await run_load(
            config.with_changes(output=str(out)), LoadPlan(pacer=constant(100, 3.5))
        )
        state = mock.state
    summary = outcome.summary
    assert summary.ok == 350
    assert state.expired_token_uses == 0
    assert state.unauthorized == 0
    assert summary.dynamic_tokens
    assert summary.token_renewals >= 2  # renewed in the background, not once per 401
    # A renewal may be on its way as the run ends: the mock counted it, the summary (made
    # before it came back) did not.
    assert summary.tokens_fetched <= state.token_requests <= summary.tokens_fetched + 1
