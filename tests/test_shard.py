"""Static shards (`--shard I/N`), byte ranges cut at line boundaries, `adbatch merge`."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import fields
from pathlib import Path

import orjson
import pytest
from conftest import config_for, event_line, read_records
from hypothesis import given
from hypothesis import strategies as st

import engine
from engine.cli.main import main
from engine.core.events import Invalid
from engine.core.records import invalid, jsonl
from engine.core.shard import (
    ByteRange,
    ShardSpec,
    bytes_reader,
    cut_ranges,
    parse_shard,
    shard_of,
)
from engine.core.stats import RunStats, summarize
from engine.distributed.merge import add_stats, merge_outputs, stats_to_dict
from engine.errors import ConfigError
from engine.files.manifests import manifest_path, read_manifest
from engine.files.ranges import read_range_items
from engine.files.sources import read_items
from engine.mock import MockHandle


#: 40 events; CRLF endings, blank lines, an invalid line, and no newline at the end.
def _mixed_input() -> bytes:
    lines = []
    for n in range(40):
        line = event_line(n)
        if n % 3 == 0:
            lines.append(line + b"\r\n")
        else:
            lines.append(line + b"\n")
        if n == 7:
            lines.append(b"\n")  # blank: skipped, not a record
        if n == 20:
            lines.append(b"{not json\n")
    data = b"".join(lines)
    return data.rstrip(b"\r\n")  # the last line has no newline


# -- parsing and membership ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0/1", (0, 1), id="single"),
        pytest.param("3/4", (3, 4), id="last"),
        pytest.param(" 2/8 ", (2, 8), id="spaces"),
    ],
)
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("4/4", "within 0..3", id="index-too-big"),
        pytest.param("-1/4", "within 0..3", id="negative"),
        pytest.param("1/0", "at least 1", id="zero-shards"),
        pytest.param("1", "expected I/N", id="no-slash"),
        pytest.param("a/b", "expected I/N", id="not-numbers"),
        pytest.param("$JOB_COMPLETION_INDEX/4", "expected I/N", id="unexpanded-env"),
    ],
)
def test_parse_shard_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_shard(text)


@pytest.mark.parametrize(
    ("seq", "event_id", "by", "expected"),
    [
        pytest.param(0, "x", "position", 0, id="position-0"),
        pytest.param(5, "x", "position", 1, id="position-5"),
        pytest.param(5, None, "id", 1, id="id-missing-falls-back-to-position"),
        # blake2b-64("ev-1") % 4, fixed so a change of hash breaks resharding loudly
        pytest.param(0, "ev-1", "id", shard_of(99, "ev-1", 4, "id"), id="id-ignores-position"),
    ],
)
def test_shard_of(seq: int, event_id: str | None, by: str, expected: int) -> None:
    assert shard_of(seq, event_id, 4, by) == expected  # type: ignore[arg-type]


def test_shard_by_id_is_stable_and_spread() -> None:
    counts = [0, 0, 0, 0]
    for n in range(4000):
        counts[shard_of(n, f"ev-{n}", 4, "id")] += 1
    assert all(800 < c < 1200 for c in counts), counts
    assert ShardSpec(2, 4, "id").owns(0, "ev-2") == (shard_of(0, "ev-2", 4, "id") == 2)


# -- byte ranges --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "parts", "expected"),
    [
        pytest.param(b"", 3, [], id="empty"),
        pytest.param(b"aa\nbb\n", 1, [ByteRange(0, 6, 1)], id="one-part"),
        pytest.param(b"aa\nbb\n", 2, [ByteRange(0, 3, 1), ByteRange(3, 6, 2)], id="on-boundary"),
        pytest.param(
            b"a\nbbbbbb\nc\n", 2, [ByteRange(0, 9, 1), ByteRange(9, 11, 3)], id="line-spans-cut"
        ),
        pytest.param(
            b"a\r\nb\r\nc\r\nd\r\n",
            2,
            [ByteRange(0, 6, 1), ByteRange(6, 12, 3)],
            id="crlf-cut-between-cr-and-lf",
        ),
        pytest.param(
            b"aa\nbb\ncc",
            3,
            [ByteRange(0, 3, 1), ByteRange(3, 6, 2), ByteRange(6, 8, 3)],
            id="no-final-newline",
        ),
        pytest.param(
            b"x" * 50 + b"\ny\n",
            4,
            [ByteRange(0, 51, 1), ByteRange(51, 53, 2)],
            id="long-line-swallows-cuts",
        ),
        pytest.param(b"x" * 50, 4, [ByteRange(0, 50, 1)], id="one-line-no-newline"),
        pytest.param(b"\n\n\n\n", 2, [ByteRange(0, 2, 1), ByteRange(2, 4, 3)], id="blank-lines"),
    ],
)
def test_cut_ranges(data: bytes, parts: int, expected: list[ByteRange]) -> None:
    assert cut_ranges(len(data), parts, bytes_reader(data)) == expected


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 8, 13, 64, 1000])
def test_cut_ranges_tile_the_file_at_line_starts(parts: int) -> None:
    data = _mixed_input()
    ranges = cut_ranges(len(data), parts, bytes_reader(data))
    assert b"".join(data[r.start : r.end] for r in ranges) == data
    for r in ranges:
        assert r.start < r.end
        assert r.start == 0 or data[r.start - 1 : r.start] == b"\n"
        assert r.first_line == data[: r.start].count(b"\n") + 1
    assert len(ranges) <= parts


@pytest.mark.parametrize("parts", [2, 3, 7, 40])
def test_range_reads_equal_one_whole_read(tmp_path: Path, parts: int) -> None:
    """Reading every range gives the records of one whole-file read: same lines, same sources."""
    data = _mixed_input()
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    whole = list(read_items([str(path)]))
    ranges = cut_ranges(len(data), parts, bytes_reader(data))
    pieces = [
        list(read_range_items(str(path), r.start, r.end, first_line=r.first_line)) for r in ranges
    ]
    joined = [item for piece in pieces for item in piece]

    def strip(item: engine.Event | engine.Invalid) -> tuple[str, str | None, str]:
        return item.source, item.id, type(item).__name__

    assert [strip(i) for i in joined] == [strip(i) for i in whole]
    assert len(whole) == 41  # 40 events + the invalid line; the blank line is no record
    for piece in pieces:  # seq counts from 0 within a range
        assert [i.seq for i in piece] == list(range(len(piece)))
    assert whole[-1].id == "ev-39"  # the last line, without newline, is read


# -- --shard end to end -------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("by", ["position", "id"])
async def test_two_shards_are_disjoint_and_cover_the_input(
    mock: MockHandle, tmp_path: Path, by: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(_mixed_input())
    outs = [tmp_path / f"part-{i}.jsonl" for i in range(2)]
    for i, out in enumerate(outs):
        summary = await engine.run(
            config_for(mock, path, out, concurrency=8, shard=(i, 2), shard_by=by)
        )
        assert summary.events == len(read_records(out))
    parts = [read_records(out) for out in outs]
    seqs = [{r["seq"] for r in part} for part in parts]
    assert seqs[0]
    assert seqs[1]
    assert not seqs[0] & seqs[1]
    assert seqs[0] | seqs[1] == set(range(41))
    ids = [r["id"] for part in parts for r in part if r["id"] is not None]
    assert sorted(ids) == sorted(f"ev-{n}" for n in range(40))
    assert mock.state.delivery_requests == 40  # the invalid line is answered, not sent
    if by == "position":
        assert all(r["seq"] % 2 == i for i, part in enumerate(parts) for r in part)
    manifest = read_manifest(manifest_path(str(outs[1])))
    assert manifest is not None
    assert (manifest["shard"], manifest["records"], manifest["rows"]) == ([1, 2], 41, len(parts[1]))

    merged = tmp_path / "merged.jsonl"
    report = merge_outputs([str(outs[1]), str(outs[0])], str(merged))
    assert report.exactly_once, report.problems
    assert report.records == 41
    assert sorted(r["seq"] for r in read_records(merged)) == list(range(41))


@pytest.mark.anyio
async def test_an_ordered_shard_writes_its_records_in_input_order(
    mock: MockHandle, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(event_line(n) + b"\n" for n in range(60)))
    out = tmp_path / "part-1.jsonl"
    await engine.run(config_for(mock, path, out, concurrency=8, shard=(1, 3), ordered=True))
    assert [r["seq"] for r in read_records(out)] == list(range(1, 60, 3))


@pytest.mark.anyio
async def test_merge_names_a_missing_shard_and_duplicates(
    mock: MockHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(event_line(n) + b"\n" for n in range(9)))
    outs = [tmp_path / f"part-{i}.jsonl" for i in range(3)]
    for i, out in enumerate(outs):
        await engine.run(config_for(mock, path, out, concurrency=8, shard=(i, 3)))
    merged = tmp_path / "merged.jsonl"

    assert main(["merge", str(outs[0]), str(outs[2]), "-o", str(merged)]) == 1
    err = capsys.readouterr().err
    assert "shard 1 of 3 not given" in err
    assert "3 records missing (seq 1, 4, 7)" in err

    assert main(["merge", *map(str, outs), "-o", str(merged)]) == 0
    assert "every record of 9 exactly once" in capsys.readouterr().err

    # Without manifests, a part given twice shows as duplicates and is copied once.
    for out in outs:
        os.remove(manifest_path(str(out)))
    assert main(["merge", *map(str, outs), str(outs[0]), "-o", str(merged)]) == 1
    assert "3 records given more than once (seq 0, 3, 6" in capsys.readouterr().err
    assert sorted(r["seq"] for r in read_records(merged)) == list(range(9))


@pytest.mark.anyio
async def test_merge_refuses_shards_of_different_inputs(mock: MockHandle, tmp_path: Path) -> None:
    """Shard 0/2 of a.jsonl and shard 1/2 of b.jsonl, as many records each: half of each
    input unanswered, not 'every record exactly once'. Inputs are told apart by file
    name (each shard may have run where the input sits at another path)."""
    outs = [tmp_path / f"part-{i}.jsonl" for i in range(2)]
    for i, name in enumerate(("a.jsonl", "b.jsonl")):
        path = tmp_path / name
        path.write_bytes(b"".join(event_line(n) + b"\n" for n in range(6)))
        await engine.run(config_for(mock, path, outs[i], concurrency=8, shard=(i, 2)))
    report = merge_outputs([str(o) for o in outs], str(tmp_path / "m.jsonl"))
    assert not report.exactly_once
    assert "the parts come from different shardings or inputs" in report.line()
    elsewhere = tmp_path / "elsewhere"  # the same file name at another path: accepted
    elsewhere.mkdir()
    (elsewhere / "a.jsonl").write_bytes((tmp_path / "a.jsonl").read_bytes())
    await engine.run(config_for(mock, elsewhere / "a.jsonl", outs[1], concurrency=8, shard=(1, 2)))
    assert merge_outputs([str(o) for o in outs], str(tmp_path / "m.jsonl")).exactly_once


@pytest.mark.anyio
async def test_merge_catches_a_part_changed_or_torn(mock: MockHandle, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(event_line(n) + b"\n" for n in range(6)))
    outs = [tmp_path / f"part-{i}.jsonl" for i in range(2)]
    for i, out in enumerate(outs):
        await engine.run(config_for(mock, path, out, concurrency=8, shard=(i, 2)))
    data = outs[1].read_bytes()
    outs[1].write_bytes(data[: len(data) - 10])  # a crash mid-write: torn last line
    report = merge_outputs([str(o) for o in outs], str(tmp_path / "m.jsonl"))
    assert not report.exactly_once
    text = report.line()
    assert "changed after its shard finished" in text
    assert "ends with a torn line" in text
    assert "1 records missing (seq 5)" in text


def test_merge_reads_parts_through_the_record_parser(tmp_path: Path) -> None:
    records = [
        invalid(Invalid(seq, f"in.jsonl:{seq + 1}", f'ev "{seq}"', "bad")) for seq in range(4)
    ]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_bytes(jsonl(records[:2]) + b'{"seq":2}\n' + b'{"ok":true}\n')
    # A record whose fields come in another order is still a record.
    moved = orjson.dumps({"source": "in.jsonl:3", "id": None, "seq": 2})
    second.write_bytes(moved + b"\n" + jsonl(records[3:]) + jsonl(records[:1]))
    merged = tmp_path / "m.jsonl"
    report = merge_outputs([str(first), str(second)], str(merged))
    assert report.problems == [
        "2 lines are not adbatch records (not merged)",
        "1 records given more than once (seq 0...; kept the first)",
    ]
    assert [r["seq"] for r in read_records(merged)] == [0, 1, 2, 3]
    assert read_manifest(manifest_path(str(merged)))["parts"] == [  # type: ignore[index]
        {"part": str(first), "rows": 2},
        {"part": str(second), "rows": 2},
    ]


def test_shard_stats_travel_whole_through_json() -> None:
    """Every counter of RunStats survives stats_to_dict -> JSON -> add_stats (the Ray
    summary once lost the retry counts on the way)."""
    shard = RunStats(events=6, ok=2, failed=2, invalid=1, blank_lines=3, unauthorized=1)
    shard.statuses.update({200: 2, 401: 1, 503: 1})
    shard.errors.update({"http_503": 1, "http_401": 1})
    shard.retries.update({"http_503": 4, "connect": 1})
    shard.latency.record(12.5)
    shard.latency.record(80.0)
    assert set(stats_to_dict(shard)) == {f.name for f in fields(RunStats)}
    total, expected = RunStats(), RunStats()
    for _ in range(2):  # as a part's meta carries them (write_json_atomic)
        data = orjson.dumps(stats_to_dict(shard), option=orjson.OPT_NON_STR_KEYS)
        add_stats(total, orjson.loads(data))
        expected.merge(shard)
    assert stats_to_dict(total) == stats_to_dict(expected)
    assert total.retries == {"http_503": 8, "connect": 2}
    summary = summarize(total, elapsed_s=1.0)
    assert summary.retries == {"http_503": 8, "connect": 2}
    assert "10 retries (http_503 x8, connect x2)" in summary.line()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--shard", "2/2"], "within 0..1", id="index-out-of-range"),
        pytest.param(
            ["--backend", "ray", "--resume", "-o", "out.jsonl"],
            "resumes by itself",
            id="ray-resume",
        ),
        pytest.param(["--shard", "0/2", "--backend", "ray"], "shards itself", id="with-ray"),
        pytest.param(["--backend", "ray"], "needs -o FILE", id="ray-needs-output"),
    ],
)
def test_shard_option_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(event_line(0) + b"\n")
    try:
        code = main(["run", "--dry-run", str(path), *argv])
    except SystemExit as exc:  # argparse's own errors
        code = int(str(exc.code))
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_config_rejects_bad_shard() -> None:
    with pytest.raises(ConfigError, match="0 <= I < N"):
        engine.Config(shard=(3, 2), dry_run=True).validated()


def test_backend_ray_without_ray_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    path = tmp_path / "in.jsonl"
    path.write_bytes(event_line(0) + b"\n")
    code = main(["run", "--backend", "ray", "--dry-run", str(path), "-o", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("adbatch: error: --backend ray needs Ray: pip install 'adbatch[ray]'")
    assert "Traceback" not in err


@given(
    data=st.lists(
        st.sampled_from([b"a", b"bb", b"\n", b"\r\n", b"x" * 40, b"{}", b"\xff"]), max_size=60
    ).map(b"".join),
    parts=st.integers(min_value=1, max_value=20),
)
def test_cut_ranges_property(data: bytes, parts: int) -> None:
    """Any bytes, any number of parts: ranges tile the file, each starts at a line start."""
    ranges = cut_ranges(len(data), parts, bytes_reader(data))
    assert b"".join(data[r.start : r.end] for r in ranges) == data
    assert len(ranges) <= parts
    for r in ranges:
        assert r.start < r.end
        assert r.start == 0 or data[r.start - 1] == ord("\n")
        assert r.first_line == data[: r.start].count(b"\n") + 1


def test_indexed_job_example_runs_shard_index_of_completions() -> None:
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parent.parent
    job = yaml.safe_load((root / "examples" / "k8s-indexed-job.yaml").read_text())
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    command = " ".join(spec["template"]["spec"]["containers"][0]["args"])
    assert f'--shard "$JOB_COMPLETION_INDEX/{spec["completions"]}"' in command
    assert "$JOB_COMPLETION_INDEX.jsonl" in command  # one output per index
    assert "--token" not in command  # the token comes from a Secret, through the environment


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        pytest.param('shard = "1/3"\nshard-by = "id"\n', None, id="string"),
        pytest.param('shard = "3/3"\n', "shard: the shard index I must be within 0..2", id="bad"),
        pytest.param(
            "shard = 7\n", "shard: expected I/N such as 0/4, got 7 (an integer)", id="number"
        ),
    ],
)
def test_shard_from_config_file(
    toml: str, expected: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli.main import build_parser, config_from_args

    conf = tmp_path / "adbatch.toml"
    conf.write_text(toml)
    args = build_parser().parse_args(["run", "--dry-run", "--config", str(conf), "x.jsonl"])
    if expected is None:
        config = config_from_args(args)
        assert (config.shard, config.shard_by) == ((1, 3), "id")
    else:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            config_from_args(args)


def test_a_local_merge_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """The merged output is written beside and renamed over the old one at the end: a
    merge that fails half-way leaves the old output and its manifest as they were; one
    that ends replaces both (the old manifest goes first: never a half-written output
    beside a manifest that vouches for it)."""
    from engine.files.urlmerge import MergeOutput

    out = tmp_path / "all.jsonl"
    out.write_bytes(b"old\n")
    manifest = Path(manifest_path(str(out)))
    manifest.write_text('{"rows": 1}')
    target = MergeOutput(str(out))

    def half_way() -> None:
        with target.open() as stream:
            stream.write(b"new, half-way\n")
            assert out.read_bytes() == b"old\n"  # nothing of the new one shows yet
            raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError):
        half_way()
    assert out.read_bytes() == b"old\n"
    assert manifest.read_text() == '{"rows": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.jsonl", manifest.name]
    with target.open() as stream:
        stream.write(b"new\n")
    assert out.read_bytes() == b"new\n"
    assert not manifest.exists()  # the merge writes its own next
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.jsonl"]


def test_a_shard_s_output_is_resumed_as_that_shard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume of shard 0/2's part with --shard 1/2 (or none) would add another shard's
    records to it: exit 2, saying which shard it holds; with --shard 0/2 it resumes."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(event_line(n) + b"\n" for n in range(10)))
    out = tmp_path / "part-0.jsonl"
    base = ["run", str(path), "-o", str(out), "--mock", "--no-progress"]
    assert main([*base, "--shard", "0/2"]) == 0
    capsys.readouterr()
    before = out.read_bytes()
    base.append("--resume")
    for other in (["--shard", "1/2"], [], ["--shard", "0/2", "--shard-by", "id"]):
        assert main([*base, *other]) == 2
        err = capsys.readouterr().err
        assert "holds shard 0/2 (--shard-by position): resume it with --shard 0/2" in err
        assert out.read_bytes() == before
    assert main([*base, "--shard", "0/2"]) == 0
    assert "5 already answered in the output (resumed)" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.slow
def test_a_shard_into_a_pipe_writes_no_manifest_and_ends(tmp_path: Path) -> None:
    """-o a FIFO (or a device): no part to merge, so no manifest beside it; the run
    ends (reading the output back to hash it waited on the pipe for ever)."""
    import subprocess
    import threading

    inputs = tmp_path / "in.jsonl"
    inputs.write_bytes(b"".join(event_line(i) + b"\n" for i in range(30)))
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    root = Path(__file__).resolve().parent.parent
    argv = ["run", "--mock", "--shard", "1/3", str(inputs), "-o", str(fifo)]
    done = subprocess.run(
        [sys.executable, "-m", "engine", *argv],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    reader.join(10)
    assert done.returncode == 0, done.stderr
    assert got[0].count(b"\n") == 10
    assert not os.path.exists(manifest_path(str(fifo)))
