"""`--backend ray` on a local Ray (`ray.init(num_cpus=2)`), against the real mock.

Skipped when the extra `adbatch[ray]` is not installed. One Ray session for the module.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from conftest import config_for, event_line, read_records
from oauth_client import oauth_tokens
from ray_session import local_ray, run_killing_a_sender, wait_for

import engine
from engine.cli.main import main
from engine.files.manifests import manifest_path, read_manifest, scan_part
from engine.mock import MockConfig, MockHandle, running_mock

ray = pytest.importorskip("ray")

# A Ray cluster starts in seconds: these run with the end-to-end tests (`-m slow`).
pytestmark = pytest.mark.slow

from engine.distributed.ray_backend import SENDER_NAME, run_ray  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    # Workers import the token factory below (tests/oauth_client.py) too.
    yield from local_ray(Path(__file__).parent)


def _write_events(path: Path, count: int, *, start: int = 0) -> None:
    # CRLF on some lines, a blank line, and no newline at the very end.
    numbers = range(start, start + count)
    lines = [event_line(n) + (b"\r\n" if n % 5 == 0 else b"\n") for n in numbers]
    lines.insert(count // 2, b"\n")
    path.write_bytes(b"".join(lines).rstrip(b"\r\n"))


@pytest.mark.anyio
async def test_every_event_exactly_once_one_token_and_the_global_rate(
    mock: MockHandle, tmp_path: Path
) -> None:
    big = tmp_path / "big.jsonl"
    _write_events(big, 500)
    packed = tmp_path / "more.jsonl.gz"
    packed.write_bytes(gzip.compress(b"".join(event_line(n) + b"\n" for n in range(500, 530))))
    csv_input = EXAMPLES / "pageviews.csv"
    out = tmp_path / "ads.jsonl"
    rate = 190.0
    config = config_for(mock, [big, packed, csv_input], out, concurrency=8, rate=rate)

    factory = functools.partial(oauth_tokens, mock.token_url)
    result: list[engine.Summary] = []

    async def go() -> None:
        result.append(await run_ray(config, shards=6, senders=2, token_factory=factory))

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        # Mid-run the token is revoked: every sender meets 401s, the cluster renews once.
        await wait_for(lambda: mock.state.delivery_requests >= 250)
        first_token = f"Bearer {next(iter(mock.state._tokens))}"
        mock.state.revoke_all_tokens()
    summary = result[0]

    # Every event exactly once in the merged output.
    rows = read_records(out)
    ids = Counter(r["id"] for r in rows)
    expected_ids = {f"ev-{n}" for n in range(530)} | {f"pv-{n:04d}" for n in range(1, 41)}
    assert set(ids) == expected_ids
    assert max(ids.values()) == 1
    assert len(rows) == 570
    assert all(r["ok"] for r in rows)  # a 401 is retried once with the new token
    assert mock.state.delivery_requests == 570 + mock.state.unauthorized
    # Records keep their true place in the input, also past a byte-range cut.
    sources = {r["id"]: r["source"] for r in rows}
    assert sources["ev-0"] == f"{big}:1"
    assert sources["ev-499"] == f"{big}:501"  # after the blank line
    assert sources["ev-500"] == f"{packed}:1"
    # One token request for the whole cluster per renewal: the first, and one after
    # the revocation; every call carried one of the two tokens.
    assert mock.state.token_requests == 2
    second_token = f"Bearer {next(iter(mock.state._tokens))}"
    assert {r.headers["Authorization"] for r in mock.state.requests} == {
        first_token,
        second_token,
    }
    refused = mock.state.unauthorized
    assert refused >= 1
    # No 1-second window more than 10% over the global rate (two actors, one bucket).
    times = sorted(r.received_at for r in mock.state.requests)
    busiest, j = 0, 0
    for i, t in enumerate(times):  # every 1-second window that starts at a call
        while j < len(times) and times[j] < t + 1.0:
            j += 1
        busiest = max(busiest, j - i)
    assert busiest <= rate * 1.10, busiest
    assert busiest >= rate * 0.5, busiest  # the limit was reached, not idled under
    # The summary merges every actor's counters and histograms.
    assert summary.events == 570
    assert summary.ok == 570
    assert summary.statuses == {"200": 570}
    assert summary.latency_ms["p50"] is not None
    manifest = read_manifest(manifest_path(str(out)))
    assert manifest is not None
    inputs = Counter(p["input"] for p in manifest["parts"])
    assert inputs[str(packed)] == inputs[str(csv_input)] == 1  # whole-file shards
    assert inputs[str(big)] >= 3  # byte ranges
    assert [p["shard"] for p in manifest["parts"]] == list(range(len(manifest["parts"])))
    assert sum(p["rows"] for p in manifest["parts"]) == 570
    assert manifest["sha256"] == scan_part(str(out)).sha256
    assert "ads.jsonl.parts" not in os.listdir(tmp_path)  # removed once merged


@pytest.mark.anyio
async def test_actor_killed_mid_shard_leaves_output_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    _write_events(path, 600)
    out = tmp_path / "ads.jsonl"
    async with running_mock(MockConfig(latency=0.01)) as mock:
        config = config_for(mock, [path], out, rate=300.0, concurrency=4)
        summary, sent = await run_killing_a_sender(config, mock)

    rows = read_records(out)
    ids = Counter(r["id"] for r in rows)
    assert set(ids) == {f"ev-{n}" for n in range(600)}
    assert max(ids.values()) == 1
    assert len(rows) == 600
    assert sent > 600  # the killed actor's shard was sent again, yet written once
    assert summary.stopped is None


@pytest.mark.anyio
async def test_rerun_skips_completed_shards(mock: MockHandle, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    _write_events(path, 400)
    out = tmp_path / "ads.jsonl"
    parts = Path(f"{out}.parts")
    config = config_for(mock, [path], out, rate=200.0, concurrency=4)
    result: list[engine.Summary] = []

    async def go() -> None:
        result.append(await run_ray(config, shards=8, senders=2, attempts=1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await wait_for(
            lambda: os.path.isdir(parts) and any(n.endswith(".json") for n in os.listdir(parts))
        )
        ray.kill(ray.get_actor(SENDER_NAME.format(0)))
    first = result[0]
    assert first.stopped is not None
    assert "run again" in first.stopped
    assert "ads.jsonl" not in os.listdir(tmp_path)  # nothing half-merged
    assert any(name.endswith(".json") for name in os.listdir(parts))  # complete shards
    first_sent = mock.state.delivery_requests

    second = await run_ray(config, shards=8, senders=2)
    assert second.stopped is None
    rerun_sent = mock.state.delivery_requests - first_sent
    assert rerun_sent < 400  # the complete shards were not sent again
    assert second.events == second.ok == 400  # the reused parts' counters too (their metas)
    rows = read_records(out)
    assert sorted(r["id"] for r in rows) == sorted(f"ev-{n}" for n in range(400))


def test_cli_backend_ray_with_mock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ads.jsonl"
    code = main(
        [
            "run",
            "--backend",
            "ray",
            "--mock",
            "--no-progress",
            str(EXAMPLES / "pageviews.jsonl"),
            "-o",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "40 events" in err
    assert len(read_records(out)) == 40


@pytest.mark.anyio
async def test_the_summary_counts_the_retries_of_every_shard(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    _write_events(path, 200)
    out = tmp_path / "ads.jsonl"
    async with running_mock(MockConfig(fail_503=0.2, seed=3)) as mock:
        config = config_for(mock, [path], out, concurrency=4, backoff_base=0.001)
        summary = await run_ray(config, shards=4, senders=2)
    rows = read_records(out)
    assert all(r["ok"] for r in rows)
    reasons = Counter(reason for r in rows for reason in r["retries"])
    assert reasons["http_503"] > 10
    assert summary.retries == dict(reasons)
