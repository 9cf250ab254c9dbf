"""runtime/feeds.py `reads_inline`: local regular files of lines are read in the loop's
thread; stdin, a pipe, a URL and Parquet keep the worker thread. Both give the same
items in the same order."""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
import time
from pathlib import Path

import orjson
import pytest

from engine.config import Config
from engine.core.events import ReadCounts
from engine.files.localfs import is_local_file
from engine.runtime.feeds import file_feed, reads_inline

LINE = {"criteo-partner-id": 1, "retailer-visitor-id": "v", "event-type": "viewHome"}


def _config(*inputs: str, **options: object) -> Config:
    return Config(inputs=inputs, endpoint="http://127.0.0.1:9/x", **options)  # type: ignore[arg-type]


def _jsonl(path: Path, n: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps({**LINE, "page-id": f"p{i}"}) + b"\n" for i in range(n)))
    return path


def test_local_files_of_lines_are_read_inline(tmp_path: Path) -> None:
    plain = _jsonl(tmp_path / "a.jsonl", 3)
    zipped = tmp_path / "b.jsonl.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    csv = tmp_path / "c.csv"
    csv.write_text("criteo-partner-id,retailer-visitor-id,event-type,page-id\n1,v,viewHome,p\n")
    assert reads_inline(_config(str(plain), str(zipped), str(csv)))


@pytest.mark.parametrize("other", ["-", "s3://bucket/key.jsonl", "memory://x/y.jsonl"])
def test_stdin_or_a_url_keeps_the_worker_thread(tmp_path: Path, other: str) -> None:
    plain = _jsonl(tmp_path / "a.jsonl", 3)
    assert not reads_inline(_config(str(plain), other))


def test_a_pipe_a_missing_file_or_parquet_keeps_the_worker_thread(tmp_path: Path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    assert not reads_inline(_config(str(fifo)))
    assert not reads_inline(_config(str(tmp_path / "missing.jsonl")))
    assert not reads_inline(_config(str(tmp_path / "a.parquet")))


def test_inline_and_threaded_feeds_give_the_same_items(tmp_path: Path) -> None:
    plain = _jsonl(tmp_path / "a.jsonl", 600)  # more than two batches
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)

    def fill() -> None:
        with open(fifo, "wb") as out:
            out.write(plain.read_bytes())

    async def items(config: Config) -> list[tuple[int, str]]:
        got = []
        async for batch in file_feed(config, ReadCounts()):
            got.extend((item.seq, item.source.rsplit(":", 1)[1]) for item in batch)
        return got

    inline = asyncio.run(items(_config(str(plain))))
    writer = threading.Thread(target=fill, daemon=True)  # never holds the run open
    writer.start()
    threaded = asyncio.run(items(_config(str(fifo))))
    writer.join()
    assert inline == threaded == [(i, str(i + 1)) for i in range(600)]


def test_the_local_filesystem_is_told_by_the_files_device(tmp_path: Path) -> None:
    plain = _jsonl(tmp_path / "a.jsonl", 1)
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    if not Path("/proc/self/mountinfo").exists():
        assert not is_local_file(str(plain))  # no /proc: never inline
        return
    assert is_local_file(str(plain))  # tmp_path: a local disk or tmpfs
    assert not is_local_file(str(fifo))
    assert not is_local_file("/proc/self/status")  # regular, but procfs
    assert not is_local_file(str(tmp_path / "missing"))
    assert not is_local_file(str(tmp_path))


@pytest.mark.slow
def test_an_inline_read_of_slow_lines_gives_the_loop_its_turns(tmp_path: Path) -> None:
    # Lines of ~0.9 MB (under --max-line-bytes) take ~20 ms each to parse: a batch of
    # them would hold the loop for seconds; the feed cuts a batch short instead.
    nested = orjson.dumps({f"key{i}": i for i in range(50_000)})
    line = b'{"criteo-partner-id":1,"event-type":"viewHome","nested":' + nested + b"}\n"
    path = tmp_path / "big.jsonl"
    path.write_bytes(line * 60)
    assert reads_inline(_config(str(path)))

    async def run() -> tuple[int, float]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0)  # the ticker is running before the first read
        count = 0
        async for batch in file_feed(_config(str(path)), ReadCounts()):
            count += len(batch)
        done.set()
        await ticker
        return count, max(gaps)

    count, longest = asyncio.run(run())
    assert count == 60
    assert longest < 0.3  # one line's parse and a slice, not a batch of 60
