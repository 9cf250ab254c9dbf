"""-o URL: records written as parts, joined into the one object at the end (issue 17, 2).

Fast, in-process: fsspec's `memory://` and `file://` stores. The part writer (rotation by
size and by time), the join (streamed, filtered, with its manifest) and whole runs
against the embedded mock, fresh and resumed from the parts a crash left.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import orjson
import pytest
from conftest import config_for, events, exactly_once

from engine import api
from engine.core.records import record_seq
from engine.errors import ConfigError
from engine.files.manifests import manifest_path
from engine.files.partjoin import Earlier, join, read_earlier
from engine.files.parts import PartLimits, PartSink, list_parts, parts_dir
from engine.mock import MockConfig, running_mock


def lines(n: int, width: int = 100) -> list[bytes]:
    """`n` record lines of about `width` bytes each."""
    out = []
    for seq in range(n):
        rec = {"seq": seq, "id": f"ev-{seq}", "source": f"in.jsonl:{seq + 1}", "status": 200,
               "ok": True, "error_kind": None, "pad": "x" * width}  # fmt: skip
        out.append(orjson.dumps(rec) + b"\n")
    return out


def memory_url() -> tuple[Any, str, str]:
    """A fresh memory:// output: (fs, its path, its URL)."""
    fs = fsspec.filesystem("memory")
    path = f"/t-{uuid.uuid4().hex}/out.jsonl"
    return fs, path, f"memory://{path}"


def object_lines(fs: Any, path: str) -> list[dict[str, Any]]:
    data: bytes = fs.cat_file(path)
    assert data == b"" or data.endswith(b"\n")
    return [orjson.loads(x) for x in data.splitlines()]


def test_parts_rotate_by_size_whole_lines_in_order() -> None:
    fs, path, url = memory_url()
    data = lines(50)
    sink = PartSink(fs, path, name=url, limits=PartLimits(size=1024, seconds=3600))
    for i in range(0, 50, 3):  # batches of three lines, as ticks hand them over
        sink.write(b"".join(data[i : i + 3]))
    sink.close()
    parts = list_parts(fs, path)
    assert len(parts) == len(sink.parts) > 5
    bodies = [fs.cat_file(p) for p in parts]
    assert all(len(b) <= 1024 and b.endswith(b"\n") for b in bodies)
    assert b"".join(bodies) == b"".join(data)  # every line once, in order
    assert [p.rows for p in sink.parts] == [b.count(b"\n") for b in bodies]


def test_a_line_longer_than_a_part_is_a_part_of_its_own() -> None:
    fs, path, url = memory_url()
    big, small = lines(1, width=3000)[0], lines(2)[1]
    sink = PartSink(fs, path, name=url, limits=PartLimits(size=1024, seconds=3600))
    sink.write(small + big + small)
    sink.close()
    assert [fs.cat_file(p) for p in list_parts(fs, path)] == [small, big, small]


