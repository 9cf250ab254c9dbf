"""--resume sends again what ended transiently, and leaves one line per event (issue 12, 7).

The index and the compaction on files (no server), then whole runs against the real mock:
an output holding transient records (429, 503, 401, timeout, ...) is resumed with both
clients, in one process, with --workers 2 and with --ordered.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from conftest import config_for, events, exactly_once, read_records
from test_interrupt import start, wait_exit, wait_for

from engine import api
from engine.core.records import is_transient, record_seq
from engine.errors import FatalError
from engine.files.resume import compact, open_resume
from engine.mock import MockConfig, running_mock

SOURCE = "in.jsonl"


def record(
    seq: int, status: int | None = 200, kind: str | None = None, source: str = SOURCE
) -> dict[str, Any]:
    """A record as the engine writes it (the fields that matter here)."""
    return {
        "seq": seq,
        "id": f"ev-{seq}",
        "source": f"{source}:{seq + 1}",
        "status": status,
        "ok": status is not None and 200 <= status < 300 and kind is None,
        "attempts": 1,
        "latency_ms": 1.0,
        "sent_at": 1.0,
        "error": None if kind is None else f"failed: {kind}",
        "response": None,
        "error_kind": kind,
        "scheduled_at": None,
        "retries": [],
    }


def line(rec: dict[str, Any]) -> bytes:
    return orjson.dumps(rec) + b"\n"


# -- which records are sent again -----------------------------------------------------------

#: (status, error_kind, sent again by --resume)
KINDS = [
    pytest.param(200, None, False, id="200"),
    pytest.param(204, None, False, id="204"),
    pytest.param(400, "http_400", False, id="400"),
    pytest.param(403, "http_403", False, id="403"),
    pytest.param(404, "http_404", False, id="404"),
    pytest.param(401, "http_401", True, id="401"),
    pytest.param(408, "http_408", True, id="408"),
    pytest.param(429, "http_429", True, id="429"),
    pytest.param(500, "http_500", True, id="500"),
    pytest.param(503, "http_503", True, id="503"),
    pytest.param(599, "http_599", True, id="599"),
    pytest.param(None, "timeout", True, id="timeout"),
    pytest.param(None, "connect", True, id="connect"),
    pytest.param(None, "network", True, id="network"),
    pytest.param(None, "disconnected", True, id="disconnected"),
    pytest.param(None, "payload", True, id="payload"),
    pytest.param(None, "internal", True, id="internal"),
    pytest.param(None, "invalid", False, id="invalid"),
    pytest.param(None, "request", False, id="request"),
    pytest.param(None, "protocol", False, id="protocol"),
    pytest.param(200, "too_large", False, id="too-large-200"),
    pytest.param(503, "too_large", False, id="too-large-503"),
    pytest.param(None, "dropped", False, id="dropped"),
    pytest.param(None, "dry_run", False, id="dry-run"),
]


@pytest.mark.parametrize(("status", "kind", "again"), KINDS)
def test_resume_index_sends_transient_records_again(
    tmp_path: Path, status: int | None, kind: str | None, again: bool
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(line(record(0, status, kind)))
    index = open_resume(str(out))
    assert is_transient(status, kind) is again
    assert index.recorded(0)
    assert index.holds(0) is not again
    assert index.answered(0, f"{SOURCE}:1", "ev-0") is not again
    with pytest.raises(FatalError, match="input changed"):  # checked, transient or not
        index.answered(0, f"{SOURCE}:1", "other")


def test_the_latest_record_of_an_event_decides(tmp_path: Path) -> None:
    # A resume that crashed before compacting: the event's old 429, then its new 200.
    out = tmp_path / "out.jsonl"
    out.write_bytes(
        line(record(0, 429, "http_429"))
        + line(record(1))
        + line(record(0))
        + line(record(2))
        + line(record(2, None, "timeout"))
    )
    index = open_resume(str(out))
    assert index.answered(0, f"{SOURCE}:1", "ev-0")
    assert not index.answered(2, f"{SOURCE}:3", "ev-2")
    assert (index.records, index.duplicates, index.transient) == (5, 2, 1)


@pytest.mark.parametrize("text", [b'{"seq":12,"id":"a"}\n', b'{"seq":0,"x":1}\n'])
def test_record_seq_of_a_checked_line_reads_its_head(text: bytes) -> None:
    assert record_seq(text, checked=True) == orjson.loads(text)["seq"]


def test_record_seq_of_anything_else() -> None:
    assert record_seq(line(record(7))) == 7
    assert record_seq(b'{"seq":5,"id":"torn') is None
    assert record_seq(b'{"seq":5,"id":"a{"seq":9,"source":"x:1","id":null}\n') is None
    assert record_seq(b'{"seq":-1,"source":"x:1","id":null}\n') is None


# -- compaction --------------------------------------------------------------------------------


def resumed_file(tmp_path: Path, old: list[bytes], new: list[bytes]) -> tuple[Path, Any]:
    """An output as a --resume run leaves it: `old` indexed, then `new` appended."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(old))
    index = open_resume(str(out))
    with out.open("ab") as f:
        f.write(b"".join(new))
    return out, index


