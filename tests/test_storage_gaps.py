"""Object storage, the gaps of the first pass (issue 17): `--shard I/N -o URL` writes its
manifest beside the object, `adbatch merge` reads URL parts (globs too) and writes a URL,
and a join that fails never leaves an incomplete multipart upload on S3.

Fast tests run in-process on fsspec's `memory://` store; those that need S3's own rules
(multipart uploads) run against moto on 127.0.0.1 (the `s3` fixture), marked slow.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import orjson
import pytest
from conftest import config_for, exactly_once
from test_parts import events, lines

from engine import api
from engine.core.events import Event, ReadCounts
from engine.distributed.merge import merge_outputs
from engine.files import partjoin, servermerge
from engine.files.accesslog import read_replay_items
from engine.files.manifests import PartInfo, manifest_path, read_manifest
from engine.files.partjoin import Earlier, join
from engine.files.parts import PartLimits, PartSink
from engine.files.position import input_size
from engine.files.storage import expand_inputs, filesystem, writing
from engine.mock import running_mock


def memory_dir() -> str:
    return f"memory:///gaps-{uuid.uuid4().hex}"


def records_at(url: str) -> list[dict[str, Any]]:
    fs, path = filesystem(url)
    return [orjson.loads(x) for x in fs.cat_file(path).splitlines()]


@pytest.mark.anyio
async def test_shards_to_urls_leave_manifests_and_merge_reads_them_by_glob(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    n = 40
    inputs = write_jsonl(events(n))
    base = memory_dir()
    async with running_mock() as mock:
        for i in range(3):
            config = config_for(mock, inputs, tmp_path / "x").with_changes(
                output=f"{base}/shard-{i}.jsonl", shard=(i, 3), part_size=2048
            )
            assert (await api.run(config)).exit_code == 0
    manifest = read_manifest(manifest_path(f"{base}/shard-1.jsonl"))
    assert manifest is not None
    assert (manifest["shard"], manifest["records"]) == ([1, 3], n)
    assert manifest["rows"] == len(records_at(f"{base}/shard-1.jsonl"))

    report = merge_outputs([f"{base}/shard-*.jsonl"], f"{base}/all.jsonl")
    assert report.exactly_once, report.line()
    assert report.records == n
    merged = records_at(f"{base}/all.jsonl")
    exactly_once(merged, n)
    written = read_manifest(manifest_path(f"{base}/all.jsonl"))
    assert written is not None
    fs, path = filesystem(f"{base}/all.jsonl")
    import hashlib

    assert written["sha256"] == hashlib.sha256(fs.cat_file(path)).hexdigest()
    assert [p["part"].rpartition("/")[2] for p in written["parts"]] == [
        "shard-0.jsonl", "shard-1.jsonl", "shard-2.jsonl"
    ]  # fmt: skip


def test_merge_sees_a_url_part_changed_after_its_shard_finished(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    base = memory_dir()
    fs, _ = filesystem(base + "/x")
    body = b"".join(lines(4))
    for i, part in enumerate((body[: len(body) // 2], body[len(body) // 2 :])):
        name = f"{base}/s{i}.jsonl"
        _, path = filesystem(name)
        fs.pipe_file(path, part)
        rows = part.count(b"\n")
        fs.pipe_file(manifest_path(path), orjson.dumps(
            {"adbatch": "shard", "shard": [i, 2], "by": "position", "inputs": [],
             "records": 4, "rows": rows, "sha256": "0" * 64}))  # fmt: skip
    report = merge_outputs([f"{base}/s0.jsonl", f"{base}/s1.jsonl"], str(tmp_path / "m.jsonl"))
    assert not report.exactly_once
    assert "changed after its shard finished" in report.line()


def fail_midway(fs: Any, path: str, data: bytes, check: Callable[[], None] = lambda: None) -> None:
    """Write `data` to `path` with `writing`, then fail as a copy whose source went away."""
    with writing(fs, path) as out:
        out.write(data)
        check()
        raise RuntimeError("the part being copied went away")


def test_a_write_that_fails_leaves_no_object() -> None:
    fs = fsspec.filesystem("memory")
    path = f"/gaps-{uuid.uuid4().hex}/out.jsonl"
    with pytest.raises(RuntimeError):
        fail_midway(fs, path, b"half\n")
    assert not fs.exists(path)


def uploads(s3: Any, bucket: str) -> list[str]:
    found = s3.client().list_multipart_uploads(Bucket=bucket)
    return [u["Key"] for u in found.get("Uploads", [])]


@pytest.mark.slow
def test_a_failed_server_side_merge_is_aborted_then_streamed(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts under S3's 5 MiB least part: completing the multipart upload fails
    (EntityTooSmall); the upload is aborted and the join streams the parts instead."""
    url = f"{s3.bucket('gaps')}/out.jsonl"
    fs, path = filesystem(url)
    data = lines(30)
    fs.pipe_file(f"{path}.a", b"".join(data[:10]))
    fs.pipe_file(f"{path}.b", b"".join(data[10:]))
    with pytest.raises(Exception, match="smaller than the minimum"):
        servermerge.merge(fs, path, [f"{path}.a", f"{path}.b"])
    assert uploads(s3, "gaps") == []

    monkeypatch.setattr(partjoin, "MIN_MERGE_PART", 1)  # try the server side first
    sink = PartSink(fs, path, name=url, limits=PartLimits(size=1000, seconds=3600),
                    finish=lambda sink: join(sink, Earlier()))  # fmt: skip
    for line in data:
        sink.write(line)
    sink.close(check=True)
    assert len(sink.parts) > 2
    assert s3.get(url) == b"".join(data)
    assert orjson.loads(s3.get(manifest_path(url)))["joined"] == "copied"
    assert uploads(s3, "gaps") == []