def test_a_part_is_uploaded_on_the_timer_before_the_run_ends() -> None:
    fs, path, url = memory_url()
    sink = PartSink(fs, path, name=url, limits=PartLimits(size=1 << 20, seconds=0.1))
    sink.write(lines(1)[0])
    deadline = time.monotonic() + 10
    while not list_parts(fs, path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(list_parts(fs, path)) == 1, "the part must go up on the timer, not at close"
    sink.write(lines(2)[1])
    sink.close()
    assert len(list_parts(fs, path)) == 2


@pytest.mark.parametrize("store", ["memory", "file"])
def test_join_concatenates_writes_the_manifest_and_removes_the_parts(
    store: str, tmp_path: Path
) -> None:
    if store == "memory":
        fs, path, url = memory_url()
    else:
        fs, path = fsspec.filesystem("file"), str(tmp_path / "out.jsonl")
        url = f"file://{path}"
    data = lines(30)
    sink = PartSink(fs, path, name=url, limits=PartLimits(size=1024, seconds=3600),
                    finish=lambda s: join(s, Earlier()))  # fmt: skip
    sink.write(b"".join(data))
    sink.close(check=True)
    assert fs.cat_file(path) == b"".join(data)
    assert list_parts(fs, path) == []
    manifest = orjson.loads(fs.cat_file(manifest_path(path)))
    assert manifest["adbatch"] == "merged"
    assert manifest["rows"] == 30
    assert len(manifest["parts"]) > 1
    import hashlib

    assert manifest["sha256"] == hashlib.sha256(b"".join(data)).hexdigest()


def test_a_run_that_does_not_end_well_keeps_its_parts() -> None:
    fs, path, url = memory_url()
    sink = PartSink(fs, path, name=url, limits=PartLimits(size=1024, seconds=3600),
                    finish=lambda s: join(s, Earlier()))  # fmt: skip
    sink.write(b"".join(lines(30)))
    sink.close(check=False)
    assert not fs.exists(path)
    assert b"".join(fs.cat_file(p) for p in list_parts(fs, path)) == b"".join(lines(30))


def test_resume_index_reads_the_object_and_the_parts() -> None:
    fs, path, url = memory_url()
    data = lines(10)
    fs.pipe_file(path, b"".join(data[:4]))
    fs.pipe_file(f"{parts_dir(path)}/part-00003-aa.jsonl", b"".join(data[4:7]))
    fs.pipe_file(f"{parts_dir(path)}/part-00003-aa.jsonl.tmp-x", b"torn")
    earlier = read_earlier(fs, path, url)
    assert [p.rows for p in earlier.pieces] == [4, 3]
    assert all(earlier.index.holds(s) for s in range(7))
    assert not earlier.index.holds(7)
    fs.pipe_file(f"{parts_dir(path)}/part-00004-bb.jsonl", b"not a record\n")
    with pytest.raises(Exception, match="not an adbatch record"):
        read_earlier(fs, path, url)


@pytest.mark.anyio
@pytest.mark.parametrize("store", ["memory", "file"])
async def test_a_run_to_a_url_writes_each_event_once(
    store: str, tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    n = 60
    inputs = write_jsonl(events(n))
    if store == "memory":
        fs, path, url = memory_url()
    else:
        fs, path = fsspec.filesystem("file"), str(tmp_path / "o" / "out.jsonl")
        url = f"file://{path}"
    async with running_mock() as mock:
        config = config_for(mock, inputs, tmp_path / "x").with_changes(output=url, part_size=4096)
        summary = await api.run(config)
    assert summary.exit_code == 0
    exactly_once(object_lines(fs, path), n)
    manifest = orjson.loads(fs.cat_file(manifest_path(path)))
    assert manifest["rows"] == n
    assert len(manifest["parts"]) > 1
    assert list_parts(fs, path) == []


@pytest.mark.anyio
async def test_resume_from_parts_sends_only_what_they_lack(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    n = 50
    inputs = write_jsonl(events(n))
    fs, path, url = memory_url()
    async with running_mock() as mock:
        config = config_for(mock, inputs, tmp_path / "x").with_changes(output=url)
        await api.run(config)
    done = fs.cat_file(path).splitlines(keepends=True)
    # What a kill -9 leaves: two uploaded parts (one record in them transient), no
    # object; the events of the part being filled have no record anywhere.
    spoiled = orjson.loads(done[3])
    spoiled.update(status=503, ok=False, error_kind="http_503")
    done[3] = orjson.dumps(spoiled) + b"\n"
    fs.rm_file(path)
    fs.rm_file(manifest_path(path))
    fs.pipe_file(f"{parts_dir(path)}/part-00000-aa.jsonl", b"".join(done[:10]))
    fs.pipe_file(f"{parts_dir(path)}/part-00001-aa.jsonl", b"".join(done[10:20]))
    again = {spoiled["seq"]} | {record_seq(x) for x in done[20:]}
    async with running_mock(MockConfig(record_requests=True)) as mock:
        config = config_for(mock, inputs, tmp_path / "x").with_changes(output=url, resume=True)
        summary = await api.run(config)
        sent = sorted(int(dict(r.query)["retailer-visitor-id"][3:]) for r in mock.state.requests)
    assert summary.exit_code == 0
    seqs = {orjson.loads(x)["seq"]: orjson.loads(x)["id"] for x in done}
    assert sent == sorted(int(seqs[s][3:]) for s in again)  # exactly those, once each
    final = object_lines(fs, path)
    exactly_once(final, n)
    assert all(r["status"] == 200 for r in final)
    assert list_parts(fs, path) == []
    assert orjson.loads(fs.cat_file(manifest_path(path)))["joined"].startswith("copied")


def test_part_options_are_checked() -> None:
    from engine.config import Config

    with pytest.raises(ConfigError, match="--part-size"):
        Config(part_size=10).validated()
    with pytest.raises(ConfigError, match="--part-seconds"):
        Config(part_seconds=0).validated()