def test_compact_keeps_the_latest_line_of_each_event(tmp_path: Path) -> None:
    old = [
        line(record(0)),
        line(record(1, 429, "http_429")),
        line(record(2, None, "timeout")),
        line(record(3, 400, "http_400")),
        line(record(4, 503, "http_503")),  # not sent again this time (the run stopped)
    ]
    new = [line(record(2)), line(record(1))]
    out, index = resumed_file(tmp_path, old, new)
    out.chmod(0o640)
    inode = out.stat().st_ino
    assert compact(str(out), index)
    assert out.read_bytes() == old[0] + old[3] + old[4] + new[0] + new[1]
    assert out.stat().st_ino != inode  # renamed over, never written in place
    assert out.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temporary left


def test_compact_drops_the_lines_a_crashed_resume_left(tmp_path: Path) -> None:
    old = [line(record(0, 429, "http_429")), line(record(1)), line(record(0))]
    out, index = resumed_file(tmp_path, old, [])
    assert compact(str(out), index)
    assert out.read_bytes() == old[1] + old[2]


def test_compact_leaves_a_file_with_nothing_to_drop_alone(tmp_path: Path) -> None:
    old = [line(record(0)), line(record(1, 404, "http_404"))]
    out, index = resumed_file(tmp_path, old, [line(record(2))])
    inode = out.stat().st_ino
    assert not compact(str(out), index)
    assert out.stat().st_ino == inode
    assert out.read_bytes() == b"".join([*old, line(record(2))])


def test_compact_drops_a_torn_line_of_the_run(tmp_path: Path) -> None:
    # A --workers child killed mid-write: its torn line, run into by the next worker's
    # record. That garbled line goes (a later --resume sends both events); the rest stays.
    torn = line(record(1))[:30]
    new = [line(record(3)), torn, line(record(2)), line(record(4))]
    out, index = resumed_file(tmp_path, [line(record(0)), line(record(1, 503, "http_503"))], new)
    assert compact(str(out), index)
    assert read_records(out) == [record(0), record(1, 503, "http_503"), record(3), record(4)]


def test_compact_through_a_link_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real.jsonl"
    real.write_bytes(line(record(0, 429, "http_429")))
    link = tmp_path / "out.jsonl"
    link.symlink_to(real.name)
    index = open_resume(str(link))
    with link.open("ab") as f:
        f.write(line(record(0)))
    assert compact(str(link), index)
    assert link.is_symlink()
    assert real.read_bytes() == line(record(0))


def test_compact_never_touches_a_file_that_replaced_the_output(tmp_path: Path) -> None:
    out, index = resumed_file(tmp_path, [line(record(0, 429, "http_429"))], [line(record(0))])
    other = tmp_path / "other"
    other.write_bytes(b"not ours\n")
    os.replace(other, out)
    assert not compact(str(out), index)
    assert out.read_bytes() == b"not ours\n"


# -- whole runs --------------------------------------------------------------------------------


#: What an earlier run may have left for an event: (status, error_kind), sent again or not.
LEFT = [
    (429, "http_429", True),
    (503, "http_503", True),
    (None, "timeout", True),
    (401, "http_401", True),
    (None, "internal", True),
    (None, "disconnected", True),
    (400, "http_400", False),
    (503, "too_large", False),
]


