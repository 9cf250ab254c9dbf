"""A store that fails while an input is read (a ranged GET answered 500 mid-object):
the range is read again in place (files/reread.py); when the store stays down, the file
ends with one "could not be read" record, and --resume sends the rest once the store
answers again (files/resume.py).

Against moto on 127.0.0.1 (the `s3` fixture), through a proxy the test starts on
127.0.0.1 that answers chosen GETs of the object 500. AWS_MAX_ATTEMPTS=1 turns
botocore's own retries off, so that the tries seen are adbatch's alone. Slow: each test
runs the CLI and waits out the pauses between tries.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import orjson
import pytest
from aiohttp import web
from conftest import read_records
from s3server import S3, forward_to_moto
from web_app import serving

from engine.files.reread import PAUSES

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

_FAULT = b'<Error><Code>InternalError</Code><Message>injected</Message></Error>'


@dataclass
class Faults:
    """GETs of `path` numbered from 0: those from `after` on, `times` of them, get a 500;
    with `from_byte` (and `to_byte`), only those whose range starts in that span count."""

    path: str
    after: int
    times: int
    gets: int = 0
    failed: int = 0
    from_byte: int = 0
    to_byte: int | None = None

    def fails(self, request: web.Request) -> bool:
        if request.method != "GET" or request.path != self.path:
            return False
        start = request.headers.get("Range", "bytes=0-").removeprefix("bytes=").partition("-")[0]
        if not self.from_byte <= int(start or 0) < (self.to_byte or 1 << 62):
            return False
        self.gets += 1
        if self.after <= self.gets - 1 < self.after + self.times:
            self.failed += 1
            return True
        return False


@asynccontextmanager
async def faulty_store(s3: S3, faults: Faults) -> AsyncIterator[str]:
    """A proxy in front of moto that answers `faults`' GETs 500; yields its URL."""

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if faults.fails(request):
            return web.Response(status=500, body=_FAULT, content_type="application/xml")
        return await forward_to_moto(s3, request, body)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", forward)
    async with serving(app) as url:
        yield url


async def _run(proxy: str, *args: str, cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy, "AWS_MAX_ATTEMPTS": "1"}
    done = await anyio.run_process(
        [sys.executable, "-m", "engine", "run", "--mock", "--no-progress", *args],
        cwd=cwd, env=env, check=False, stdin=None,
    )  # fmt: skip
    return done.returncode, done.stderr.decode()


def _jsonl(n: int) -> bytes:
    """`n` events of 8 KB each: 1,100 of them span two of the reader's 8 MiB ranges."""
    pad = "z" * 8000
    return b"".join(
        orjson.dumps({"id": f"g{i}", "criteo-partner-id": 1, "retailer-visitor-id": "v",
                      "event-type": "viewHome", "page-id": "viewHome_API_desktop", "pad": pad})
        + b"\n"
        for i in range(n)
    )  # fmt: skip


def _ids(out: Path) -> list[str | None]:
    return [r["id"] for r in sorted(read_records(out), key=lambda r: r["seq"])]


async def test_a_range_the_store_fails_a_few_times_is_read_again(s3: S3, tmp_path: Path) -> None:
    n = 1100
    url = s3.put(f"{s3.bucket('lake')}/in.jsonl", _jsonl(n))
    faults = Faults("/lake/in.jsonl", after=1, times=len(PAUSES))  # the 2nd range, mid-file
    async with faulty_store(s3, faults) as proxy:
        code, err = await _run(proxy, url, "-o", "out.jsonl", cwd=tmp_path)
    assert faults.failed == len(PAUSES)
    assert code == 0, err
    records = read_records(tmp_path / "out.jsonl")
    assert all(r["ok"] for r in records)
    assert _ids(tmp_path / "out.jsonl") == [f"g{i}" for i in range(n)]  # once each, in order


async def test_resume_sends_what_a_store_that_stayed_down_left_unread(
    s3: S3, tmp_path: Path
) -> None:
    n = 1100
    url = s3.put(f"{s3.bucket('lake')}/in.jsonl", _jsonl(n))
    faults = Faults("/lake/in.jsonl", after=1, times=10**6)
    async with faulty_store(s3, faults) as proxy:
        code, err = await _run(proxy, url, "-o", "out.jsonl", cwd=tmp_path)
        assert code == 1, err
        assert faults.failed == len(PAUSES) + 1  # tried again, then the file ends
        records = read_records(tmp_path / "out.jsonl")
        last = records[-1]
        assert last["id"] is None
        assert last["error"].endswith("the rest of this file is unread")
        assert 0 < len(records) < n
        faults.times = 0  # the store answers again
        code, err = await _run(proxy, url, "-o", "out.jsonl", "--resume", cwd=tmp_path)
    assert code == 0, err
    records = read_records(tmp_path / "out.jsonl")
    assert all(r["ok"] for r in records)
    assert _ids(tmp_path / "out.jsonl") == [f"g{i}" for i in range(n)]