@pytest.mark.slow
def test_a_streamed_join_that_fails_aborts_its_upload(s3: Any) -> None:
    url = f"{s3.bucket('gaps2')}/out.jsonl"
    fs, path = filesystem(url)

    def under_way() -> None:  # past one block: a multipart upload is open
        assert uploads(s3, "gaps2") == ["out.jsonl"]

    with pytest.raises(RuntimeError):
        fail_midway(fs, path, b"x" * (9 << 20), under_way)
    assert uploads(s3, "gaps2") == []
    assert s3.keys("s3://gaps2/") == []


def test_pieces_of_unequal_sizes_are_not_merged_server_side() -> None:
    fs = fsspec.filesystem("memory")
    small = PartInfo("/a", 1, "", 10)
    big = PartInfo("/b", 1, "", 6 << 20)
    assert partjoin._mergeable(fs, [big, small]) == servermerge.can_merge(fs)
    assert not partjoin._mergeable(fs, [small, big])


ACCESS_LOG = (Path(__file__).resolve().parent.parent / "examples" / "access.log").read_bytes()


@pytest.mark.parametrize("name", ["access.log", "access.log.gz", "requests"])
def test_replay_reads_an_access_log_at_a_url(name: str) -> None:
    """By its name, or (`requests`) by its first line, as for a file."""
    import gzip

    url = f"{memory_dir()}/{name}"
    fs, path = filesystem(url)
    fs.pipe_file(path, gzip.compress(ACCESS_LOG) if name.endswith(".gz") else ACCESS_LOG)
    counts = ReadCounts()
    items = list(read_replay_items([url], counts=counts))
    expected = list(read_replay_items([str(Path(__file__).parent.parent / "examples/access.log")]))
    assert len(items) == len(expected) > 0
    assert all(isinstance(i, Event) for i in items)
    assert items[0].source == f"{url}:1"  # type: ignore[union-attr]
    got = [(i.params, i.headers, i.timestamp) for i in items]  # type: ignore[union-attr]
    assert got == [(i.params, i.headers, i.timestamp) for i in expected]  # type: ignore[union-attr]
    assert counts.bytes_read == fs.info(path)["size"]


def test_the_progress_total_of_url_inputs_is_their_listed_size() -> None:
    base = memory_dir()
    fs, _ = filesystem(base + "/x")
    for i, size in enumerate((100, 250)):
        fs.pipe_file(filesystem(f"{base}/in-{i}.jsonl")[1], b"x" * size)
    urls = expand_inputs((f"{base}/in-*.jsonl",))
    assert input_size(urls) == 350
    assert input_size((*urls, f"{base}/never-listed.jsonl")) is None