def spoil(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], set[int], set[int]]:
    """Every 5th record replaced by a failure of LEFT's: (records, seqs sent again, kept)."""
    again: set[int] = set()
    kept: set[int] = set()
    out = []
    for r in records:
        if r["seq"] % 5 == 0:
            status, kind, resent = LEFT[(r["seq"] // 5) % len(LEFT)]
            r = {**r, "status": status, "ok": False, "error": f"failed: {kind}"}
            r["error_kind"] = kind
            (again if resent else kept).add(r["seq"])
        out.append(r)
    return out, again, kept


RUNS = pytest.mark.parametrize(
    "options",
    [
        pytest.param({"http_client": "http1"}, id="http1"),
        pytest.param({"http_client": "session"}, id="session"),
        pytest.param({"http_client": "http1", "ordered": True}, id="http1-ordered"),
        pytest.param({"http_client": "http1", "workers": 2}, id="http1-workers"),
        pytest.param(
            {"http_client": "session", "workers": 2, "ordered": True},
            id="session-workers-ordered",
            marks=pytest.mark.slow,
        ),
    ],
)


@pytest.mark.anyio
@RUNS
async def test_resume_sends_exactly_the_transient_records_again(
    tmp_path: Path, write_jsonl: Callable[..., Path], options: dict[str, Any]
) -> None:
    n = 120
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    async with running_mock() as mock:
        await api.run(config_for(mock, inputs, out))
    first, again, kept = spoil(read_records(out))
    # A crash mid-write left the last line torn: that event is sent again too.
    torn = first[-1]["seq"]
    out.write_bytes(b"".join(line(r) for r in first[:-1]) + line(first[-1])[:25])
    async with running_mock(MockConfig(record_requests=True)) as mock:
        summary = await api.run(config_for(mock, inputs, out, resume=True, **options))
        sent = sorted(int(dict(r.query)["retailer-visitor-id"][3:]) for r in mock.state.requests)
    assert summary.exit_code == 0  # of the events this run sent: all answered 2xx
    assert sent == sorted(again | {torn})  # exactly those, once each
    assert summary.resumed == n - len(again) - 1
    final = read_records(out)
    exactly_once(final, n)
    by_seq = {r["seq"]: r for r in final}
    assert all(by_seq[s]["status"] == 200 for s in again | {torn})
    assert all(by_seq[s] == first[s] for s in kept)  # final failures stay as they were
    untouched = [r for r in first[:-1] if r["seq"] not in again]
    assert final[: len(untouched)] == untouched  # the old lines in their order, then the new


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("procs", [[], ["--workers", "2"]], ids=["1-process", "workers"])
async def test_an_interrupted_or_killed_resume_still_leaves_one_line_per_event(
    tmp_path: Path, write_jsonl: Callable[..., Path], procs: list[str]
) -> None:
    """SIGINT mid-resume: the output is compacted as the run ends (exit 130). kill -9
    mid-resume: old and new records of an event side by side, until the next resume."""
    n = 600
    inputs = write_jsonl(events(n))
    out = tmp_path / "out.jsonl"
    # An earlier run that got nothing but 503s.
    out.write_bytes(b"".join(line(record(i, 503, "http_503", str(inputs))) for i in range(n)))
    async with running_mock(MockConfig(latency=0.02)) as mock:
        proc = start(mock, inputs, out, "--resume", "-c", "8", *procs)
        await wait_for(lambda: mock.state.delivery_requests >= 100, proc)
        proc.send_signal(signal.SIGINT)
        rc, stderr = await wait_exit(proc, 30)
        assert rc == 130, stderr
        middle = read_records(out)
        exactly_once(middle, n)  # compacted as the run ended
        done = sum(r["status"] == 200 for r in middle)
        assert 100 <= done < n
        assert done == mock.state.delivery_requests  # what was sent was written

        proc = start(mock, inputs, out, "--resume", "-c", "8", *procs)
        await wait_for(lambda: mock.state.delivery_requests >= done + 100, proc)
        proc.kill()
        await wait_exit(proc, 10)
        await anyio.sleep(0.1)
        killed = read_records(out)  # not compacted: superseded 503s still there
        assert len(killed) > n

        proc = start(mock, inputs, out, "--resume", "-c", "8", *procs)
        rc, stderr = await wait_exit(proc, 30)
        assert rc == 0, stderr
    final = read_records(out)
    exactly_once(final, n)
    assert all(r["status"] == 200 for r in final)


# -- an input that lost lines at its end ----------------------------------------------------


def test_records_past_the_input_end_are_refused_once_it_is_read(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(line(record(i)) for i in (0, 1, 2, 5, 7)))
    index = open_resume(str(out))
    index.check_end()  # the input not read to its end (a run stopped early): nothing known
    index.input_read(8)
    index.check_end()
    index.input_read(5)
    with pytest.raises(FatalError, match=r"input has 5 events, .* for 2 more \(event 6 on\)"):
        index.check_end()


SHRUNK = pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="1-process"),
        pytest.param({"ordered": True}, id="ordered"),
        pytest.param({"workers": 2}, id="workers", marks=pytest.mark.slow),
        pytest.param(
            {"workers": 2, "ordered": True}, id="workers-ordered", marks=pytest.mark.slow
        ),
        pytest.param({"shard": (0, 2)}, id="shard-0"),
        pytest.param({"shard": (1, 2)}, id="shard-1"),
    ],
)


