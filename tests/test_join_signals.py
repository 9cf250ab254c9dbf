"""The end of a run to `-o s3://...` and of `adbatch merge -o s3://...`, when a signal or
the store stops it: the summary still printed and written, the parts kept for --resume,
no incomplete multipart upload left behind.

Against moto on 127.0.0.1 (the `s3` fixture), through a proxy the test starts on
127.0.0.1 that holds (or refuses) the uploads of the output's own key, so that the
signal lands while the join or the merge is under way. Slow: each test runs the CLI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import orjson
import pytest
from aiohttp import web
from conftest import events
from s3server import S3, forward_to_moto
from web_app import serving

from engine.cli.main import main
from engine.mock import running_mock

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
_REFUSED = b"<Error><Code>AccessDenied</Code><Message>injected</Message></Error>"

#: What the proxy does with a request: None forwards it, "hold" keeps it unanswered,
#: a number answers that status.
Rule = Callable[[web.Request], "str | int | None"]


@asynccontextmanager
async def store_behind(s3: S3, rule: Rule) -> AsyncIterator[tuple[str, anyio.Event]]:
    """A proxy in front of moto applying `rule`; yields its URL and an event set when a
    request is held."""
    held, release = anyio.Event(), anyio.Event()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        action = rule(request)
        if action == "hold":
            held.set()
            await release.wait()
            action = 503
        if isinstance(action, int):
            return web.Response(status=action, body=_REFUSED, content_type="application/xml")
        return await forward_to_moto(s3, request, body)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", forward)
    async with serving(app) as url:
        try:
            yield url, held
        finally:
            release.set()


def adbatch(*args: str, proxy: str | None, err: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ADBATCH_TOKEN": "mock-token", "PYTHONPATH": str(ROOT)}
    if proxy is not None:
        env |= {"AWS_ENDPOINT_URL": proxy, "AWS_MAX_ATTEMPTS": "1"}
    with err.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "engine", *args],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip


async def wait_exit(proc: subprocess.Popen[bytes], limit: float) -> int:
    with anyio.fail_after(limit):
        while proc.poll() is None:  # noqa: ASYNC110 - a child's exit is no anyio event
            await anyio.sleep(0.02)
    return proc.returncode


def pending(s3: S3, bucket: str) -> list[str]:
    uploads = s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sorted(u["Key"] for u in uploads)


def put_of(path: str) -> Rule:
    """The PUTs of the object at `path` (`/bucket/key`), a part of its upload too."""
    return lambda request: "hold" if request.method == "PUT" and request.path == path else None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_a_signal_during_the_join_is_told_in_the_summary_and_resume_joins(
    tmp_path: Path, write_jsonl: Callable[..., Path], s3: S3, signum: signal.Signals
) -> None:
    s3.bucket("hold")
    url, summary = "s3://hold/out.jsonl", tmp_path / "summary.json"
    inputs = write_jsonl(events(40))
    async with running_mock() as mock:
        run = ("run", "--endpoint", mock.delivery_url, "-o", url, "--no-progress", str(inputs))
        async with store_behind(s3, put_of("/hold/out.jsonl")) as (proxy, held):
            proc = adbatch(*run, "--summary", str(summary), proxy=proxy, err=tmp_path / "e1")
            with anyio.fail_after(30):
                await held.wait()  # the join's PUT of the output object
            proc.send_signal(signum)
            code = await wait_exit(proc, 30)
        err = (tmp_path / "e1").read_text()
        assert code == 128 + signum, err
        assert "adbatch: 40 events in" in err
        assert (
            f"stopped: interrupted by {signum.name} while the parts of output {url} were "
            "joined: they are kept; run again with --resume to join them"
        ) in err
        assert "Traceback" not in err
        told = orjson.loads(summary.read_bytes())
        assert told["exit_code"] == 128 + signum
        assert told["summary"]["interrupted"] == signum
        assert s3.keys("s3://hold/out.jsonl") != ["out.jsonl"]  # parts only, no object
        assert pending(s3, "hold") == []
        resumed = adbatch(*run, "--resume", proxy=None, err=tmp_path / "e2")
        assert await wait_exit(resumed, 60) == 0, (tmp_path / "e2").read_text()
    assert len(s3.get(url).splitlines()) == 40
    assert s3.keys("s3://hold/out.jsonl.parts") == []


async def test_a_join_that_fails_still_prints_and_writes_the_summary(
    tmp_path: Path, write_jsonl: Callable[..., Path], s3: S3
) -> None:
    s3.bucket("hold")
    url, summary = "s3://hold/out.jsonl", tmp_path / "summary.json"

    def refuse(request: web.Request) -> int | None:
        output = request.method in ("PUT", "POST") and request.path == "/hold/out.jsonl"
        return 403 if output else None

    async with running_mock() as mock, store_behind(s3, refuse) as (proxy, _):
        proc = adbatch(
            "run", "--endpoint", mock.delivery_url, "-o", url, "--no-progress",
            "--summary", str(summary), str(write_jsonl(events(30))),
            proxy=proxy, err=tmp_path / "e",
        )  # fmt: skip
        code = await wait_exit(proc, 60)
    err = (tmp_path / "e").read_text()
    assert code == 3, err
    assert "adbatch: 30 events in" in err
    assert f"stopped: cannot join the parts of output {url}" in err
    told = orjson.loads(summary.read_bytes())
    assert told["exit_code"] == 3
    assert told["summary"]["ok"] == 30
    assert told["summary"]["stopped"].startswith(f"cannot join the parts of output {url}")
    assert pending(s3, "hold") == []


def _records(path: Path, n: int) -> None:
    """`n` adbatch records of 4 KB each (12 MiB for 3000: a multipart upload)."""
    pad = "z" * 4000
    lines = (orjson.dumps({"seq": i, "id": f"r{i}", "source": f"e:{i + 1}", "pad": pad})
             for i in range(n))  # fmt: skip
    path.write_bytes(b"".join(line + b"\n" for line in lines))


async def test_merge_stopped_by_sigterm_aborts_its_upload(tmp_path: Path, s3: S3) -> None:
    s3.bucket("hold")
    part = tmp_path / "all-0.jsonl"
    _records(part, 3000)
    merge = ("merge", str(part), "-o", "s3://hold/all.jsonl")
    async with store_behind(s3, put_of("/hold/all.jsonl")) as (proxy, held):
        proc = adbatch(*merge, proxy=proxy, err=tmp_path / "e")
        with anyio.fail_after(30):
            await held.wait()  # a part of the multipart upload
        assert pending(s3, "hold") == ["all.jsonl"]
        proc.send_signal(signal.SIGTERM)
        code = await wait_exit(proc, 30)
    err = (tmp_path / "e").read_text()
    assert code == 143, err
    assert err == (
        "adbatch: merge interrupted by SIGTERM before s3://hold/all.jsonl was written "
        "whole; run it again\n"
    )
    assert pending(s3, "hold") == []
    assert s3.keys("s3://hold/all.jsonl") == []


def test_merge_aborts_the_uploads_a_killed_merge_left(tmp_path: Path, s3: S3) -> None:
    s3.bucket("left")
    client = s3.client()
    for key in ("all.jsonl", "all.jsonl.tmp-0123abcd", "other.jsonl"):  # as kill -9 leaves
        upload = client.create_multipart_upload(Bucket="left", Key=key)["UploadId"]
        client.upload_part(Bucket="left", Key=key, UploadId=upload, PartNumber=1, Body=b"x")
    part = tmp_path / "all-0.jsonl"
    _records(part, 3)
    assert main(["merge", str(part), "-o", "s3://left/all.jsonl"]) == 0
    assert pending(s3, "left") == ["other.jsonl"], "only the output's own are aborted"
    assert len(s3.get("s3://left/all.jsonl").splitlines()) == 3
