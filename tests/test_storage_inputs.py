"""URL inputs (issue 17 items 1 and 5): files/storage.py and the readers on top of it.

Fast tests use fsspec's in-memory store (`memory://`) and `file://`; the slow ones run the
CLI against moto's S3 server on 127.0.0.1 (tests/s3server.py, the `s3` fixture) and a
small aiohttp.web file server, with the real s3fs/botocore and fsspec http clients.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import exactly_once, read_records
from s3server import S3

from engine.config import Config
from engine.core.events import Event, ReadCounts
from engine.core.urls import parse_option, shown_option, without_credentials
from engine.errors import ConfigError, InputError
from engine.files.sources import check_inputs, read_items
from engine.files.storage import expand, filesystem, is_url, open_read, storage_kwargs

fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed: pip install '.[s3]'")

ROOT = Path(__file__).resolve().parent.parent


def _events(n: int, start: int = 0) -> list[dict[str, object]]:
    return [
        {"id": f"pv-{i}", "event-type": "viewHome", "page-id": "viewHome_API_desktop",
         "criteo-partner-id": 1, "retailer-visitor-id": f"v-{i}"}
        for i in range(start, start + n)
    ]


def _jsonl(rows: list[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _csv(rows: list[dict[str, object]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


@pytest.mark.parametrize(
    ("name", "url"),
    [
        pytest.param("s3://lake/pv/x.jsonl.gz", True, id="s3"),
        pytest.param("gs://b/k", True, id="gs"),
        pytest.param("file:///tmp/x.jsonl", True, id="file"),
        pytest.param("https://example.com/x.jsonl", True, id="https"),
        pytest.param("memory://a/b", True, id="memory"),
        pytest.param("-", False, id="stdin"),
        pytest.param("events.jsonl", False, id="relative"),
        pytest.param("/tmp/a://b", False, id="absolute-with-colon"),
        pytest.param("C:\\data\\x.jsonl", False, id="windows-drive"),
        pytest.param("x://y", False, id="one-letter-scheme"),
    ],
)
def test_is_url(name: str, url: bool) -> None:
    assert is_url(name) is url


@pytest.fixture
def lake() -> Iterator[str]:
    """Three objects and a stray one in fsspec's in-memory store, under a unique root."""
    fs = fsspec.filesystem("memory")
    root = f"/lake-{id(fs)}-{threading.get_ident()}"
    for name in ("2026-11-02/part-0.jsonl", "2026-11-01/part-1.jsonl", "2026-11-01/part-0.jsonl"):
        fs.pipe(f"{root}/pv/{name}", _jsonl(_events(2)))
    fs.pipe(f"{root}/pv/2026-11-01/_SUCCESS", b"")
    yield f"memory://{root}"
    fs.rm(root, recursive=True)


def test_a_glob_expands_to_its_objects_in_sorted_order(lake: str) -> None:
    found = expand(f"{lake}/pv/2026-11-*/part-*.jsonl")
    assert [u.rsplit("/pv/", 1)[1] for u in found] == [
        "2026-11-01/part-0.jsonl", "2026-11-01/part-1.jsonl", "2026-11-02/part-0.jsonl"
    ]
    assert all(is_url(u) for u in found)


def test_a_prefix_expands_to_every_object_under_it(lake: str) -> None:
    found = expand(f"{lake}/pv/")
    assert [u.rsplit("/pv/", 1)[1] for u in found] == [
        "2026-11-01/_SUCCESS", "2026-11-01/part-0.jsonl", "2026-11-01/part-1.jsonl",
        "2026-11-02/part-0.jsonl",
    ]


def test_a_plain_object_url_is_itself(lake: str) -> None:
    url = f"{lake}/pv/2026-11-01/part-0.jsonl"
    assert expand(url) == [url]


@pytest.mark.parametrize(
    ("tail", "words"),
    [
        pytest.param("/nothing-*/x.jsonl", "no objects match input", id="glob-no-match"),
        pytest.param("/pv/nope.jsonl", "no such object", id="missing-object"),
        pytest.param("/pv", "is a directory", id="directory"),
    ],
)
def test_what_does_not_expand_is_one_line(lake: str, tail: str, words: str) -> None:
    with pytest.raises(InputError) as caught:
        expand(lake + tail)
    message = str(caught.value)
    assert words in message
    assert lake in message
    assert "\n" not in message


def test_an_unknown_scheme_is_one_config_line() -> None:
    with pytest.raises(ConfigError, match=r"^nosuch://b/k: unknown storage scheme nosuch://"):
        filesystem("nosuch://b/k")


