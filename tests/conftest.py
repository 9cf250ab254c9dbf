"""Shared fixtures and helpers: anyio on asyncio, a running mock, small event files,
the records of an output, a Config aimed at the mock.

Helpers are plain functions (`from conftest import read_records, config_for`); fixtures
are what needs pytest's set-up and tear-down. A module marked `pytest.mark.uvloop` runs
its async tests on uvloop, as the CLI does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import settings
from s3server import S3, point_at, s3_server

from engine.config import Config
from engine.mock import MockConfig, MockHandle, running_mock

# Property tests check behaviour, not timings: no per-example deadline (hypothesis'
# 200 ms failed a gzip example once on a loaded 2-CPU machine with the suite running).
settings.register_profile("adbatch", deadline=None)
settings.load_profile("adbatch")

#: The static token the mock accepts.
MOCK_TOKEN = "mock-token"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "uvloop: run the async tests on uvloop (when installed), as the CLI does"
    )


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """asyncio; uvloop under the `uvloop` mark, for timing tests that need the loop's
    overhead to stay small."""
    if request.node.get_closest_marker("uvloop") is not None:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            return ("asyncio", {"use_uvloop": True})
    return ("asyncio", {})


@pytest.fixture
async def mock() -> AsyncIterator[MockHandle]:
    """The embedded mock on a free loopback port, recording requests."""
    async with running_mock(MockConfig(record_requests=True)) as handle:
        yield handle


@pytest.fixture(scope="session")
def _s3_server() -> Iterator[S3]:
    yield from s3_server()


@pytest.fixture
def s3(_s3_server: S3, monkeypatch: pytest.MonkeyPatch) -> S3:
    """An S3 API on 127.0.0.1 (moto's server; tests/s3server.py), emptied for this test,
    with AWS_ENDPOINT_URL and fake keys set for it (subprocesses inherit them)."""
    _s3_server.reset()
    point_at(_s3_server, monkeypatch)
    return _s3_server


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write a list of dicts (or raw byte lines) as a JSONL file; returns its path."""

    def write(rows: list[object], name: str = "events.jsonl") -> Path:
        path = tmp_path / name
        lines = [r if isinstance(r, bytes) else orjson.dumps(r) for r in rows]
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        return path

    return write


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL output, which must end with a whole line."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "output must end with a whole line"
    return [orjson.loads(line) for line in data.splitlines()]


def config_for(
    server: MockHandle | str, inputs: Path | Sequence[Path], output: Path, **options: Any
) -> Config:
    """A Config sending `inputs` to the mock (or the delivery URL `server`) into `output`,
    with the mock's static token unless `options` say otherwise."""
    paths = [inputs] if isinstance(inputs, Path) else inputs
    return Config(
        inputs=tuple(str(p) for p in paths),
        output=str(output),
        endpoint=server if isinstance(server, str) else server.delivery_url,
        **{"token": MOCK_TOKEN, **options},
    )


def exactly_once(records: list[dict[str, Any]], n: int) -> None:
    """Every one of `n` events has exactly one record."""
    seqs = Counter(r["seq"] for r in records)
    assert sorted(seqs) == list(range(n)), "every event must be answered"
    assert max(seqs.values()) == 1, "no event may be written twice"


def events(n: int) -> list[dict[str, Any]]:
    """`n` valid viewHome events, ids ev-0 .. ev-{n-1}."""
    return [
        {
            "id": f"ev-{i}",
            "criteo-partner-id": 12345,
            "retailer-visitor-id": f"rv-{i}",
            "event-type": "viewHome",
            "page-id": "viewHome_API_desktop",
        }
        for i in range(n)
    ]


def event_line(n: int) -> bytes:
    """Event `n` as one JSON line without its newline (partner 1, id ev-{n})."""
    return orjson.dumps(
        {
            "id": f"ev-{n}",
            "criteo-partner-id": 1,
            "retailer-visitor-id": f"rv-{n}",
            "event-type": "viewHome",
            "page-id": "viewHome_API_desktop",
        }
    )


def pageview_rows() -> list[dict[str, Any]]:
    """The rows of examples/pageviews.jsonl."""
    data = (Path(__file__).resolve().parent.parent / "examples" / "pageviews.jsonl").read_bytes()
    return [orjson.loads(line) for line in data.splitlines()]


def pageview_table(rows: list[dict[str, Any]], *, like: list[dict[str, Any]] | None = None) -> Any:
    """`rows` as a pyarrow table typed by all of `like` (default `rows`): one type per
    column, a key that is a list in some rows is a list of text in all (a list of one value
    is sent as that value), the rest is text (numbers sent as written)."""
    import pyarrow as pa  # the extra adbatch[parquet]; callers importorskip it

    typed = rows if like is None else like
    keys = list(dict.fromkeys(k for row in typed for k in row))
    listed = {k for row in typed for k, v in row.items() if isinstance(v, list)}

    def cell(key: str, value: object) -> object:
        if value is None:
            return None
        if key in listed:
            return [str(x) for x in (value if isinstance(value, list) else [value])]
        return str(value)

    return pa.table({k: [cell(k, row.get(k)) for row in rows] for k in keys})


# -- fsspec's in-process memory:// store (object-storage tests without a server) ----------


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A fresh prefix of fsspec's in-process `memory://` store, removed afterwards."""
    pytest.importorskip("fsspec")
    import uuid

    from engine.files.storage import filesystem

    url = f"memory://lake-{uuid.uuid4().hex}"
    yield url
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def put_object(url: str, data: bytes) -> str:
    from engine.files.storage import filesystem

    fs, path = filesystem(url)
    fs.pipe_file(path, data)
    return url


def get_object(url: str) -> bytes:
    from engine.files.storage import filesystem

    fs, path = filesystem(url)
    return bytes(fs.cat_file(path))


def padded_jsonl(count: int) -> bytes:
    """`count` JSONL events (`ev-0`...) of about 60 bytes each."""
    return b"".join(orjson.dumps({"id": f"ev-{n}", "pad": "x" * 40}) + b"\n" for n in range(count))


def one_line(err: str) -> str:
    """A command's stderr that must be one line, no traceback: that line."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]
