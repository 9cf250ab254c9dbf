"""--workers N: the same records as one process, exactly once, one token for all.

Every multi-process test runs real worker processes (spawn) against the real mock in
this process; each costs a second or so of start-up, so they are few and cover much.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from conftest import config_for, events, read_records
from web_app import arrivals_counted

from engine import Config, run
from engine.cli.main import main
from engine.mock import MockConfig, MockHandle, running_mock
from engine.multiproc.child import Answers
from engine.multiproc.driver import (
    StartMethod,
    auto_workers,
    run_workers,
    start_method,
    worker_config,
)
from engine.multiproc.messages import Refreshed
from engine.multiproc.parcels import BATCH, parcel_size
from engine.net.auth import FollowerToken, Lease

pytestmark = pytest.mark.anyio


def _events(n: int) -> list[object]:
    rows: list[object] = []
    for i in range(n):
        if i % 50 == 7:
            rows.append(b"{not json")  # invalid: still one record
        elif i % 50 == 8:
            rows.append(b"")  # blank: skipped, counted, no record
        elif i % 50 == 9:
            rows.append({"id": f"e{i}", "event-type": "viewHome"})  # missing parameters
        else:
            rows.append(
                {
                    "id": f"e{i}",
                    "timestamp": 1717243200.5 + i,
                    "criteo-partner-id": 12345,
                    "retailer-visitor-id": f"rv-{i}",
                    "event-type": "viewItem",
                    "page-id": "viewItem_API_desktop",
                    "item": [f"sku-{i}", "sku-x"],
                    "price": 12.50,
                    "keywords": "tea & cups",
                }
            )
    return rows


def _stable(record: dict[str, object]) -> tuple[object, ...]:
    """What does not depend on timing or on which process sent it."""
    return tuple(record[k] for k in ("seq", "id", "source", "status", "ok", "error", "response"))


@pytest.mark.slow
@pytest.mark.parametrize("start", ["fork", "spawn"])
async def test_two_workers_write_the_same_records_as_one_process(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path, start: StartMethod
) -> None:
    events = write_jsonl(_events(300))
    base = Config(inputs=(str(events),), endpoint=mock.delivery_url, token="mock-token")
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"

    s1 = await run(base.with_changes(output=str(one)))
    sent_by_one = mock.state.delivery_requests
    s2 = await run_workers(
        base.with_changes(output=str(two), workers=2, concurrency=8), start=start
    )
    sent_by_two = mock.state.delivery_requests - sent_by_one

    r1, r2 = read_records(one), read_records(two)
    assert len(r2) == 294  # 300 lines less 6 blank ones: one record each, no more
    assert sorted(r["seq"] for r in r2) == list(range(294))  # type: ignore[type-var]
    assert sorted(map(_stable, r2)) == sorted(map(_stable, r1))
    assert sent_by_two == sent_by_one == 282  # each valid event sent exactly once
    # Stats merged from both workers into one summary, as the 1-process run counts them.
    for field in ("events", "ok", "failed", "invalid", "blank_lines", "statuses", "errors"):
        assert getattr(s2, field) == getattr(s1, field), field
    assert (s2.ok, s2.invalid, s2.blank_lines) == (282, 12, 6)
    assert s2.latency_ms["p50"] is not None


@pytest.mark.slow
async def test_ordered_across_workers_and_rate_split(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    events = write_jsonl(_events(120))
    out = tmp_path / "out.jsonl"
    config = config_for(mock, events, out, workers=2, ordered=True, rate=2000.0)
    summary = await run(config)
    seqs = [r["seq"] for r in read_records(out)]
    assert seqs == list(range(117))
    assert summary.events == 117


@pytest.mark.slow
async def test_refused_token_stops_every_worker(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    events = write_jsonl(_events(600))
    out = tmp_path / "out.jsonl"
    config = Config(
        inputs=(str(events),),
        output=str(out),
        endpoint=mock.delivery_url,
        token="wrong-token",
        workers=2,
        concurrency=4,
        fail_fast_401=10,
    )
    summary = await run(config)
    assert summary.exit_code == 3
    assert summary.stopped is not None
    assert "HTTP 401" in summary.stopped
    records = read_records(out)
    # Stopped early: each of the 2 workers stops at ceil(10/2) = 5 refusals in a row (the
    # run's 10 in a row); what was answered is written once.
    assert 5 <= len(records) < 588
    assert len({r["seq"] for r in records}) == len(records)
    assert b"wrong-token" not in out.read_bytes()


class _Renewing:
    """A token provider that holds a refused token until asked, then a good one."""

    def __init__(self) -> None:
        self.current = "Bearer stale-token"
        self.fetches = 0

    def authorization(self) -> str | None:
        return self.current

    async def wait_authorization(self) -> str | None:
        return self.current

    def lease(self) -> Lease:
        return Lease(self.current)

    async def maintain(self) -> None:
        return None

    def secrets(self) -> tuple[str, ...]:
        return ("stale-token", "fresh-token")

    def token_stats(self) -> None:
        return None

    async def refresh_after_401(self, used: str | None) -> bool:
        if used != self.current:
            return True  # already renewed for another caller
        self.fetches += 1
        await anyio.sleep(0.05)
        self.current = "Bearer fresh-token"
        return True


@pytest.mark.slow
async def test_parent_refreshes_once_for_all_workers(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    events = write_jsonl(_events(200))
    out = tmp_path / "out.jsonl"
    provider = _Renewing()
    async with running_mock(MockConfig(static_tokens=("fresh-token",))) as mock:
        config = Config(
            inputs=(str(events),),
            output=str(out),
            endpoint=mock.delivery_url,
            token="stale-token",
            workers=2,
            concurrency=8,
        )
        summary = await run_workers(config, tokens=provider)
    assert provider.fetches == 1  # one renewal, whatever the number of workers
    assert summary.ok == 188
    assert summary.failed == 0
    records = read_records(out)
    assert any(r["attempts"] == 2 for r in records)  # refused once, then sent again
    assert all(r["ok"] or r["error_kind"] == "invalid" for r in records)
    data = out.read_bytes()
    assert b"stale-token" not in data
    assert b"fresh-token" not in data


@pytest.mark.slow
async def test_one_oauth_token_for_all_workers(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    events = write_jsonl(_events(150))
    out = tmp_path / "out.jsonl"
    async with running_mock(MockConfig(static_tokens=())) as mock:
        config = Config(
            inputs=(str(events),),
            output=str(out),
            endpoint=mock.delivery_url,
            token_url=mock.token_url,
            client_id="mock-client",
            client_secret="mock-secret",
            workers=2,
            concurrency=8,
        )
        summary = await run(config)
        assert mock.state.token_requests == 1  # fetched by the parent, once for both
    assert summary.ok == 141
    assert summary.failed == 0
    assert b"mock-secret" not in out.read_bytes()


@pytest.mark.slow
async def test_calls_that_waited_in_the_workers_are_in_the_summary(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    # 2 s tokens renewed in 0.5 s, past the start of their mandatory window: the
    # workers' calls wait for each renewal, and the one summary counts them (it said 0).
    count = 500
    events = write_jsonl(_events(count))
    out = tmp_path / "out.jsonl"
    mock_config = MockConfig(static_tokens=(), token_lifetime=2.0, token_latency=0.5)
    async with running_mock(mock_config) as mock:
        config = Config(
            inputs=(str(events),),
            output=str(out),
            endpoint=mock.delivery_url,
            token_url=mock.token_url,
            client_id="mock-client",
            client_secret="mock-secret",
            workers=2,
            concurrency=32,
            rate=200.0,
        )
        summary = await run(config)
        assert mock.state.expired_token_uses == 0
    assert summary.ok == 470
    assert summary.token_renewals >= 1
    assert summary.token_waits > 0
    waited = re.search(r", (\d+) calls? waited", summary.line())
    assert waited is not None
    assert int(waited[1]) == summary.token_waits


async def test_a_worker_asks_the_parent_once_per_refused_token() -> None:
    asked: list[str | None] = []
    reply: dict[str | None, anyio.Event] = {"Bearer a": anyio.Event()}
    answers_of = {"Bearer a": (True, Lease("Bearer b")), "Bearer b": (False, Lease("Bearer b"))}

    async def ask(used: str | None) -> tuple[bool, Lease]:
        asked.append(used)
        if used in reply:
            await reply[used].wait()  # the parent's answer comes over the pipe later
        return answers_of[str(used)]

    tokens = FollowerToken(Lease("Bearer a"), ask)
    answers: list[bool] = []

    async def call() -> None:
        answers.append(await tokens.refresh_after_401("Bearer a"))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        assert asked == ["Bearer a"]
        reply["Bearer a"].set()
    assert answers == [True] * 5
    assert tokens.authorization() == "Bearer b"
    assert await tokens.refresh_after_401("Bearer a") is True  # newer already here
    assert await tokens.refresh_after_401("Bearer b") is False  # static: no help
    assert await tokens.refresh_after_401("Bearer b") is False  # the answer stands
    assert asked == ["Bearer a", "Bearer b"]


@pytest.mark.parametrize(
    ("workers", "concurrency", "rate", "expected"),
    [
        pytest.param(2, 64, 1000.0, (32, 500.0), id="even-split"),
        pytest.param(3, 64, None, (22, None), id="concurrency-rounds-up"),
        pytest.param(4, 2, 10.0, (1, 2.5), id="at-least-one-call-each"),
    ],
)
def test_worker_share(
    workers: int, concurrency: int, rate: float | None, expected: tuple[int, float | None]
) -> None:
    config = Config(workers=workers, concurrency=concurrency, rate=rate, ordered=True)
    share = worker_config(config)
    assert (share.concurrency, share.rate) == expected
    assert (share.workers, share.ordered, share.output) == (1, False, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("2", 2, id="number"),
        pytest.param("auto", None, id="auto-is-cores"),
    ],
)
def test_cli_workers_option(value: str, expected: int | None) -> None:
    from engine.cli.main import build_parser, config_from_args

    args = build_parser().parse_args(["run", "--dry-run", "--workers", value, "x.jsonl"])
    assert config_from_args(args).workers == (expected or auto_workers())


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_cli_rejects_bad_workers(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--dry-run", "--workers", value, "x.jsonl"])
    assert exc.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_config_rejects_bad_workers() -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="--workers"):
        Config(workers=0, dry_run=True).validated()


@pytest.mark.slow
async def test_resume_with_workers_sends_only_what_is_missing(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    events = write_jsonl(_events(300))
    out = tmp_path / "out.jsonl"
    base = config_for(mock, events, out)
    await run(base.with_changes(ordered=True))
    kept = out.read_bytes().splitlines(keepends=True)[:100]
    out.write_bytes(b"".join(kept))  # as if the first run had stopped after 100 records
    sent_before = mock.state.delivery_requests

    summary = await run(base.with_changes(resume=True, workers=2, concurrency=8))
    records = read_records(out)
    assert sorted(r["seq"] for r in records) == list(range(294))  # type: ignore[type-var]
    assert summary.resumed == 100
    valid_in_kept = sum(1 for r in records[:100] if r["error_kind"] != "invalid")
    assert mock.state.delivery_requests - sent_before == 282 - valid_in_kept


def test_fork_only_when_this_process_has_one_thread() -> None:
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert start_method() == "spawn"  # a second thread: a fork could inherit its locks
    finally:
        stop.set()
        thread.join()


async def test_an_answer_that_comes_before_the_wait_is_not_lost() -> None:
    """The parent may answer `Refresh` before the asking task runs again."""
    answers = Answers()

    async def send_and_hear_the_answer_at_once() -> None:
        answers.give(Refreshed("Bearer a", True, Lease("Bearer b", 60.0)))

    with anyio.fail_after(2):
        got = await answers.ask("Bearer a", send_and_hear_the_answer_at_once)
    assert got == (True, Lease("Bearer b", 60.0))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz"], ids=["spans", "units"])
async def test_rate_is_kept_across_workers(
    write_jsonl: Callable[..., Path], tmp_path: Path, name: str
) -> None:
    # --rate R --workers 2 keeps R for the whole run, counted at the server. A parcel
    # of 256 records went to one worker, held to R/2: 450 events at --rate 150 took
    # 3.4 s (132/s), the first worker sending 256 at 75/s, the second 194.
    count, rate = 450, 150.0
    path = write_jsonl(events(count))
    if name.endswith(".gz"):  # read by the parent, sent as lines (Units), not as spans
        path = path.with_name(name)
        path.write_bytes(gzip.compress((tmp_path / "events.jsonl").read_bytes()))
    out = tmp_path / "out.jsonl"
    async with arrivals_counted() as (url, arrivals):
        config = config_for(url, path, out, workers=2, concurrency=16, rate=rate)
        summary = await run(config)
    assert summary.ok == count
    assert len(arrivals) == count
    whole_run = (count - 1) / (arrivals[-1] - arrivals[0])
    assert rate * 0.95 < whole_run < rate * 1.05


@pytest.mark.parametrize(
    ("rate", "workers", "expected"),
    [
        pytest.param(None, 2, BATCH, id="no-rate"),
        pytest.param(100.0, 2, 3, id="a-twentieth-of-a-second"),
        pytest.param(1.0, 4, 1, id="at-least-one"),
        pytest.param(1e6, 2, BATCH, id="at-most-a-batch"),
    ],
)
def test_parcel_size(rate: float | None, workers: int, expected: int) -> None:
    assert parcel_size(rate, workers) == expected