def test_a_missing_driver_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our message, not the client's: the driver's import is blocked, and fsspec's
    registry of imported drivers forgotten, for this test."""
    monkeypatch.setitem(sys.modules, "adlfs", None)
    monkeypatch.setattr(sys.modules["fsspec.registry"], "registry", types.MappingProxyType({}))
    with pytest.raises(ConfigError) as caught:
        filesystem("az://container/pv/x.jsonl")
    assert str(caught.value) == (
        "az://container/pv/x.jsonl: the az:// driver (adlfs) is not installed: "
        "pip install 'adbatch[azure]'"
    )


def test_reading_a_url_streams_events_with_url_line_sources(tmp_path: Path) -> None:
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(_csv(_events(2))))
    (tmp_path / "b.jsonl").write_bytes(b"\n" + _jsonl(_events(1, start=2)))
    inputs = [f"file://{tmp_path}/a.csv.gz", f"file://{tmp_path}/b.jsonl"]
    check_inputs(inputs)  # never stats a URL
    counts = ReadCounts()
    items = list(read_items(inputs, counts=counts))
    assert all(isinstance(i, Event) for i in items)
    assert [i.source for i in items] == [
        f"file://{tmp_path}/a.csv.gz:2", f"file://{tmp_path}/a.csv.gz:3",
        f"file://{tmp_path}/b.jsonl:2",
    ]
    assert counts.blank_lines == 1
    assert counts.bytes_read == sum(p.stat().st_size for p in tmp_path.iterdir())


def test_open_read_reads_by_ranges_not_whole(lake: str) -> None:
    stream = open_read(f"{lake}/pv/2026-11-01/part-0.jsonl")
    assert stream.read(3) == b'{"i'
    stream.close()


@pytest.mark.parametrize(
    ("text", "kwargs"),
    [
        pytest.param("endpoint_url=http://127.0.0.1:9000",
                     {"endpoint_url": "http://127.0.0.1:9000"}, id="string"),
        pytest.param("anon=true", {"anon": True}, id="boolean"),
        pytest.param("default_block_size=5242880", {"default_block_size": 5242880}, id="int"),
        pytest.param("client_kwargs.region_name=eu-west-1",
                     {"client_kwargs": {"region_name": "eu-west-1"}}, id="dotted"),
        pytest.param("version=1.5", {"version": "1.5"}, id="other-text"),
    ],
)
def test_storage_options_are_typed(text: str, kwargs: dict[str, object]) -> None:
    assert storage_kwargs((parse_option(text),)) == kwargs


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("hunter2-secret", id="no-equals"),
        pytest.param("=hunter2-secret", id="no-key"),
        pytest.param("a b=hunter2-secret", id="bad-key"),
        pytest.param("a.b.c=hunter2-secret", id="two-dots"),
    ],
)
def test_a_malformed_option_is_one_line_without_its_value(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_option(text)
    assert "hunter2" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_credentials_never_show() -> None:
    assert shown_option("secret", "hunter2") == "secret=[redacted]"
    assert shown_option("aws_session_token", "hunter2") == "aws_session_token=[redacted]"
    assert shown_option("key", "AKIA123") == "key=[redacted]"
    azure = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=S3CR3T==;EndpointSuffix=x"
    assert shown_option("connection_string", azure) == "connection_string=[redacted]"
    assert shown_option("endpoint_url", "http://u:pw@h:9/?sig=s") == (
        "endpoint_url=http://u:[redacted]@h:9/?sig=[redacted]"
    )
    assert without_credentials("https://h/pv/x.jsonl?X-Amz-Signature=abc") == (
        "https://h/pv/x.jsonl?X-Amz-Signature=[redacted]"
    )


def test_config_checks_storage_options() -> None:
    Config(storage_options=(("endpoint_url", "http://x"),), mock=True).validated()
    with pytest.raises(ConfigError, match="--storage-option"):
        Config(storage_options=(("a b", "x"),), mock=True).validated()


def test_the_config_file_takes_a_list_or_a_table(tmp_path: Path) -> None:
    from engine.cli.config_file import load_toml

    listed = tmp_path / "a.toml"
    listed.write_text('storage-option = ["endpoint_url=http://127.0.0.1:9000", "anon=true"]\n')
    table = tmp_path / "b.toml"
    table.write_text('[storage-option]\nendpoint_url = "http://127.0.0.1:9000"\nanon = true\n')
    expected = (("endpoint_url", "http://127.0.0.1:9000"), ("anon", "true"))
    assert load_toml(str(listed))["storage_options"] == expected
    assert load_toml(str(table))["storage_options"] == expected


def _cli(*args: str, cwd: Path, code: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["-c", code, *args] if code else ["-m", "engine", *args]
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=120,
        check=False, stdin=subprocess.DEVNULL,
    )


def test_config_show_hides_credential_options() -> None:
    from engine.cli.config_cmd import show_lines

    config = Config(
        storage_options=(("secret", "hunter2-x"), ("endpoint_url", "http://127.0.0.1:9000"))
    )
    line = next(x for x in show_lines(config, {}) if x.startswith("storage_options"))
    assert '"secret=[redacted]"' in line
    assert '"endpoint_url=http://127.0.0.1:9000"' in line
    assert "hunter2" not in line


# -- against real servers -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_run_reads_a_glob_of_gzip_jsonl_and_csv_objects(
    s3: S3, tmp_path: Path, workers: str
) -> None:
    s3.bucket("lake")
    s3.put("s3://lake/pv/2026-11-01/part-0.jsonl.gz", gzip.compress(_jsonl(_events(5))))
    s3.put("s3://lake/pv/2026-11-02/part-0.csv.gz", gzip.compress(_csv(_events(4, start=5))))
    s3.put("s3://lake/pv/2026-11-02/part-1.csv", _csv(_events(3, start=9)))
    s3.put("s3://lake/pv/2026-12-01/part-0.jsonl", _jsonl(_events(7)))  # not matched
    out = tmp_path / "ads.jsonl"
    done = _cli(
        "run", "--mock", "s3://lake/pv/2026-11-*/part-*", "-o", str(out),
        "--workers", workers, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    records = read_records(out)
    exactly_once(records, 12)
    assert all(r["ok"] for r in records)
    sources = {r["source"] for r in records}
    assert "s3://lake/pv/2026-11-01/part-0.jsonl.gz:1" in sources
    assert "s3://lake/pv/2026-11-02/part-0.csv.gz:2" in sources  # row 1 is the header
    assert "s3://lake/pv/2026-11-02/part-1.csv:4" in sources
    assert {r["id"] for r in records} == {f"pv-{i}" for i in range(12)}


@pytest.mark.slow
def test_s3_errors_are_one_line(s3: S3, tmp_path: Path) -> None:
    s3.bucket("lake")
    missing = _cli("run", "--mock", "s3://lake/pv/*.jsonl", "-o", "out.jsonl", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "adbatch: error: no objects match input s3://lake/pv/*.jsonl"
    ]
    bad = _cli(
        "run", "--mock", "s3://lake/x.jsonl", "--storage-option", "not an option",
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--storage-option" in bad.stderr


@pytest.mark.slow
def test_a_missing_driver_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['s3fs'] = None; sys.argv[0] = 'adbatch'\n"
        "from engine.cli.main import main; sys.exit(main())"
    )
    done = _cli("run", "--mock", "s3://lake/x.jsonl", cwd=tmp_path, code=code)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "adbatch: error: s3://lake/x.jsonl: the s3:// driver (s3fs) is not installed: "
        "pip install 'adbatch[s3]'"
    ]


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A small aiohttp.web file server on 127.0.0.1 (in a thread): (base URL, its root)."""
    from aiohttp import web

    root = tmp_path / "www"
    root.mkdir()
    app = web.Application()
    app.router.add_static("/", root)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", root
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