async def test_resume_sends_the_rows_of_a_parquet_object_left_unread(
    s3: S3, tmp_path: Path
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 2500
    table = pa.table({
        "id": [f"g{i}" for i in range(n)], "criteo-partner-id": [1] * n,
        "retailer-visitor-id": ["v"] * n, "event-type": ["viewHome"] * n,
        "page-id": ["viewHome_API_desktop"] * n,
        "pad": [os.urandom(4000).hex() for _ in range(n)],  # incompressible: 20 MB
    })  # fmt: skip
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=100)
    url = s3.put(f"{s3.bucket('lake')}/in.parquet", (tmp_path / "in.parquet").read_bytes())
    # Every read of the third 8 MiB block fails (not the footer's, at the file's end, read
    # as it opens): whatever the reader asks for first, and in what order, a batch of
    # rows (at most ~8 MB) lies in the first two blocks, read and sent.
    size = (tmp_path / "in.parquet").stat().st_size
    faults = Faults("/lake/in.parquet", after=0, times=10**6, from_byte=16 << 20,
                    to_byte=size - (1 << 20))  # fmt: skip
    async with faulty_store(s3, faults) as proxy:
        code, err = await _run(proxy, url, "-o", "out.jsonl", cwd=tmp_path)
        assert code == 1, err
        records = read_records(tmp_path / "out.jsonl")
        assert records[-1]["error"].endswith("the rest of this file is unread")
        assert 1 < len(records) < n, [r["error"] for r in records[:3]]  # mid-file
        faults.times = 0  # the store answers again
        code, err = await _run(proxy, url, "-o", "out.jsonl", "--resume", cwd=tmp_path)
    assert code == 0, err
    assert all(r["ok"] for r in read_records(tmp_path / "out.jsonl"))
    assert _ids(tmp_path / "out.jsonl") == [f"g{i}" for i in range(n)]


async def test_an_http_store_that_fails_mid_object_ends_the_file_with_one_redacted_record(
    tmp_path: Path,
) -> None:
    """An http(s) input whose store answers every range after the first 500, its reason
    quoting the URL's password and signature: aiohttp's error is no OSError, yet the
    file ends as an S3 one does (one "could not be read" record, exit 1), no traceback,
    and neither secret is written."""
    n = 1100
    data = _jsonl(n)
    gets = 0
    password, signature = "StOrEpAsSwOrD9", "SiGnAtUrEvAlUe77"

    async def serve(request: web.Request) -> web.StreamResponse:
        nonlocal gets
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data))})
        gets += 1
        if gets > 1:
            return web.Response(status=500, reason=f"Broken {signature} {password}")
        first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
        end = min(int(last), len(data) - 1)
        span = f"bytes {first}-{end}/{len(data)}"
        return web.Response(status=206, body=data[int(first) : end + 1],
                            headers={"Content-Range": span})  # fmt: skip

    app = web.Application()
    app.router.add_route("*", "/in.jsonl", serve)
    async with serving(app) as base:
        url = base.replace("://", f"://user:{password}@") + f"/in.jsonl?sig={signature}"
        code, err = await _run(base, url, "-o", "out.jsonl", "--summary", "s.json", cwd=tmp_path)
    assert gets == 1 + len(PAUSES) + 1, gets  # the first range, then tried again
    assert code == 1, err
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    records = read_records(tmp_path / "out.jsonl")
    assert 0 < len(records) < n
    assert records[-1]["error"].endswith("the rest of this file is unread")
    assert len([r for r in records if r["id"] is None]) == 1
    written = (tmp_path / "out.jsonl").read_text() + (tmp_path / "s.json").read_text() + err
    assert password not in written
    assert signature not in written


async def test_an_http_store_that_answers_ranges_short_ends_the_file_with_one_record(
    tmp_path: Path,
) -> None:
    """A store (or a proxy) that answers every range 206 with 10 bytes: the short range
    is a failed read, tried again and then told in the file's one "could not be read"
    record, where fsspec asked again for the rest, a few bytes a time, for minutes, and
    made an over-long line of the junk."""
    data = _jsonl(1100)
    gets = 0

    async def serve(request: web.Request) -> web.StreamResponse:
        nonlocal gets
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data))})
        gets += 1
        first = int(request.headers["Range"].removeprefix("bytes=").partition("-")[0])
        span = f"bytes {first}-{first + 9}/{len(data)}"
        return web.Response(status=206, body=b"z" * 10, headers={"Content-Range": span})

    app = web.Application()
    app.router.add_route("*", "/in.jsonl", serve)
    async with serving(app) as base:
        code, err = await _run(base, f"{base}/in.jsonl", "-o", "out.jsonl", cwd=tmp_path)
    assert gets == len(PAUSES) + 1, gets
    assert code == 1, err
    (record,) = read_records(tmp_path / "out.jsonl")
    assert re.fullmatch(
        r"input could not be read \(the store sent 10 of the \d+ bytes asked for\); "
        r"the rest of this file is unread",
        record["error"],
    ), record["error"]
