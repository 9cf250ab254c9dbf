"""Issue 17: an input URL's credentials (a password, a signed URL's query values) are never
written to a file or an object (the Ray plan, the manifests, the series file), while the
Ray plan still reads each shard by the real URL; an `-o` URL with a query, a fragment or an
empty path segment is refused at config time (exit 2, one line).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import get_object as _get
from conftest import padded_jsonl as _jsonl
from conftest import put_object as _put

import engine
from engine.config import Config
from engine.core.urls import written
from engine.errors import ConfigError
from engine.files.manifests import write_shard_manifest

pytest.importorskip("fsspec")

SECRET = "S3cr3tPw"
SIGNED = f"?AWSAccessKeyId=AKIDEXAMPLE&Signature={SECRET}"


@pytest.fixture
def root(memory_root: str) -> str:
    return memory_root


def test_written_hides_a_urls_credentials_and_keeps_a_local_path() -> None:
    assert written(f"http://alice:{SECRET}@127.0.0.1:45200/h.jsonl") == (
        "http://alice:[redacted]@127.0.0.1:45200/h.jsonl"
    )
    assert SECRET not in written(f"https://bucket.example/x.jsonl{SIGNED}")
    assert written("/data/a?b=1.jsonl") == "/data/a?b=1.jsonl"  # a file's name, as given


def test_the_ray_plan_and_manifest_hold_no_signature_and_a_rerun_reads_the_real_url(
    root: str,
) -> None:
    from engine.distributed.join import join_parts
    from engine.distributed.plan import prepare
    from engine.distributed.store import StoreParts, parts_at

    source = _put(f"{root}/pv/a.jsonl{SIGNED}", _jsonl(300))
    out = f"{root}/out/ads.jsonl"
    config = engine.Config(inputs=(source,), output=out, dry_run=True)
    parts = parts_at(out, (), "/nowhere")
    assert isinstance(parts, StoreParts)
    plan, _ = prepare(config, parts, 2, 3)
    assert len(plan) >= 2
    assert all(t.path == source for t in plan)
    stored = _get(f"{out}.parts/plan.json")
    assert SECRET.encode() not in stored
    assert b"a.jsonl?AWSAccessKeyId=[redacted]" in stored

    again, todo = prepare(config, parts, 2, 3)  # a rerun: the stored plan matches
    assert again == plan
    assert todo == plan

    for task in plan:
        scratch = parts.scratch(task.index)
        Path(scratch).write_bytes(b'{"seq":%d}\n' % task.index)
        parts.commit(scratch, task.index, {"index": task.index, "stats": {}})
    join_parts(plan, parts, out, ())
    manifest = _get(f"{out}.manifest.json")
    assert SECRET.encode() not in manifest
    assert {p["input"] for p in orjson.loads(manifest)["parts"]} == {written(source)}


def test_a_shard_manifest_holds_no_password(tmp_path: Path) -> None:
    output = tmp_path / "part.jsonl"
    output.write_bytes(b'{"seq":0}\n')
    url = f"http://alice:{SECRET}@127.0.0.1:45200/h.jsonl"
    config = Config(inputs=(url, f"https://b.example/x.jsonl{SIGNED}"), output=str(output),
                    shard=(0, 2), dry_run=True)  # fmt: skip
    write_shard_manifest(config, records=1)
    text = (tmp_path / "part.jsonl.manifest.json").read_text()
    assert SECRET not in text
    assert orjson.loads(text)["inputs"][0] == "http://alice:[redacted]@127.0.0.1:45200/h.jsonl"


@pytest.mark.parametrize("backend", ["local", "ray"])
@pytest.mark.parametrize(
    ("output", "words"),
    [
        (f"s3://b/t/ads.jsonl?versionId={SECRET}", "cannot carry a query"),
        (f"s3://b/t/ads.jsonl#{SECRET}", "cannot carry a query (?versionId=...) or a fragment"),
        ("s3://b//x.jsonl", "empty path segment"),
        ("memory://b/t//x.jsonl", "empty path segment"),
    ],
)
def test_an_output_url_with_a_query_or_an_empty_segment_is_refused(
    output: str, words: str, backend: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Config(inputs=("a.jsonl",), output=output, backend=backend, dry_run=True).validated()
    message = str(caught.value)
    assert words in message
    assert SECRET not in message
    assert "\n" not in message


def test_a_plain_output_url_and_a_local_name_with_a_question_mark_pass(tmp_path: Path) -> None:
    Config(inputs=("a.jsonl",), output="s3://b/t/ads.jsonl", dry_run=True).validated()
    Config(inputs=("a.jsonl",), output="file:///tmp/ads.jsonl", dry_run=True).validated()
    Config(inputs=("a.jsonl",), output=str(tmp_path / "what?x=1.jsonl"), dry_run=True).validated()


def test_the_cli_refuses_a_versioned_output_in_one_line_exit_2(tmp_path: Path) -> None:
    source = tmp_path / "a.jsonl"
    source.write_bytes(_jsonl(3))
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(source), "--dry-run",
         "-o", f"s3://b/t/ads.jsonl?versionId={SECRET}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "an output URL cannot carry a query (?versionId=...)" in done.stderr
    assert SECRET not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_the_series_file_header_names_inputs_without_credentials() -> None:
    from engine.core.secrets import Secrets
    from engine.load.series_file import header

    url = f"http://alice:{SECRET}@127.0.0.1:45200/h.jsonl"
    config = Config(inputs=(url,), dry_run=True)
    line = header(config, Secrets(), mode="load", start=None)
    assert SECRET not in orjson.dumps(line).decode()
    assert line["inputs"] == ["http://alice:[redacted]@127.0.0.1:45200/h.jsonl"]


def test_the_series_header_shows_no_fragment_of_an_http_url() -> None:
    """Must show: an --endpoint's or --token-url's #fragment (never sent; a token may sit
    there) is [redacted] in the series header as its password and query values are, and
    an http(s) input's too; a storage URL's '#' is part of its key and stays."""
    from engine.core.secrets import Secrets
    from engine.load.series_file import header

    endpoint = "http://usr:pw@127.0.0.1:19220/delivery/retailmedia?apikey=K#FRAGSECRET"
    config = Config(
        inputs=("s3://b/a#1.jsonl", "https://127.0.0.1:9/x.jsonl#INPUTFRAG"),
        endpoint=endpoint,
        token_url="https://127.0.0.1:9/oauth2/token#TOKENFRAG",
        dry_run=True,
    )
    line = header(config, Secrets(), mode="load", start=None)
    text = orjson.dumps(line).decode()
    assert "FRAGSECRET" not in text
    assert "TOKENFRAG" not in text
    assert "INPUTFRAG" not in text
    assert line["options"]["endpoint"] == (
        "http://usr:[redacted]@127.0.0.1:19220/delivery/retailmedia?apikey=[redacted]#[redacted]"
    )
    assert line["inputs"] == ["s3://b/a#1.jsonl", "https://127.0.0.1:9/x.jsonl#[redacted]"]
