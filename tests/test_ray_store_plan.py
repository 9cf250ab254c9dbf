"""The Ray backend's plan, parts and join on an object store, without Ray or a server:
fsspec's in-process `memory://` store (the same code paths as `s3://`, which
tests/test_ray_store.py runs end to end against moto).
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import pytest
from conftest import get_object as _get
from conftest import padded_jsonl as _jsonl
from conftest import put_object as _put

import engine
from engine.distributed.join import join_parts
from engine.distributed.plan import plan_shards, prepare
from engine.distributed.store import StoreParts, parts_at, storage_environ
from engine.errors import ConfigError
from engine.files.storage import filesystem

pytest.importorskip("fsspec")


@pytest.fixture
def root(memory_root: str) -> str:
    return memory_root


def _config(*inputs: str, output: str) -> engine.Config:
    return engine.Config(inputs=inputs, output=output, dry_run=True)


def test_objects_are_cut_at_line_starts_and_a_gzip_object_stays_whole(root: str) -> None:
    data = _jsonl(300)
    plain = _put(f"{root}/pv/a.jsonl", data)
    packed = _put(f"{root}/pv/b.jsonl.gz", gzip.compress(_jsonl(10)))
    tasks = plan_shards(_config(plain, packed, output=f"{root}/out.jsonl"), 6)
    ranges = [t for t in tasks if t.path == plain]
    assert len(ranges) >= 4
    assert b"".join(data[t.start : t.end] for t in ranges) == data
    assert all(t.first_line == data[: t.start].count(b"\n") + 1 for t in ranges)
    assert all(data[t.start - 1 : t.start] == b"\n" for t in ranges if t.start)
    assert [(t.path, t.whole) for t in tasks if t.path != plain] == [(packed, True)]


def _complete(parts: StoreParts, index: int, body: bytes) -> None:
    """What a sender does when its shard is done: the part, then its meta."""
    scratch = parts.scratch(index)
    with open(scratch, "wb") as f:
        f.write(body)
    parts.commit(scratch, index, {"index": index, "stats": {}})


def test_a_rerun_skips_parts_complete_on_the_store(root: str) -> None:
    source = _put(f"{root}/pv/a.jsonl", _jsonl(300))
    out = f"{root}/out/ads.jsonl"
    config = _config(source, output=out)
    parts = parts_at(out, (), "/nowhere")
    assert isinstance(parts, StoreParts)
    plan, todo = prepare(config, parts, 2, 4)
    assert todo == plan
    assert len(plan) >= 3
    _complete(parts, 0, b'{"seq":0}\n')

    again, todo = prepare(config, parts, 2, 9)  # another shard count: the plan stands
    assert again == plan
    assert [t.index for t in todo] == [t.index for t in plan[1:]]

    _put(f"{out}.parts/part-00000.jsonl", b'{"seq":0}\n{"seq":1}\n')  # not the one its meta names
    assert prepare(config, parts, 2, 4)[1] == plan

    _put(source, _jsonl(301))  # other inputs: a fresh plan, the old parts gone
    fresh, todo = prepare(config, parts, 2, 4)
    assert todo == fresh
    fs, path = filesystem(f"{out}.parts")
    names = sorted(name.rpartition("/")[2] for name in fs.ls(path, detail=False))
    assert names == ["options.json", "plan.json"]


def test_a_rerun_with_other_record_options_plans_afresh(root: str) -> None:
    source = _put(f"{root}/pv/a.jsonl", _jsonl(300))
    out = f"{root}/out/ads.jsonl"
    parts = parts_at(out, (), "/nowhere")
    capped = _config(source, output=out).with_changes(max_response_bytes=1024)
    plan, _ = prepare(capped, parts, 2, 4)
    _complete(parts, 0, b'{"seq":0}\n')
    assert prepare(capped, parts, 2, 4)[1] == plan[1:]  # same options: part 0 is kept

    plain = _config(source, output=out)  # records of another shape: part 0 is not reused
    fresh, todo = prepare(plain, parts, 2, 4)
    assert todo == fresh
    assert parts.completed(0) is None

    # A part in the order its calls ended is no piece of an --ordered output.
    _complete(parts, 0, b'{"seq":0}\n')
    assert prepare(plain, parts, 2, 4)[1] == fresh[1:]
    fresh, todo = prepare(plain.with_changes(ordered=True), parts, 2, 4)
    assert todo == fresh
    assert parts.completed(0) is None


def test_the_summary_counts_the_parts_an_earlier_run_completed(root: str) -> None:
    from engine.core.stats import RunStats
    from engine.distributed.merge import add_stats, stats_to_dict
    from engine.distributed.ray_backend import _kept_stats

    source = _put(f"{root}/pv/a.jsonl", _jsonl(300))
    out = f"{root}/out/ads.jsonl"
    parts = parts_at(out, (), "/nowhere")
    assert isinstance(parts, StoreParts)
    plan, _ = prepare(_config(source, output=out), parts, 2, 3)
    one = RunStats()
    one.ok = 5
    scratch = parts.scratch(0)
    Path(scratch).write_bytes(b'{"seq":0}\n')
    parts.commit(scratch, 0, {"index": 0, "stats": stats_to_dict(one)})
    _, todo = prepare(_config(source, output=out), parts, 2, 3)  # the rerun

    now = RunStats()
    now.ok = 7
    from engine.distributed.actors import ShardDone

    done = [ShardDone(t.index, 1, "", stats_to_dict(now), None) for t in todo]
    total = _kept_stats(parts, plan, todo, done, False)
    expected = RunStats()
    for data in [stats_to_dict(one)] + [d.stats for d in done]:
        add_stats(expected, data)
    assert total.ok == expected.ok == 5 + 7 * len(todo)
    assert _kept_stats(parts, plan, todo, [], True).ok == 5  # after a signal: the parts


def test_a_prefix_holding_the_output_leaves_out_what_the_run_writes(root: str) -> None:
    from engine.errors import InputError
    from engine.files.storage import expand_inputs

    source = _put(f"{root}/t/a.jsonl", _jsonl(3))
    out = f"{root}/t/ads.jsonl"
    for own in (
        out,
        f"{out}.manifest.json",
        f"{out}.parts/plan.json",
        f"{out}.parts/part-00000.jsonl",
    ):
        _put(own, b"{}\n")
    for pattern in (f"{root}/t/", f"{root}/t/*.json*"):
        found = expand_inputs((pattern,), output=out)
        assert [_get(url) for url in found] == [_get(source)]  # memory:/// names it a.jsonl
        assert [url.rpartition("/")[2] for url in found] == ["a.jsonl"]
    assert len(expand_inputs((f"{root}/t/",))) == 5  # no output named: all of them
    with pytest.raises(InputError, match="holds only the output"):
        expand_inputs((f"{root}/t/ads*",), output=out)


def test_the_parts_are_joined_into_one_object_with_its_manifest(root: str) -> None:
    source = _put(f"{root}/pv/a.jsonl", _jsonl(300))
    out = f"{root}/out/ads.jsonl"
    parts = parts_at(out, (), "/nowhere")
    assert isinstance(parts, StoreParts)
    plan, _ = prepare(_config(source, output=out), parts, 2, 3)
    bodies = [b"".join(b'{"seq":%d,"shard":%d}\n' % (n, t.index) for n in range(5)) for t in plan]
    for task, body in zip(plan, bodies, strict=True):
        _complete(parts, task.index, body)

    assert join_parts(plan, parts, out, ()) == 5 * len(plan)
    assert _get(out) == b"".join(bodies)
    manifest = orjson.loads(_get(f"{out}.manifest.json"))
    assert [p["shard"] for p in manifest["parts"]] == [t.index for t in plan]
    assert [p["bytes"] for p in manifest["parts"]] == [[t.start, t.end] for t in plan]
    assert manifest["rows"] == 5 * len(plan)
    assert manifest["bytes"] == len(b"".join(bodies))
    assert not parts.exists()  # removed once joined


def test_a_prefix_it_did_not_make_is_refused(root: str) -> None:
    source = _put(f"{root}/pv/a.jsonl", _jsonl(10))
    out = f"{root}/out/ads.jsonl"
    precious = _put(f"{out}.parts/precious.txt", b"keep me")
    with pytest.raises(ConfigError, match="holds no adbatch plan"):
        prepare(_config(source, output=out), parts_at(out, (), "/nowhere"), 2, 4)
    assert _get(precious) == b"keep me"


def test_the_storage_environment_travels_only_with_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_PROFILE", "mine")  # a name in the driver's files: stays there
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    assert storage_environ(["in.jsonl", "out.jsonl"]) == {}
    sent = storage_environ(["s3://lake/pv/a.jsonl", "out.jsonl"])
    assert sent["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert sent["AWS_ACCESS_KEY_ID"] == "id"
    assert "AWS_PROFILE" not in sent


def test_a_dead_senders_scratch_file_is_swept_by_the_next_one(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this node's temporary dir
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, check=True, text=True)  # fmt: skip
    dead = tmp_path / f"adbatch-{int(gone.stdout)}-part-00003.jsonl.tmp-abc_12"
    live = tmp_path / f"adbatch-{os.getpid()}-part-00004.jsonl.tmp-def_34"
    other = tmp_path / "adbatch-notes.txt"
    for path in (dead, live, other):
        path.write_bytes(b"x")
    parts = parts_at(f"{root}/out/ads.jsonl", (), "/nowhere")
    scratch = Path(parts.scratch(5))
    assert scratch.parent == tmp_path
    assert scratch.name.startswith(f"adbatch-{os.getpid()}-part-00005.jsonl.tmp-")
    assert not dead.exists()
    assert live.exists()
    assert other.exists()


class _Metas:
    """The complete parts' metas of a plan, as a Parts implementation reports them."""

    def __init__(self, metas: dict[int, dict[str, object]]) -> None:
        self.metas = metas

    def completed(self, index: int) -> dict[str, object] | None:
        return self.metas.get(index)


@pytest.mark.parametrize("cut", [False, True], ids=["ended", "signalled"])
def test_the_summary_counts_each_shard_once(cut: bool) -> None:
    """Shard 0 ran now (its result and its new meta both exist), shard 1 was complete
    from an earlier run, shard 2 did not finish: 10 + 20 events, never shard 0 twice
    (a run that ended as SIGTERM came counted 4000 events for 2000)."""
    from engine.core.stats import RunStats
    from engine.distributed.actors import ShardDone
    from engine.distributed.merge import stats_to_dict
    from engine.distributed.plan import ShardTask
    from engine.distributed.ray_backend import _kept_stats

    def counted(events: int) -> dict[str, object]:
        stats = RunStats()
        stats.events = events
        return stats_to_dict(stats)

    plan = [ShardTask(i, "in.jsonl", 0, 10, 1, False) for i in range(3)]
    metas = _Metas({0: {"stats": counted(10)}, 1: {"stats": counted(20)}})
    done = [ShardDone(0, 10, "sha", counted(10), None)]
    todo = [plan[0], plan[2]]
    stats = _kept_stats(metas, plan, todo, done, cut)  # type: ignore[arg-type]
    assert stats.events == 30
