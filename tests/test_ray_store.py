"""`--backend ray` with nothing shared but an object store: inputs, parts, plan and output
on S3 (moto's server on 127.0.0.1, the `s3` fixture), a local Ray (`ray.init(num_cpus=2)`),
the real mock.

The senders are other processes: the store's address and keys reach them from the
driver (store.py's `storage_environ`), not from a shared disk or a shared environment
(this module's Ray starts before the fixture sets AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import gzip
import io
import shlex
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from conftest import config_for, event_line
from ray_session import local_ray, run_killing_a_sender, wait_for
from s3server import S3

import engine
from engine.cli.main import main
from engine.mock import MockConfig, MockHandle, running_mock

ray = pytest.importorskip("ray")
pytest.importorskip("s3fs")

# A Ray cluster and an S3 server start in seconds: these run with `-m slow`.
pytestmark = pytest.mark.slow

from engine.distributed.ray_backend import SENDER_NAME, run_ray  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    yield from local_ray()


def _jsonl(count: int, *, start: int = 0) -> bytes:
    # CRLF on some lines, a blank line, and no newline at the very end.
    numbers = range(start, start + count)
    lines = [event_line(n) + (b"\r\n" if n % 5 == 0 else b"\n") for n in numbers]
    lines.insert(count // 2, b"\n")
    return b"".join(lines).rstrip(b"\r\n")


def _records(s3: S3, url: str) -> list[dict[str, Any]]:
    data = s3.get(url)
    assert data.endswith(b"\n")
    return [orjson.loads(line) for line in data.splitlines()]


def _once(rows: list[dict[str, Any]], ids: set[str]) -> None:
    counts = Counter(r["id"] for r in rows)
    assert set(counts) == ids
    assert max(counts.values()) == 1
    assert len(rows) == len(ids)


@pytest.mark.anyio
async def test_jsonl_and_gzip_objects_in_one_object_out(mock: MockHandle, s3: S3) -> None:
    lake = s3.bucket("lake")
    plain = s3.put(f"{lake}/pv/a.jsonl", _jsonl(400))
    packed = s3.put(f"{lake}/pv/b.jsonl.gz", gzip.compress(_jsonl(30, start=400) + b"\n"))
    out = f"{lake}/out/ads.jsonl"
    config = config_for(mock, [plain, packed], out, concurrency=8)  # type: ignore[arg-type]

    summary = await run_ray(config, shards=6, senders=2)

    assert summary.stopped is None
    assert summary.events == summary.ok == 430
    rows = _records(s3, out)
    _once(rows, {f"ev-{n}" for n in range(430)})
    assert all(r["ok"] for r in rows)
    sources = {r["id"]: r["source"] for r in rows}
    assert sources["ev-0"] == f"{plain}:1"
    assert sources["ev-399"] == f"{plain}:401"  # after the blank line, past every cut
    assert sources["ev-400"] == f"{packed}:1"
    manifest = orjson.loads(s3.get(f"{out}.manifest.json"))
    inputs = Counter(p["input"] for p in manifest["parts"])
    assert inputs[packed] == 1  # a gzip object is one shard
    assert inputs[plain] >= 3  # byte ranges of the plain one
    assert [p["shard"] for p in manifest["parts"]] == list(range(len(manifest["parts"])))
    assert manifest["rows"] == 430
    assert manifest["bytes"] == len(s3.get(out))
    assert s3.keys(f"{lake}/out/") == ["out/ads.jsonl", "out/ads.jsonl.manifest.json"]
    assert not await anyio.Path("s3:").exists()  # nothing written to the driver's disk by that name


@pytest.mark.anyio
async def test_a_killed_actor_leaves_the_object_exactly_once(s3: S3) -> None:
    lake = s3.bucket("lake")
    source = s3.put(f"{lake}/pv/in.jsonl", _jsonl(600))
    out = f"{lake}/out/ads.jsonl"
    async with running_mock(MockConfig(latency=0.01)) as mock:
        config = config_for(mock, [source], out, rate=300.0, concurrency=4)  # type: ignore[arg-type]
        summary, sent = await run_killing_a_sender(config, mock)

    assert summary.stopped is None
    _once(_records(s3, out), {f"ev-{n}" for n in range(600)})
    assert sent > 600  # the killed actor's shard was sent again, yet written once


@pytest.mark.anyio
async def test_a_rerun_skips_the_shards_complete_on_the_store(mock: MockHandle, s3: S3) -> None:
    lake = s3.bucket("lake")
    source = s3.put(f"{lake}/pv/in.jsonl", _jsonl(400))
    out = f"{lake}/out/ads.jsonl"
    config = config_for(mock, [source], out, rate=200.0, concurrency=4)  # type: ignore[arg-type]
    result: list[engine.Summary] = []

    async def go() -> None:
        result.append(await run_ray(config, shards=8, senders=2, attempts=1))

    def metas() -> list[str]:
        keys = s3.keys(f"{lake}/out/ads.jsonl.parts/part-")
        return [k for k in keys if k.endswith(".json")]  # a complete shard's meta

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await wait_for(lambda: bool(metas()))
        ray.kill(ray.get_actor(SENDER_NAME.format(0)))
    first = result[0]
    assert first.stopped is not None
    assert "run again" in first.stopped
    assert "out/ads.jsonl" not in s3.keys(f"{lake}/out/")  # nothing half-joined
    assert "out/ads.jsonl.parts/plan.json" in s3.keys(f"{lake}/out/")
    first_sent = mock.state.delivery_requests

    second = await run_ray(config, shards=8, senders=2)
    assert second.stopped is None
    rerun_sent = mock.state.delivery_requests - first_sent
    assert rerun_sent < 400  # the complete shards were not sent again
    assert second.events == second.ok == 400  # the reused parts' counters too (their metas)
    _once(_records(s3, out), {f"ev-{n}" for n in range(400)})
    assert s3.keys(f"{lake}/out/ads.jsonl.parts/") == []


def _parquet(first: int, count: int) -> bytes:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [orjson.loads(event_line(n)) for n in range(first, first + count)]
    table = pa.Table.from_pylist(rows)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=25)
    return buffer.getvalue()


def _docs_command() -> list[str]:
    """docs/distributed.md's Ray batch job, continuation lines joined, after `adbatch`."""
    text = (ROOT / "docs" / "distributed.md").read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if "adbatch run --backend ray 's3://" in x)
    words = shlex.split(line)
    return words[words.index("adbatch") + 1 :]


