"""The output side: TickWriter's one write per loop tick, JsonlSink on files and pipes."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.lowlevel
import orjson
import pytest

from engine.core.records import Result
from engine.errors import FatalError, OutputError
from engine.files.sinks import JsonlSink, TickWriter

pytestmark = pytest.mark.anyio


def _result(seq: int) -> Result:
    return Result(seq, f"e{seq}", f"in:{seq + 1}", 200, True, 1, 1.0, 0.0, None, None)


async def test_records_of_one_tick_go_out_in_one_write() -> None:
    writes: list[list[int]] = []
    tick = TickWriter(lambda batch: writes.append([r.seq for r in batch]))
    for seq in range(5):
        tick.add(_result(seq))
    assert writes == []  # handed over, written when the tick ends
    await anyio.lowlevel.checkpoint()
    assert writes == [[0, 1, 2, 3, 4]]
    tick.add(_result(5))
    await anyio.lowlevel.checkpoint()
    tick.add(_result(6))
    tick.close()  # what is left is written at once
    assert writes == [[0, 1, 2, 3, 4], [5], [6]]


async def test_a_write_error_reaches_the_run() -> None:
    def write(batch: list[Result]) -> None:
        raise FatalError("cannot write output out.jsonl: No space left on device")

    tick = TickWriter(write)
    tick.add(_result(0))
    await anyio.lowlevel.checkpoint()  # the failed write happened in a loop callback
    with pytest.raises(FatalError, match="No space left"):
        tick.add(_result(1))  # ...and the next worker to hand over a record hears of it
    with pytest.raises(FatalError, match="No space left"):
        tick.close()


async def test_close_raises_an_error_no_worker_saw() -> None:
    def write(batch: list[Result]) -> None:
        raise FatalError("output closed")

    tick = TickWriter(write)
    tick.add(_result(0))
    with pytest.raises(FatalError, match="output closed"):
        tick.close()


def test_two_appending_sinks_keep_lines_whole(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    JsonlSink(str(path)).close()  # created (truncated) once, as the parent does
    # ... and appended to by the --workers children, which the parent's lock lets in.
    first = JsonlSink(str(path), append=True, watch=False)
    second = JsonlSink(str(path), append=True, watch=False)
    assert first.is_regular_file()
    assert second.is_regular_file()
    for i in range(200):
        sink = first if i % 2 else second
        sink.write(b"".join(_result(i * 10 + k).to_json() + b"\n" for k in range(10)))
    first.close()
    second.close()
    seqs = sorted(orjson.loads(line)["seq"] for line in path.read_bytes().splitlines())
    assert seqs == list(range(2000))  # every line whole, none over another


@pytest.mark.parametrize("append", [False, True], ids=["run", "resume"])
def test_a_second_run_on_the_same_output_is_refused_and_empties_nothing(
    tmp_path: Path, append: bool
) -> None:
    """Two runs writing one output (two --resume at once) would each write what the
    other sends: the second is refused (exit 2) before it writes or empties anything."""
    path = tmp_path / "out.jsonl"
    first = JsonlSink(str(path))
    first.write(_result(0).to_json() + b"\n")
    with pytest.raises(OutputError, match="is being written by another adbatch run") as exc:
        JsonlSink(str(path), append=append)
    assert exc.value.exit_code == 2
    assert path.read_bytes() == _result(0).to_json() + b"\n"
    first.close()
    again = JsonlSink(str(path))  # once the first has closed: emptied, as a new run's is
    again.close()
    assert path.read_bytes() == b""


def test_a_pipe_is_not_a_regular_file() -> None:
    read_end, write_end = os.pipe()
    try:
        sink = JsonlSink(f"/dev/fd/{write_end}", append=True)
        assert not sink.is_regular_file()
        sink.close()
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_file_is_synced_in_the_background_as_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("engine.files.sinks.SYNC_EVERY", 4096)
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(str(path))
    lines = [_result(i).to_json() + b"\n" for i in range(400)]
    for line in lines:
        sink.write(line)
    syncer = sink._sync
    assert syncer is not None  # started once 4 KiB were written
    sink.close()
    assert not syncer.is_alive()  # joined before the descriptor closed
    assert path.read_bytes() == b"".join(lines)


def test_syncing_a_pipe_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engine.files.sinks.SYNC_EVERY", 1)
    read_end, write_end = os.pipe()
    try:
        sink = JsonlSink(f"/dev/fd/{write_end}")
        sink.write(b"{}\n")
        sink.close()
        assert os.read(read_end, 10) == b"{}\n"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_no_other_file_of_a_run_is_written_over_a_held_output(tmp_path: Path) -> None:
    """Another run's --summary, --series or merge output naming a file a run is writing
    as its -o (locked for the run) is refused before it empties it: a --summary there
    wrote over 14 of the run's records (exit 0 for both)."""
    from engine.cli.common import write_file
    from engine.files.sinks import create_output, refuse_if_held

    path = tmp_path / "out.jsonl"
    held = JsonlSink(str(path))
    held.write(_result(0).to_json() + b"\n")
    for write in (
        lambda: create_output(str(path)),
        lambda: write_file(str(path), b"{}", after_run=True),
        lambda: refuse_if_held(str(path)),
    ):
        with pytest.raises(OutputError, match="is being written by another adbatch run"):
            write()
    assert path.read_bytes() == _result(0).to_json() + b"\n"
    held.close()
    refuse_if_held(str(path))  # free again
    refuse_if_held(str(tmp_path / "absent.json"))
