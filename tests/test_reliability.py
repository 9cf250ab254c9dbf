"""Retries, retry budget, adaptive rate, resume and security, against the real mock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from conftest import MOCK_TOKEN, config_for, exactly_once, read_records

from engine import api
from engine.config import Config
from engine.errors import ConfigError, FatalError, InputError
from engine.files.resume import open_resume
from engine.mock import MockConfig, running_mock


def events(n: int, prefix: str = "ev") -> list[dict[str, object]]:
    """n valid viewHome events with distinct queries (faults are drawn per query)."""
    return [
        {
            "id": f"{prefix}-{i}",
            "criteo-partner-id": 12345,
            "retailer-visitor-id": f"rv-{prefix}-{i}",
            "event-type": "viewHome",
            "page-id": "viewHome_API_desktop",
        }
        for i in range(n)
    ]


@pytest.mark.slow  # end to end, over a second
@pytest.mark.anyio
async def test_faults_on_first_attempts_all_end_200_exactly_once(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    """Must show: 10% 5xx, 5% 429, 3% dropped, 2% slow on first attempts -> all 200, once."""
    n = 1000
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    mock_config = MockConfig(
        fail_500=0.05,
        fail_503=0.05,
        fail_429=0.05,
        retry_after="0",
        drop=0.03,
        slow=0.02,
        slow_seconds=3.0,
        seed=7,
    )
    async with running_mock(mock_config) as mock:
        summary = await api.run(
            config_for(
                mock.delivery_url, inputs, out, concurrency=32, timeout=0.5, backoff_base=0.02
            )
        )
        state = mock.state
    records = read_records(out)
    exactly_once(records, n)
    assert all(r["status"] == 200 and r["ok"] for r in records)
    assert summary.ok == n
    assert summary.failed == 0
    injected = state.faults_injected
    assert set(injected) == {"fail_500", "fail_503", "fail_429", "drop", "slow"}
    # Every record says how many attempts it took and why the earlier ones failed.
    for r in records:
        assert r["attempts"] == 1 + len(r["retries"])
    reasons = Counter(reason for r in records for reason in r["retries"])
    assert reasons["http_500"] == injected["fail_500"]
    assert reasons["http_503"] == injected["fail_503"]
    assert reasons["http_429"] == injected["fail_429"]
    assert reasons["timeout"] == injected["slow"]
    # aiohttp silently resends an idempotent GET once when a reused keep-alive connection
    # drops; those resends never reach the engine, so some drops show as no retry at all.
    assert reasons["disconnected"] <= injected["drop"]
    attempts = sum(r["attempts"] for r in records)
    assert attempts <= state.delivery_requests <= attempts + injected["drop"]
    assert sum(summary.retries.values()) == sum(reasons.values())


@pytest.mark.anyio
async def test_retry_budget_stops_hammering_a_sick_server(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    n = 400
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    sick = MockConfig(fail_503=1.0, faults_first_attempt_only=False)
    async with running_mock(sick) as mock:
        summary = await api.run(
            config_for(
                mock.delivery_url,
                inputs,
                out,
                concurrency=16,
                backoff_base=0.001,
                backoff_cap=0.01,
                adaptive=False,
            )
        )
        calls = mock.state.delivery_requests
    records = read_records(out)
    exactly_once(records, n)
    assert all(r["status"] == 503 for r in records)
    # Without a budget: 4 attempts each (1600 calls). With it: a reserve of 100 plus
    # 20% of the first attempts.
    assert calls <= n + 100 + 0.2 * n + 1
    assert summary.retry_budget_refused > 0
    refused = [r for r in records if "retry budget exhausted" in r["error"]]
    assert len(refused) == summary.retry_budget_refused
    assert all(r["attempts"] == 1 + len(r["retries"]) for r in records)
    assert "not retried (retry budget spent)" in summary.line()


@pytest.mark.slow  # end to end, over a second
@pytest.mark.anyio
async def test_429_storm_lowers_the_rate_and_the_summary_says_so(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    n = 200
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    storm = MockConfig(fail_429=0.5, retry_after="0", seed=3)
    async with running_mock(storm) as mock:
        summary = await api.run(
            config_for(
                mock.delivery_url,
                inputs,
                out,
                concurrency=16,
                backoff_base=0.001,
                retry_budget=1.0,
            )
        )
    records = read_records(out)
    exactly_once(records, n)
    assert all(r["status"] == 200 for r in records)
    assert summary.slowed is not None
    assert "sending rate lowered" in summary.slowed
    assert "server pushed back" in summary.line()


@pytest.mark.slow  # end to end, over a second
@pytest.mark.anyio
async def test_retry_after_is_honoured(tmp_path: Path, write_jsonl: Callable[..., Path]) -> None:
    inputs = write_jsonl(events(1))
    out = tmp_path / "out.jsonl"
    async with running_mock(MockConfig(fail_503=1.0, retry_after="1", record_requests=True)) as m:
        await api.run(config_for(m.delivery_url, inputs, out, backoff_base=0.001))
        times = [r.received_at for r in m.state.requests]
    (record,) = read_records(out)
    assert record["status"] == 200
    assert record["retries"] == ["http_503"]
    assert len(times) == 2
    assert times[1] - times[0] >= 0.9  # asked for 1 s; the backoff alone is ~1 ms


@pytest.mark.anyio
async def test_too_long_retry_after_is_final(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    inputs = write_jsonl(events(1))
    out = tmp_path / "out.jsonl"
    async with running_mock(MockConfig(fail_429=1.0, retry_after="3600")) as m:
        await api.run(config_for(m.delivery_url, inputs, out))
        assert m.state.delivery_requests == 1
    (record,) = read_records(out)
    assert record["status"] == 429
    assert "more than --retry-after-cap" in record["error"]


@pytest.mark.anyio
async def test_retries_zero_and_final_statuses(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    inputs = write_jsonl(events(20))
    out = tmp_path / "out.jsonl"
    async with running_mock(MockConfig(fail_503=1.0, faults_first_attempt_only=False)) as m:
        await api.run(config_for(m.delivery_url, inputs, out, retries=0))
        assert m.state.delivery_requests == 20
    records = read_records(out)
    assert all(r["attempts"] == 1 and r["retries"] == [] for r in records)
    assert all("gave up after 1 attempts" in r["error"] for r in records)


@pytest.mark.anyio
async def test_connection_refused_is_retried_then_final(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    async with running_mock() as m:
        url = m.delivery_url  # the port is free once the mock is gone
    inputs = write_jsonl(events(3))
    out = tmp_path / "out.jsonl"
    await api.run(config_for(url, inputs, out, retries=2, backoff_base=0.001))
    records = read_records(out)
    assert all(r["retries"] == ["connect", "connect"] for r in records)
    assert all(r["attempts"] == 3 and r["error_kind"] == "connect" for r in records)


# -- resume --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_resume_repairs_a_torn_line_and_sends_only_the_rest(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    n = 200
    inputs = write_jsonl(events(n))
    full = tmp_path / "full.jsonl"
    async with running_mock() as m:
        await api.run(config_for(m.delivery_url, inputs, full))
    lines = full.read_bytes().splitlines(keepends=True)
    out = tmp_path / "out.jsonl"
    kept = lines[:120]
    out.write_bytes(b"".join(kept) + lines[120][:37])  # a crash mid-write
    async with running_mock() as m:
        summary = await api.run(config_for(m.delivery_url, inputs, out, resume=True))
        calls = m.state.delivery_requests
    records = read_records(out)
    exactly_once(records, n)
    assert calls == n - 120
    assert summary.resumed == 120
    assert "already answered" in summary.line()
    assert out.read_bytes().startswith(b"".join(kept))


@pytest.mark.anyio
async def test_resume_of_a_complete_file_sends_nothing(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    inputs = write_jsonl(events(50))
    out = tmp_path / "out.jsonl"
    async with running_mock() as m:
        await api.run(config_for(m.delivery_url, inputs, out, ordered=True))
        before = out.read_bytes()
        await api.run(config_for(m.delivery_url, inputs, out, resume=True, ordered=True))
        assert m.state.delivery_requests == 50
    assert out.read_bytes() == before


@pytest.mark.anyio
async def test_resume_ordered_appends_the_rest_in_order(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    n = 100
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    async with running_mock() as m:
        await api.run(config_for(m.delivery_url, inputs, out, ordered=True))
    lines = out.read_bytes().splitlines(keepends=True)
    # An interrupted completion-order run: every other event answered.
    out.write_bytes(b"".join(lines[::2]))
    async with running_mock() as m:
        await api.run(config_for(m.delivery_url, inputs, out, ordered=True, resume=True))
    records = read_records(out)
    exactly_once(records, n)
    assert [r["seq"] for r in records[50:]] == list(range(1, n, 2))


@pytest.mark.anyio
async def test_resume_refuses_a_changed_input(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    inputs = write_jsonl(events(10))
    out = tmp_path / "out.jsonl"
    async with running_mock() as m:
        await api.run(config_for(m.delivery_url, inputs, out))
        write_jsonl(events(10, prefix="other"))  # same file name, other ids
        with pytest.raises(FatalError, match="input changed"):
            await api.run(config_for(m.delivery_url, inputs, out, resume=True))


def test_resume_index_rejects_garbage_in_the_middle(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    good = orjson.dumps({"seq": 0, "source": "a:1", "id": None})
    out.write_bytes(good + b"\nnot json\n" + good + b"\n")
    with pytest.raises(InputError, match="line 2: not an adbatch record"):
        open_resume(str(out))


def test_resume_index_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    index = open_resume(str(tmp_path / "none.jsonl"))
    assert index.records == 0
    assert not index.answered(0, "a:1", None)


def test_resume_index_drops_a_garbled_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    good = orjson.dumps({"seq": 3, "source": "a:4", "id": "x"}) + b"\n"
    out.write_bytes(good + b"\x00" * 4096 + b"\n")  # power loss: a block of zeros
    index = open_resume(str(out))
    assert out.read_bytes() == good
    assert index.repaired_bytes == 4097
    assert index.answered(3, "a:4", "x")
    assert not index.answered(2, "a:3", "x")


def test_resume_needs_an_output_file() -> None:
    with pytest.raises(ConfigError, match="--resume needs -o FILE"):
        Config(token="t", resume=True).validated()


# -- security -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "allow", "refused"),
    [
        pytest.param("http://d.us.criteo.com/delivery/retailmedia", False, True, id="plain-http"),
        pytest.param("http://10.0.0.8:8080/delivery", False, True, id="plain-http-private-ip"),
        pytest.param("http://d.us.criteo.com/delivery/retailmedia", True, False, id="allowed"),
        pytest.param("https://d.us.criteo.com/delivery/retailmedia", False, False, id="https"),
        pytest.param("http://127.0.0.1:8080/delivery", False, False, id="loopback-v4"),
        pytest.param("http://127.9.9.9:8080/delivery", False, False, id="loopback-range"),
        pytest.param("http://[::1]:8080/delivery", False, False, id="loopback-v6"),
        pytest.param("http://localhost:8080/delivery", False, False, id="localhost"),
    ],
)
def test_plain_http_token_refusal(endpoint: str, allow: bool, refused: bool) -> None:
    cfg = Config(endpoint=endpoint, token="secret-token", allow_insecure=allow)
    if refused:
        with pytest.raises(ConfigError, match="refusing to send the bearer token") as info:
            cfg.validated()
        assert "secret-token" not in str(info.value)
    else:
        cfg.validated()


@pytest.mark.anyio
async def test_token_echoed_by_the_server_is_redacted(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    inputs = write_jsonl(events(5))
    out = tmp_path / "out.jsonl"
    echo = MockConfig(fixed_body=b'{"status":"OK","seen":"Bearer mock-token"}')
    async with running_mock(echo) as m:
        await api.run(config_for(m.delivery_url, inputs, out))
    data = out.read_bytes()
    assert MOCK_TOKEN.encode() not in data
    assert data.count(b"[redacted]") == 5


@pytest.mark.slow  # ~1.7 s end to end: 60 calls at 40/s
@pytest.mark.anyio
async def test_retries_take_rate_permits(tmp_path: Path, write_jsonl: Callable[..., Path]) -> None:
    n, rate = 40, 40.0
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    faulty = MockConfig(fail_503=0.5, retry_after="0", record_requests=True, seed=1)
    async with running_mock(faulty) as m:
        await api.run(
            config_for(m.delivery_url, inputs, out, rate=rate, backoff_base=0.0, adaptive=False)
        )
        times = sorted(r.received_at for r in m.state.requests)
    exactly_once(read_records(out), n)
    assert len(times) > n + 10  # the retries are there...
    # ...and within the rate: no one-second window holds more than `rate` calls
    # (plus one for the limiter's bucket and one for clock edges).
    busiest = max(sum(1 for t in times[i:] if t - start < 1.0) for i, start in enumerate(times))
    assert busiest <= rate + 2