def test_docs_parquet_on_s3_to_jsonl_on_s3(s3: S3, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/distributed.md's Ray batch job as written (on the mock): `s3://` Parquet in,
    `s3://` JSONL out."""
    lake = s3.bucket("lake")
    s3.put(f"{lake}/pv/2026-11-29/part-0.parquet", _parquet(0, 100))
    s3.put(f"{lake}/pv/2026-11-29/part-1.parquet", _parquet(100, 60))
    command = _docs_command()
    assert command[:3] == ["run", "--backend", "ray"]
    code = main([*command[:1], "--mock", "--no-progress", *command[1:]])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "160 events" in err
    out = "s3://lake/out/2026-11-29/ads.jsonl"
    rows = _records(s3, out)
    _once(rows, {f"ev-{n}" for n in range(160)})
    sources = {r["id"]: r["source"] for r in rows}
    assert sources["ev-0"] == "s3://lake/pv/2026-11-29/part-0.parquet:1"
    assert sources["ev-159"] == "s3://lake/pv/2026-11-29/part-1.parquet:60"
    manifest = orjson.loads(s3.get(f"{out}.manifest.json"))
    assert len(manifest["parts"]) >= 2  # shards of whole row groups
    assert all(len(p["row_groups"]) == 2 for p in manifest["parts"])


def test_a_store_that_refuses_is_one_line(s3: S3, capsys: pytest.CaptureFixture[str]) -> None:
    lake = s3.bucket("lake")
    s3.put(f"{lake}/pv/a.jsonl", _jsonl(20))
    code = main(
        ["run", "--backend", "ray", "--mock", "--no-progress", f"{lake}/pv/a.jsonl",
         "-o", "s3://no-such-bucket/out/ads.jsonl"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "the bucket no-such-bucket does not exist" in err  # storage.check_bucket's line
    assert "Traceback" not in err
    assert "testing" not in err  # the fixture's secret key
