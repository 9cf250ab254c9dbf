"""runtime/feeds.py `reads_inline`: local regular files of lines are read in the loop's
thread; stdin, a pipe, a URL and Parquet keep the worker thread. Both give the same
items in the same order."""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
from pathlib import Path

import orjson
import pytest

from engine.config import Config
from engine.core.events import ReadCounts
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
