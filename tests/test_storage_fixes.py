"""Object storage, what an adversarial tester found (issue 17, second pass): an output
named by another spelling of an input, secrets in `source`, multipart uploads left by a
kill -9, a missing bucket found late, drivers' tracebacks, and the error texts.

Fast tests run in-process (memory://, file://, or no store at all); those that need S3's
own rules run against moto on 127.0.0.1 (the `s3` fixture), marked slow.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from conftest import config_for, read_records
from s3server import S3
from test_parts import events

from engine import api
from engine.cli.argtypes import part_size
from engine.config import Config
from engine.errors import ConfigError, InputError
from engine.files.paths import check_outputs
from engine.files.storage import expand, storage_kwargs, write_object
from engine.files.urlmerge import expand_parts
from engine.mock import running_mock


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True,
        timeout=120, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


# -- 1. an output never touches an input, however either is spelled ---------------------


@pytest.mark.parametrize(
    ("given", "output"),
    [
        pytest.param("s3://b/in.jsonl", "s3a://b/in.jsonl", id="s3a"),
        pytest.param("S3://b/in.jsonl", "s3://b/in.jsonl", id="scheme-case"),
        pytest.param("gs://b/in.jsonl", "gcs://b/in.jsonl", id="gcs"),
        pytest.param("az://c/in.jsonl", "abfs://c/in.jsonl", id="abfs"),
        pytest.param("memory://x/in.jsonl", "memory:///x/in.jsonl", id="memory-root"),
    ],
)
def test_a_store_alias_names_the_same_object(given: str, output: str) -> None:
    # The aliases are the driver's own protocols: without its driver a URL stands for
    # itself, and can be neither read nor cleared, so nothing is at risk (CI installs s3).
    driver = {"gs": "gcsfs", "az": "adlfs", "s3": "s3fs", "S3": "s3fs"}.get(given[:2])
    if driver is not None:
        pytest.importorskip(driver)
    with pytest.raises(ConfigError, match="same file as the input"):
        check_outputs([("input", given)], [("-o", output)])


def test_other_objects_are_not_the_same() -> None:
    check_outputs([("input", "s3://b/in.jsonl")], [("-o", "gs://b/in.jsonl")])
    check_outputs([("input", "s3://b/in.jsonl")], [("-o", "s3://b/out.jsonl")])


@pytest.mark.parametrize(
    ("url_input", "role"),
    [
        pytest.param(False, "-o", id="path-in-url-out"),
        pytest.param(True, "-o", id="url-in-path-out"),
        pytest.param(True, "--summary", id="url-in-path-summary"),
    ],
)
@pytest.mark.anyio
async def test_a_file_url_is_its_local_file(
    tmp_path: Path, write_jsonl: Callable[..., Path], url_input: bool, role: str
) -> None:
    source = write_jsonl(events(3), name="in.jsonl")
    before = source.read_bytes()
    url = f"file://{source}"
    async with running_mock() as mock:
        config = config_for(mock, source, tmp_path / "out.jsonl")
        if url_input:
            config = config.with_changes(inputs=(url,))
        if role == "--summary":
            config = config.with_changes(summary=str(source))
        else:
            config = config.with_changes(output=str(source) if url_input else url)
        with pytest.raises(ConfigError, match="same file as the input"):
            await api.run(config)
    assert source.read_bytes() == before, "the input must be untouched"
    assert not (tmp_path / "in.jsonl.parts").exists()


@pytest.mark.slow
def test_s3a_output_on_its_s3_input_is_refused_before_anything_is_removed(
    tmp_path: Path, s3: S3
) -> None:
    s3.bucket("fix-alias")
    data = b"".join(orjson.dumps(e) + b"\n" for e in events(2))
    s3.put("s3://fix-alias/in.jsonl", data)
    done = _cli("run", "--mock", "s3://fix-alias/in.jsonl", "-o", "s3a://fix-alias/in.jsonl",
                cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "same file as the input" in done.stderr
    assert "Traceback" not in done.stderr
    assert s3.get("s3://fix-alias/in.jsonl") == data


# -- 2. a URL's password and query values never reach a record's `source` ----------------


@pytest.mark.anyio
async def test_source_hides_a_urls_password_and_query_and_resume_matches_it(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    from aiohttp import web

    n = 4
    source = write_jsonl(events(n), name="x.jsonl")

    async def serve(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(source)

    app = web.Application()
    app.router.add_get("/x.jsonl", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://user:pw-SECRET@127.0.0.1:{port}/x.jsonl?sig=SIG-SECRET&v=1"
    out = tmp_path / "out.jsonl"
    try:
        async with running_mock() as mock:
            config = config_for(mock, source, out).with_changes(inputs=(url,))
            assert (await api.run(config)).exit_code == 0
            first = out.read_bytes()
            assert b"SECRET" not in first
            hidden = f"http://user:[redacted]@127.0.0.1:{port}/x.jsonl?sig=[redacted]&v=[redacted]"
            assert [r["source"] for r in read_records(out)] == [
                f"{hidden}:{i + 1}" for i in range(n)
            ]
            sent = mock.state.delivery_requests
            again = await api.run(config.with_changes(resume=True))
            assert again.exit_code == 0
            assert out.read_bytes() == first, "--resume must find every event answered"
            assert mock.state.delivery_requests == sent, "no event may be sent again"
    finally:
        await runner.cleanup()


# -- 3. a join killed mid-way leaves no incomplete multipart upload for long -------------


def _pending(s3: S3, bucket: str) -> list[str]:
    uploads = s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sorted(u["Key"] for u in uploads)


def _leave_upload(s3: S3, bucket: str, key: str) -> None:
    """What a join killed by kill -9 leaves: an upload with a part, never completed."""
    client = s3.client()
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
@pytest.mark.anyio
async def test_uploads_left_by_a_killed_join_are_aborted(
    tmp_path: Path, write_jsonl: Callable[..., Path], s3: S3, resume: bool
) -> None:
    s3.bucket("fix-mpu")
    for key in ("out.jsonl", "out.jsonl.tmp-0123abcd", "other.jsonl"):
        _leave_upload(s3, "fix-mpu", key)
    async with running_mock() as mock:
        config = config_for(mock, write_jsonl(events(3)), tmp_path / "x").with_changes(
            output="s3://fix-mpu/out.jsonl", resume=resume
        )
        assert (await api.run(config)).exit_code == 0
    assert _pending(s3, "fix-mpu") == ["other.jsonl"], "only the output's own are aborted"
    assert len(s3.get("s3://fix-mpu/out.jsonl").splitlines()) == 3


# -- 4. a missing bucket is exit 2 before anything is sent --------------------------------


@pytest.mark.slow
def test_an_output_in_a_missing_bucket_is_refused_before_the_run(
    tmp_path: Path, write_jsonl: Callable[..., Path], s3: S3
) -> None:
    source = write_jsonl(events(2))
    done = _cli("run", "--mock", str(source), "-o", "s3://nosuchbucket/x.jsonl", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "nosuchbucket does not exist" in lines[0]


# -- 5. a driver's log records (gcsfs's tracebacks) never reach stderr --------------------


_LOG_AS_A_DRIVER = """
import logging, sys
from engine.files.storage import filesystem
filesystem("memory://quiet/x.jsonl")
for name in sys.argv[1:]:
    try:
        raise ConnectionRefusedError(111, "Connect call failed")
    except ConnectionRefusedError:
        logging.getLogger(name + ".core").error("request failed", exc_info=True)
