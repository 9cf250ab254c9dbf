"""-o URL end to end (issue 17, 2): kill -9 mid-run, `--resume` finishes it exactly once,
in one process and with --workers 2; `adbatch merge` agrees. Subprocesses: slow.

`file://` runs everywhere; the same runs against S3 (moto on 127.0.0.1) when the `s3`
fixture is there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import fsspec
import orjson
import pytest
from conftest import exactly_once
from test_interrupt import events

from engine.files.manifests import manifest_path
from engine.files.partjoin import Earlier, join
from engine.files.parts import PartLimits, PartSink, list_parts
from engine.files.storage import filesystem
from engine.mock import MockConfig, MockHandle, running_mock

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


def adbatch(*args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "ADBATCH_TOKEN": "mock-token", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "engine", *args], env=environ, **popen)


def start(
    mock: MockHandle, inputs: Path, url: str, err: Path, *args: str
) -> subprocess.Popen[bytes]:
    with err.open("wb") as stderr:
        return adbatch(
            "run", "--endpoint", mock.delivery_url, "-o", url, "--no-progress", *args,
            str(inputs), stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip


async def wait_exit(proc: subprocess.Popen[bytes], limit: float) -> int:
    with anyio.fail_after(limit):
        while proc.poll() is None:  # noqa: ASYNC110 - a child's exit is no anyio event
            await anyio.sleep(0.02)
    return proc.returncode


def rows_in_parts(fs: Any, path: str) -> int:
    return sum(fs.cat_file(p).count(b"\n") for p in list_parts(fs, path))


def s3_fixture(request: pytest.FixtureRequest) -> Any:
    """The `s3` fixture (tests/s3server.py: moto on 127.0.0.1); a skip where it is not."""
    try:
        return request.getfixturevalue("s3")
    except pytest.FixtureLookupError:
        pytest.skip("no s3 fixture here (tests/s3server.py)")


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, str, str]:
    """(fs, path, URL) of an output on a local store, or on S3 (moto on 127.0.0.1)."""
    if request.param == "file":
        path = str(tmp_path / "store" / "out.jsonl")
        return fsspec.filesystem("file"), path, f"file://{path}"
    s3 = s3_fixture(request)
    url = f"{s3.bucket('answers')}/run/out.jsonl"
    fs, path = filesystem(url)
    return fs, path, url


@pytest.mark.parametrize("procs", [[], ["--workers", "2"]], ids=["1-process", "workers"])
async def test_kill_9_then_resume_to_a_url(
    tmp_path: Path,
    write_jsonl: Callable[..., Path],
    procs: list[str],
    store: tuple[Any, str, str],
) -> None:
    n = 1500
    inputs = write_jsonl(events(n))
    fs, path, url = store
    parts = ["--part-size", "64k", "--part-seconds", "0.5"]
    async with running_mock(MockConfig(latency=0.04)) as mock:
        proc = start(mock, inputs, url, tmp_path / "err1", "-c", "16", *parts, *procs)
        with anyio.fail_after(30):
            while rows_in_parts(fs, path) < 300:
                assert proc.poll() is None, (tmp_path / "err1").read_text()
                await anyio.sleep(0.05)
        proc.kill()
        assert await wait_exit(proc, 10) == -signal.SIGKILL
    kept = rows_in_parts(fs, path)
    fs.invalidate_cache()
    assert 300 <= kept < n
    assert not fs.exists(path), "a killed run joins nothing"
    async with running_mock(MockConfig()) as mock:
        resumed = start(mock, inputs, url, tmp_path / "err2", "--resume", *parts, *procs)
        assert await wait_exit(resumed, 60) == 0, (tmp_path / "err2").read_text()
        calls = mock.state.delivery_requests
    assert calls == n - kept  # the parts' events are not sent again; the others once
    records = [orjson.loads(x) for x in fs.cat_file(path).splitlines()]
    exactly_once(records, n)
    assert list_parts(fs, path) == []
    assert orjson.loads(fs.cat_file(manifest_path(path)))["rows"] == n
    # adbatch merge reads the joined object and says exactly once.
    merged = tmp_path / "merged.jsonl"
    check = adbatch("merge", url, "-o", str(merged), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = check.communicate(timeout=60)
    assert check.returncode == 0, err.decode()
    assert b"exactly once" in out + err


def test_parts_of_5_mib_are_joined_on_the_server_side(request: pytest.FixtureRequest) -> None:
    """S3 joins parts by UploadPartCopy when every part but the last is >= 5 MiB."""
    s3 = s3_fixture(request)
    url = f"{s3.bucket('big')}/out.jsonl"
    fs, path = filesystem(url)
    line = b'{"seq":0,"pad":"' + b"x" * 1000 + b'"}\n'
    data = line * 12_000  # about 12 MiB: three parts
    sink = PartSink(fs, path, name=url, limits=PartLimits(size=5 << 20, seconds=3600),
                    finish=lambda sink: join(sink, Earlier()))  # fmt: skip
    for i in range(0, len(data), 1 << 20):
        sink.write(data[i : i + (1 << 20)])
    sink.close(check=True)
    assert len(sink.parts) == 3
    assert s3.get(url) == data
    manifest = orjson.loads(s3.get(manifest_path(url)))
    assert manifest["joined"] == "server-side"
    assert s3.keys("s3://big/out.jsonl.parts") == []
