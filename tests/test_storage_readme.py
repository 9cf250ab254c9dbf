"""README's "Object storage" output commands (issue 17), run as written against moto on
127.0.0.1 (the `s3` fixture) and the embedded mock (`--mock`), one after the other as a
user would: a run to `-o s3://`, its `--resume`, two shards and their merge by a glob, a
replay of an access log in S3 (its endpoint given by `--storage-option`), and the one
batch job from S3 Parquet to S3 JSONL. Listed in tests/test_docs.py's ELSEWHERE.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import exactly_once, pageview_rows, pageview_table
from s3server import S3

ROOT = Path(__file__).resolve().parent.parent

#: As written in README.md, in its order.
OUTPUT_COMMANDS = (
    "adbatch run events.jsonl -o s3://results/ads.jsonl --part-size 16MiB --part-seconds 30s",
    "adbatch run events.jsonl -o s3://results/ads.jsonl --resume   # after a crash: what the "
    "parts lack",
    "adbatch run --shard 0/2 events.jsonl -o s3://results/shard-0.jsonl",
    "adbatch run --shard 1/2 events.jsonl -o s3://results/shard-1.jsonl",
    "adbatch merge 's3://results/shard-*.jsonl' -o s3://results/all.jsonl",
    "adbatch replay s3://logs/access.log.gz --speed 50 -o s3://results/replay.jsonl",
)
PARQUET_JOB = (
    "adbatch run 's3://lake/pageviews/2026-11-29/*.parquet' -o s3://results/ads-2026-11-29.jsonl"
)


def run(command: str, cwd: Path, s3: S3) -> subprocess.CompletedProcess[str]:
    """`command` with the mock instead of the delivery API (merge sends nothing)."""
    line = command.replace("adbatch merge", f"{sys.executable} -m engine merge")
    for verb in ("run", "replay"):
        line = line.replace(f"adbatch {verb}", f"{sys.executable} -m engine {verb} --mock")
    env = dict(os.environ)
    if " replay " in line:  # the endpoint by --storage-option, not by the environment
        del env["AWS_ENDPOINT_URL"]
        line += f" --storage-option endpoint_url={s3.endpoint}"
    return subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
        check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def records(s3: S3, url: str) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in s3.get(url).splitlines()]


@pytest.mark.slow
def test_the_readme_storage_output_commands_run(s3: S3, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    events = (ROOT / "examples" / "pageviews.jsonl").read_bytes()
    n = events.count(b"\n")
    (tmp_path / "events.jsonl").write_bytes(events)
    s3.bucket("results")
    s3.bucket("logs")
    s3.put("s3://logs/access.log.gz", gzip.compress((ROOT / "examples/access.log").read_bytes()))
    for command in OUTPUT_COMMANDS:
        assert command in readme
        done = run(command, tmp_path, s3)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
    exactly_once(records(s3, "s3://results/ads.jsonl"), n)
    manifest = orjson.loads(s3.get("s3://results/ads.jsonl.manifest.json"))
    assert manifest["rows"] == n
    shard = orjson.loads(s3.get("s3://results/shard-1.jsonl.manifest.json"))
    assert (shard["shard"], shard["records"]) == ([1, 2], n)
    exactly_once(records(s3, "s3://results/all.jsonl"), n)
    assert orjson.loads(s3.get("s3://results/all.jsonl.manifest.json"))["exactly_once"] is True
    assert len(records(s3, "s3://results/replay.jsonl")) == 40
    assert [k for k in s3.keys("s3://results/") if ".parts/" in k] == []
    assert s3.client().list_multipart_uploads(Bucket="results").get("Uploads", []) == []


@pytest.mark.slow
def test_the_readme_parquet_to_s3_job_runs(s3: S3, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    import io

    assert PARQUET_JOB in (ROOT / "README.md").read_text()
    rows = pageview_rows()
    s3.bucket("lake")
    s3.bucket("results")
    for i, half in enumerate((rows[:25], rows[25:])):
        buffer = io.BytesIO()
        table = pageview_table(half, like=rows)
        pq.write_table(table, buffer, row_group_size=8)
        s3.put(f"s3://lake/pageviews/2026-11-29/part-{i}.parquet", buffer.getvalue())
    done = run(PARQUET_JOB, tmp_path, s3)
    assert done.returncode == 0, done.stderr
    out = records(s3, "s3://results/ads-2026-11-29.jsonl")
    exactly_once(out, len(rows))
    assert all(r["status"] == 200 for r in out)
    assert {str(r["source"]).rpartition(":")[0] for r in out} == {
        "s3://lake/pageviews/2026-11-29/part-0.parquet",
        "s3://lake/pageviews/2026-11-29/part-1.parquet",
    }
    assert list(tmp_path.iterdir()) == []  # nothing on the local disk