@pytest.mark.anyio
@SHRUNK
async def test_resume_of_an_input_that_lost_its_last_lines_is_input_changed(
    tmp_path: Path, write_jsonl: Callable[..., Path], options: dict[str, Any]
) -> None:
    """The output answers 40 events, the input now holds 20: exit 3 once the input has
    been read, after the events this run sent (a 503 among the 20 left) are written."""
    inputs = write_jsonl(events(40))
    out = tmp_path / "out.jsonl"
    shard = {"shard": options["shard"]} if "shard" in options else {}
    async with running_mock() as mock:
        await api.run(config_for(mock, inputs, out, **shard))
    first = read_records(out)
    again = {r["seq"] for r in first if r["seq"] < 20 and r["seq"] % 3 == 0}
    first = [
        {**r, "status": 503, "ok": False, "error_kind": "http_503"} if r["seq"] in again else r
        for r in first
    ]
    out.write_bytes(b"".join(line(r) for r in first))
    write_jsonl(events(20))  # the same file, its last 20 lines gone
    async with running_mock(MockConfig(record_requests=True)) as mock:
        with pytest.raises(FatalError, match=r"^input changed .* input has 20 events, yet"):
            await api.run(config_for(mock, inputs, out, resume=True, **options))
        sent = sorted(int(dict(r.query)["retailer-visitor-id"][3:]) for r in mock.state.requests)
    assert sent == sorted(again)  # what the input still holds was sent, once each
    final = read_records(out)
    assert sorted(r["seq"] for r in final) == sorted(r["seq"] for r in first)  # one line each
    assert [r for r in final if r["seq"] >= 20] == [r for r in first if r["seq"] >= 20]
    assert all(r["status"] == 200 for r in final if r["seq"] in again)  # written


@pytest.mark.anyio
@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
async def test_a_record_past_the_input_end_stops_the_resume_output_untouched(
    tmp_path: Path, write_jsonl: Callable[..., Path], workers: int
) -> None:
    inputs = write_jsonl(events(10))
    out = tmp_path / "out.jsonl"
    async with running_mock() as mock:
        await api.run(config_for(mock, inputs, out))
        forged = out.read_bytes() + line({**read_records(out)[-1], "seq": 57})
        out.write_bytes(forged)
        with pytest.raises(FatalError, match=r"for 1 more \(event 58 on\)"):
            await api.run(config_for(mock, inputs, out, resume=True, workers=workers))
    assert out.read_bytes() == forged


@pytest.mark.anyio
async def test_cli_resume_of_a_shrunk_input_is_one_line_and_exit_3(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    inputs = write_jsonl(events(20))
    out = tmp_path / "out.jsonl"
    async with running_mock() as mock:
        await api.run(config_for(mock, inputs, out))
        before = out.read_bytes()
        write_jsonl(events(10))
        rc, stderr = await wait_exit(start(mock, inputs, out, "--resume", "--workers", "2"), 30)
    assert rc == 3, stderr
    assert stderr.strip().splitlines() == [
        "adbatch: error: input changed since the output was written: the input has 10 "
        "events, yet the output holds records for 10 more (event 11 on); --resume needs the "
        "same inputs, named the same way (what this run sent is written: resume with the "
        "inputs the output was written from, or write a new output without --resume)"
    ]
    assert out.read_bytes() == before