"""


def test_driver_loggers_are_quiet_once_a_store_is_used(tmp_path: Path) -> None:
    names = ["gcsfs", "adlfs", "s3fs", "fsspec", "aiobotocore", "botocore"]
    done = subprocess.run(
        [sys.executable, "-c", _LOG_AS_A_DRIVER, *names], cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


# -- 6. the error texts --------------------------------------------------------------------

_DEAD_S3 = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # discard: nothing listens on 127.0.0.1
    "AWS_MAX_ATTEMPTS": "1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param(("s3://b/x.jsonl", "-o", "out.jsonl"), "cannot read input", id="input"),
        pytest.param(("IN", "-o", "s3://b/x.jsonl"), "output s3://b/x.jsonl", id="output"),
    ],
)
def test_a_store_that_cannot_be_reached_is_not_a_missing_object(
    tmp_path: Path, write_jsonl: Callable[..., Path], args: tuple[str, ...], says: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    pytest.importorskip("s3fs")
    for var, value in _DEAD_S3.items():
        monkeypatch.setenv(var, value)
    source = str(write_jsonl(events(1)))
    done = _cli("run", "--mock", *(source if a == "IN" else a for a in args), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert says in done.stderr
    assert "cannot reach the store" in done.stderr
    assert "no such object" not in done.stderr


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 503])
async def test_an_http_store_that_fails_is_not_a_missing_object(
    tmp_path: Path, status: int
) -> None:
    """fsspec's http driver raises FileNotFoundError for a 5xx too: the message says
    what the store answered ("no such object" sent users looking for a missing file)."""
    pytest.importorskip("fsspec")
    import anyio
    from aiohttp import web
    from web_app import serving

    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=status, text="busy")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", busy)
    async with serving(app) as base:
        done = await anyio.run_process(
            [sys.executable, "-m", "engine", "run", "--mock", f"{base}/p/x.jsonl", "-o", "o"],
            cwd=tmp_path,
            check=False,
        )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert f"cannot read input {base}/p/x.jsonl: the store answered HTTP {status}" in err
    assert "no such object" not in err


def test_an_option_the_driver_does_not_take_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("s3fs")
    for var, value in _DEAD_S3.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(InputError) as caught:
        expand("s3://b/x.jsonl", (("bogus_opt", "1"),))
    message = str(caught.value)
    assert message.endswith("the driver does not take the storage option bogus_opt"), message
    assert "TypeError" not in message
    assert "__init__" not in message


def test_a_kwargs_option_must_be_given_as_a_table() -> None:
    with pytest.raises(ConfigError, match=r"client_kwargs is a table: .*client_kwargs\.NAME"):
        storage_kwargs((("client_kwargs", "1"),))
    assert storage_kwargs((("client_kwargs.region_name", "x"),)) == {
        "client_kwargs": {"region_name": "x"}
    }


@pytest.mark.parametrize("option", ["summary", "series"])
def test_summary_and_series_take_local_paths(option: str) -> None:
    with pytest.raises(ConfigError, match=f"--{option} takes a local path"):
        Config(mock=True, **{option: "s3://b/x.json"}).validated()


@pytest.mark.parametrize("given", ["0", "1", "1023"])
def test_part_size_too_small_reads_the_same_at_both_checks(given: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"at least 1 KiB \(1024 bytes\)"):
        part_size(given)
    with pytest.raises(ConfigError, match=r"at least 1 KiB \(1024 bytes\)"):
        Config(mock=True, part_size=int(given)).validated()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/*.jsonl", "http://127.0.0.1:9/pv/", "https://127.0.0.1:9"],
)
def test_an_http_input_must_name_one_object(url: str) -> None:
    with pytest.raises(InputError, match=r"an http\(s\) input must name one object"):
        expand(url)


@pytest.mark.slow
def test_merge_to_a_missing_bucket_names_it(tmp_path: Path, s3: S3) -> None:
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"")
    done = _cli("merge", str(part), "-o", "s3://nosuchbucket/all.jsonl", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "the bucket nosuchbucket does not exist" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


# -- 7. smaller --------------------------------------------------------------------------


def test_merge_by_glob_skips_the_manifests_and_parts_it_catches() -> None:
    base = f"memory:///fix-merge-{uuid.uuid4().hex}"
    for name in ("shard-0.jsonl", "shard-0.jsonl.manifest.json", "shard-1.jsonl",
                 "shard-1.jsonl.parts/part-00000-ab12.jsonl"):  # fmt: skip
        write_object(f"{base}/{name}", b"")
    assert expand_parts((f"{base}/shard-*",)) == (f"{base}/shard-0.jsonl", f"{base}/shard-1.jsonl")
    assert expand_parts((f"{base}/",)) == (f"{base}/shard-0.jsonl", f"{base}/shard-1.jsonl")
    named = f"{base}/shard-0.jsonl.manifest.json"
    assert expand_parts((named,)) == (named,), "a part named in full is taken as given"


def test_run_help_says_output_may_be_a_url() -> None:
    from engine.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["run"].format_help().split())
    # (Python 3.13's argparse shows "-o, --output PATH", 3.11's "-o PATH, --output PATH")
    assert "--output PATH write JSONL records here: a file, or a URL" in text


@pytest.mark.anyio
async def test_a_file_url_output_leaves_no_parts_folder(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    out = tmp_path / "out.jsonl"
    async with running_mock() as mock:
        config = config_for(mock, write_jsonl(events(3)), out).with_changes(
            output=f"file://{out}", part_size=1024
        )
        assert (await api.run(config)).exit_code == 0
    assert len(read_records(out)) == 3
    assert sorted(os.listdir(tmp_path)) == [
        "events.jsonl", "out.jsonl", "out.jsonl.manifest.json"
    ]  # fmt: skip


def test_a_storage_option_table_may_hold_a_table(tmp_path: Path) -> None:
    from engine.cli.config_file import load_toml

    nested = tmp_path / "n.toml"
    nested.write_text(
        '[storage-option]\nanon = true\nclient_kwargs = {region_name = "eu-west-1"}\n'
        "[storage-option.config_kwargs]\nmax_pool_connections = 50\n"
    )
    assert load_toml(str(nested))["storage_options"] == (
        ("anon", "true"),
        ("client_kwargs.region_name", "eu-west-1"),
        ("config_kwargs.max_pool_connections", "50"),
    )


@pytest.mark.slow
def test_source_hides_a_urls_secrets_with_workers_too(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    import http.server
    import threading
    from functools import partial

    source = write_jsonl(events(4), name="x.jsonl")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        url = f"http://u:pw-SECRET@127.0.0.1:{port}/{source.name}?sig=SIG-SECRET"
        done = _cli("run", "--mock", "--workers", "2", url, "-o", "out.jsonl", cwd=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    records = read_records(tmp_path / "out.jsonl")
    assert len(records) == 4
    hidden = f"http://u:[redacted]@127.0.0.1:{port}/x.jsonl?sig=[redacted]"
    assert sorted(r["source"] for r in records) == [f"{hidden}:{i}" for i in range(1, 5)]
    assert "SECRET" not in (tmp_path / "out.jsonl").read_text() + done.stderr