@pytest.mark.slow
def test_run_reads_http_inputs(file_server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = file_server
    (root / "a.jsonl.gz").write_bytes(gzip.compress(_jsonl(_events(3))))
    (root / "b.csv").write_bytes(_csv(_events(2, start=3)))
    out = tmp_path / "ads.jsonl"
    done = _cli(
        "run", "--mock", f"{base}/a.jsonl.gz", f"{base}/b.csv", "-o", str(out), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    records = read_records(out)
    exactly_once(records, 5)
    assert {r["source"] for r in records} >= {f"{base}/a.jsonl.gz:3", f"{base}/b.csv:3"}
    gone = _cli("run", "--mock", f"{base}/nope.jsonl?sig=hunter2", cwd=tmp_path)
    assert gone.returncode == 2
    assert len(gone.stderr.strip().splitlines()) == 1, gone.stderr
    assert "hunter2" not in gone.stderr
    assert f"{base}/nope.jsonl?sig=[redacted]" in gone.stderr


#: README's "Object storage" commands, as written there (tests/test_docs.py: ELSEWHERE).
README_COMMANDS = (
    "adbatch run 's3://lake/pv/2026-11-*/part-*.jsonl.gz' -o ads.jsonl",
    "AWS_ENDPOINT_URL=http://127.0.0.1:9000 adbatch run s3://lake/pv/ -o ads.jsonl",
)


@pytest.mark.slow
@pytest.mark.parametrize("command", README_COMMANDS)
def test_the_readme_storage_commands_run(s3: S3, tmp_path: Path, command: str) -> None:
    assert command in (ROOT / "README.md").read_text()
    s3.bucket("lake")
    s3.put("s3://lake/pv/2026-11-01/part-0.jsonl.gz", gzip.compress(_jsonl(_events(3))))
    s3.put("s3://lake/pv/2026-11-02/part-0.jsonl.gz", gzip.compress(_jsonl(_events(2, 3))))
    # The mock instead of the real endpoint; moto's port instead of the documented 9000.
    line = command.replace("adbatch run", f"{sys.executable} -m engine run --mock")
    line = line.replace("http://127.0.0.1:9000", s3.endpoint)
    done = subprocess.run(
        ["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        check=False, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    exactly_once(read_records(tmp_path / "ads.jsonl"), 5)
