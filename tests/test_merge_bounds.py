"""`adbatch merge` on outputs that never end, parts or manifests that are hostile or
edited: it ends, in bounded memory, with one line (no traceback)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import config_for, event_line, read_records

import engine
from engine.cli.main import main
from engine.core.events import Invalid
from engine.core.records import invalid, jsonl
from engine.distributed.merge import LINE_LIMIT, Coverage, merge_outputs
from engine.files.manifests import (
    input_identity,
    manifest_path,
    read_manifest,
    scan_part,
    write_json_atomic,
)
from engine.mock import MockHandle


def _record(seq: int) -> bytes:
    return jsonl([invalid(Invalid(seq, f"in.jsonl:{seq + 1}", f"ev-{seq}", "bad"))])


def _shards(tmp_path: Path, count: int = 2, records: int = 6) -> list[Path]:
    """`count` shard parts of a `records`-line input, each with its manifest."""
    parts = [tmp_path / f"part-{i}.jsonl" for i in range(count)]
    for i, part in enumerate(parts):
        part.write_bytes(b"".join(_record(seq) for seq in range(i, records, count)))
        info = scan_part(str(part))
        manifest = {
            "adbatch": "shard",
            "shard": [i, count],
            "by": "position",
            "inputs": ["in.jsonl"],
            "records": records,
            "rows": info.rows,
            "sha256": info.sha256,
        }
        write_json_atomic(manifest_path(str(part)), manifest)
    return parts


def test_merge_into_a_fifo_ends_and_leaves_no_manifest(tmp_path: Path) -> None:
    """-o a FIFO: every record, then the end (reading the output back to hash it waited
    on the pipe for ever); a pipe holds no file to merge again: no manifest beside it."""
    parts = _shards(tmp_path)
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    reports: list[Any] = []
    merging = threading.Thread(
        target=lambda: reports.append(merge_outputs(list(map(str, parts)), str(fifo))),
        daemon=True,
    )
    merging.start()
    merging.join(20)
    reader.join(5)
    assert not merging.is_alive(), "merge -o FIFO did not end"
    assert reports[0].exactly_once, reports[0].problems
    assert sorted(orjson.loads(line)["seq"] for line in got[0].splitlines()) == list(range(6))
    assert not os.path.exists(manifest_path(str(fifo)))


def test_the_merged_manifest_hashes_what_was_written(tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    assert merge_outputs([str(p) for p in _shards(tmp_path)], str(out)).exactly_once
    assert read_manifest(manifest_path(str(out)))["sha256"] == scan_part(str(out)).sha256  # type: ignore[index]


@pytest.mark.parametrize(
    ("seqs", "records", "duplicates", "missing", "beyond"),
    [
        pytest.param([0, 1, 2], 3, [], (0, []), 0, id="dense"),
        pytest.param([0, 2, 2], 3, [2], (1, [1]), 0, id="a-duplicate"),
        pytest.param(
            [0, 10**11, 10**11],
            None,
            [10**11],
            (10**11 - 1, [1, 2, 3, 4, 5]),
            0,
            id="a-huge-seq-and-its-duplicate",
        ),
        pytest.param([0, 3, 2 * 10**9], 4, [], (2, [1, 2]), 1, id="beyond-the-records"),
        pytest.param([1], 10**15, [], (10**15 - 1, [0, 2, 3, 4, 5]), 0, id="records-huge"),
        pytest.param(
            [5 << 20, 5 << 20],
            None,
            [5 << 20],
            ((5 << 20), [0, 1, 2, 3, 4]),
            0,
            id="set-then-bytes",
        ),
    ],
)
def test_coverage_memory_follows_the_parts_not_the_seqs(
    seqs: list[int],
    records: int | None,
    duplicates: list[int],
    missing: tuple[int, list[int]],
    beyond: int,
) -> None:
    coverage = Coverage()
    for seq in seqs:
        coverage.add(seq)
        coverage.budget += 8 << 20  # as if each record were 8 MiB: later seqs go dense
    assert coverage.duplicate_examples == duplicates
    assert coverage.missing(records) == missing
    assert coverage.beyond(records or 0) == (beyond if records else len(set(seqs)))
    assert len(coverage.seen) <= coverage.budget


def test_a_huge_seq_is_a_gap_not_a_memory_error(tmp_path: Path) -> None:
    part = tmp_path / "h.jsonl"
    part.write_bytes(_record(0) + _record(100_000_000_000) + _record(2_000_000_000))
    out = tmp_path / "out.jsonl"
    report = merge_outputs([str(part)], str(out))
    assert report.problems == ["99999999998 records missing (seq 1, 2, 3, 4, 5...)"]
    assert [r["seq"] for r in read_records(out)] == [0, 100_000_000_000, 2_000_000_000]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("shard", None, id="shard-missing"),
        pytest.param("shard", [0], id="shard-one-number"),
        pytest.param("shard", ["x", 2], id="shard-not-numbers"),
        pytest.param("shard", [2, 2], id="shard-past-its-count"),
        pytest.param("shard", [True, 2], id="shard-a-bool"),
        pytest.param("shard", [0, 10**12], id="shard-of-a-trillion"),
        pytest.param("records", [1], id="records-a-list"),
        pytest.param("records", -1, id="records-negative"),
        pytest.param("by", ["position"], id="by-a-list"),
        pytest.param("inputs", "in.jsonl", id="inputs-a-string"),
    ],
)
def test_an_edited_manifest_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: object
) -> None:
    parts = _shards(tmp_path)
    trillion = key == "shard" and value == [0, 10**12]
    for i, part in enumerate(parts[: 2 if trillion else 1]):  # a trillion: both agree
        manifest = read_manifest(manifest_path(str(part)))
        assert manifest is not None
        if value is None:
            del manifest[key]
        else:
            manifest[key] = [i, 10**12] if trillion else value
        write_json_atomic(manifest_path(str(part)), manifest)
    out = tmp_path / "out.jsonl"
    assert main(["merge", *map(str, parts), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    if trillion:
        assert "shard 2, 3, 4, 5, 6 and 999999999993 more of 1000000000000 not given" in err
    else:
        assert f"{manifest_path(str(parts[0]))} cannot be used: its {key}" in err
    assert sorted(r["seq"] for r in read_records(out)) == list(range(6))


def test_a_line_longer_than_any_record_ends_the_part(tmp_path: Path) -> None:
    """A torn or hostile part with no newline for 73 MiB (sparse: no disk) is never
    held whole; the record before it is merged, the line and the rest are not."""
    part = tmp_path / "torn.jsonl"
    with part.open("wb") as f:
        f.write(_record(0))
        f.truncate(len(_record(0)) + LINE_LIMIT + (1 << 20))
    with part.open("ab") as f:
        f.write(b"\n" + _record(1))
    out = tmp_path / "out.jsonl"
    report = merge_outputs([str(part)], str(out))
    assert report.problems == [
        f"{part} holds a line longer than a record can be (72 MiB): torn or not a part; "
        "the rest of it is not merged"
    ]
    assert [r["seq"] for r in read_records(out)] == [0]


@pytest.mark.anyio
async def test_merge_refuses_inputs_of_one_name_that_differ(
    mock: MockHandle, tmp_path: Path
) -> None:
    """Shard 0 of a/ev.jsonl and shard 1 of b/ev.jsonl: same name, same line count, other
    order. Merge said every record exactly once (20 events twice, 20 never); each input's
    size and a sample of its bytes in the manifest tell the two apart."""
    lines = [event_line(n) + b"\n" for n in range(8)]
    inputs = [tmp_path / d / "ev.jsonl" for d in ("a", "b", "c")]
    for path, data in zip(inputs, (lines, lines[::-1], lines), strict=True):
        path.parent.mkdir()
        path.write_bytes(b"".join(data))
    outs = [tmp_path / f"part-{i}.jsonl" for i in range(2)]
    await engine.run(config_for(mock, inputs[0], outs[0], shard=(0, 2)))
    await engine.run(config_for(mock, inputs[1], outs[1], shard=(1, 2)))
    report = merge_outputs([str(o) for o in outs], str(tmp_path / "m.jsonl"))
    assert report.problems == [
        f"the parts come from different inputs: ev.jsonl of {outs[0]} and of {outs[1]} "
        "are not the same file (size or content)"
    ]
    # A copy of the same file elsewhere (another machine's mount) is the same input.
    await engine.run(config_for(mock, inputs[2], outs[1], shard=(1, 2)))
    assert merge_outputs([str(o) for o in outs], str(tmp_path / "m.jsonl")).exactly_once
    # Manifests written before the field: compared by name, as they were.
    for out in outs:
        manifest = read_manifest(manifest_path(str(out)))
        assert manifest is not None
        del manifest["input_identity"]
        write_json_atomic(manifest_path(str(out)), manifest)
    assert merge_outputs([str(o) for o in outs], str(tmp_path / "m.jsonl")).exactly_once


def test_the_identity_of_an_input_reads_little_and_never_waits(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"x" * 300_000)
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"x" * 299_999 + b"y")  # the same size, another last byte
    assert input_identity(str(big)) != input_identity(str(other))
    identity = input_identity(str(big))
    assert identity is not None
    assert (sorted(identity), identity["size"]) == (["sample", "size"], 300_000)
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)  # stdin, a pipe: nothing to compare (and no open that waits)
    assert input_identity(str(fifo)) is None
    assert input_identity("-") is None
    assert input_identity(str(tmp_path / "gone.jsonl")) is None


def test_a_manifest_cannot_lift_the_line_limit_past_the_ceiling(tmp_path: Path) -> None:
    """The longest line read is the manifests' max_record_bytes, bounded: an edited
    2**40 would read a part without newlines whole."""
    from engine.distributed.merge import LINE_CEILING, MergeReport, _check_manifests

    parts = _shards(tmp_path)
    for part in parts:
        manifest = read_manifest(manifest_path(str(part)))
        assert manifest is not None
        write_json_atomic(manifest_path(str(part)), {**manifest, "max_record_bytes": 2**40})
    _, limit = _check_manifests([str(p) for p in parts], MergeReport())
    assert limit == LINE_CEILING
