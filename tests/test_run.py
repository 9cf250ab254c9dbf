"""End to end against the real mock over 127.0.0.1: files in, records out."""

from __future__ import annotations

import gzip
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import orjson
import pytest
from conftest import config_for, read_records

import engine
from engine.mock import MockConfig, MockHandle, running_mock

pytestmark = pytest.mark.anyio

BASE = {"criteo-partner-id": 12345, "retailer-visitor-id": "v-1"}


def home(i: int, **extra: object) -> dict[str, object]:
    return {
        "id": f"e{i}",
        **BASE,
        "event-type": "viewHome",
        "page-id": "viewHome_API_desktop",
        **extra,
    }


async def test_every_input_line_gives_exactly_one_record(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    rows: list[object] = [home(i) for i in range(30)]
    rows[5] = {
        "id": "bad",
        **BASE,
        "event-type": "viewSearchResult",
        "page-id": "viewSearchResult_API_desktop",
    }
    rows[9] = b"{not json"
    rows[12] = b"[1, 2, 3]"
    rows[20] = b"\xff\xfe garbage \x00"
    src = write_jsonl(rows)
    out = tmp_path / "out.jsonl"
    summary = await engine.run(config_for(mock, [src], out, concurrency=8))

    records = read_records(out)
    assert sorted(r["seq"] for r in records) == list(range(30))
    by_seq = {r["seq"]: r for r in records}
    assert (
        by_seq[5]["error"] == "missing required parameter keywords for event-type viewSearchResult"
    )
    assert by_seq[5]["status"] is None
    assert by_seq[5]["id"] == "bad"
    assert by_seq[9]["source"] == f"{src}:10"
    assert str(by_seq[9]["error"]).startswith("malformed JSON")
    assert by_seq[12]["error"] == "line is not a JSON object (got list)"
    assert by_seq[20]["source"] == f"{src}:21"
    ok = [r for r in records if r["ok"]]
    assert len(ok) == 26
    assert all(r["status"] == 200 and r["attempts"] == 1 for r in ok)
    assert all(isinstance(r["response"], dict) and r["response"]["status"] == "OK" for r in ok)
    assert mock.state.delivery_requests == 26  # invalid lines are never sent
    assert (summary.events, summary.ok, summary.invalid, summary.failed) == (30, 26, 4, 0)
    assert summary.exit_code == 1


async def test_server_receives_exactly_the_event(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    tricky = "café & crème +50% / sale | a>b=c ?#北京 %20"
    event = {
        "id": "t1",
        **BASE,
        "event-type": "viewSearchResult",
        "page-id": "viewSearchResult_API_mobile",
        "keywords": tricky,
        "item": ["sku/1", "sku+2", "sku&3"],
        "category": "123>4567>89012",
        "price": 12.50,
        "nolog": 1,
        "filters": "(brand,eq,acme)",
        "new-param": "x y",
        "user-agent": "Mozilla/5.0 (X11; Linux) ünïcode",
        "referer": "https://shop.example/s?q=a&b=c",
        "ip": "203.0.113.7",
    }
    src = tmp_path / "e.jsonl"
    # Written by hand so the float keeps its written form 12.50.
    src.write_bytes(orjson.dumps(event).replace(b'"price":12.5', b'"price":12.50') + b"\n")
    out = tmp_path / "out.jsonl"
    await engine.run(config_for(mock, [src], out))

    (request,) = mock.state.requests
    assert dict(request.query) == {
        "criteo-partner-id": "12345",
        "retailer-visitor-id": "v-1",
        "event-type": "viewSearchResult",
        "page-id": "viewSearchResult_API_mobile",
        "keywords": tricky,
        "item": "sku/1|sku+2|sku&3",
        "category": "123>4567>89012",
        "price": "12.50",
        "nolog": "1",
        "filters": "(brand,eq,acme)",
        "new-param": "x y",
    }
    assert len(request.query) == 11
    assert request.headers["User-Agent"] == event["user-agent"]
    assert request.headers["Referer"] == event["referer"]
    assert request.headers["X-Forwarded-For"] == "203.0.113.7"
    assert request.headers["Authorization"] == "Bearer mock-token"
    (record,) = read_records(out)
    assert record["id"] == "t1"
    assert record["status"] == 200


async def test_csv_and_gzip_inputs(mock: MockHandle, tmp_path: Path) -> None:
    csv_path = tmp_path / "e.csv.gz"
    csv_path.write_bytes(
        gzip.compress(
            b"id,criteo-partner-id,retailer-visitor-id,event-type,page-id,keywords\n"
            b'c1,12345,v1,viewSearchResult,p,"shoes, red"\n'
            b"c2,12345,v2,viewHome,p\n"
            b"c3,12345,v3,viewSearchResult,p,\n"
        )
    )
    out = tmp_path / "out.jsonl"
    await engine.run(config_for(mock, [csv_path], out, ordered=True))
    records = read_records(out)
    assert [r["id"] for r in records] == ["c1", None, "c3"]
    assert records[0]["ok"] is True
    assert records[1]["error"] == "CSV row has 5 fields, the header has 6"
    assert records[1]["source"] == f"{csv_path}:3"
    assert (
        records[2]["error"] == "missing required parameter keywords for event-type viewSearchResult"
    )
    assert dict(mock.state.requests[0].query)["keywords"] == "shoes, red"


async def test_ordered_output_follows_input_order(
    tmp_path: Path, write_jsonl: Callable[..., Path]
) -> None:
    src = write_jsonl([home(i) for i in range(200)])
    out = tmp_path / "out.jsonl"
    async with running_mock(MockConfig(latency=0.001, latency_jitter=0.01)) as mock:
        await engine.run(config_for(mock, [src], out, ordered=True, concurrency=32))
    assert [r["seq"] for r in read_records(out)] == list(range(200))


@pytest.mark.slow  # end to end, over a second
async def test_rate_is_respected(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    rate, n = 50.0, 60
    src = write_jsonl([home(i) for i in range(n)])
    out = tmp_path / "out.jsonl"
    start = time.perf_counter()
    await engine.run(config_for(mock, [src], out, rate=rate, concurrency=64))
    elapsed = time.perf_counter() - start
    assert elapsed >= (n - 1) / rate * 0.95
    sent = sorted(float(r["sent_at"]) for r in read_records(out))  # type: ignore[arg-type]
    # No burst: in any 200 ms window at most rate*0.2 calls, plus one for the edges.
    for i, t in enumerate(sent):
        in_window = sum(1 for u in sent[i:] if u < t + 0.2)
        assert in_window <= rate * 0.2 + 1


async def test_dry_run_sends_nothing_and_hides_the_token(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    src = write_jsonl([home(0, keywords="a b"), {"id": "x"}])
    out = tmp_path / "out.jsonl"
    await engine.run(config_for(mock, [src], out, dry_run=True))
    records = read_records(out)
    assert mock.state.delivery_requests == 0
    shown = records[0]["response"]
    assert isinstance(shown, dict)
    assert shown["url"].startswith(mock.delivery_url + "?criteo-partner-id=12345&")
    assert "keywords=a+b" in shown["url"]
    assert shown["headers"]["Authorization"] == "Bearer [redacted]"
    assert records[1]["error"].startswith("missing required parameter")  # type: ignore[union-attr]
    assert b"mock-token" not in out.read_bytes()


async def test_refused_token_stops_with_exit_3_and_no_secret(
    mock: MockHandle, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    src = write_jsonl([home(i) for i in range(300)])
    out = tmp_path / "out.jsonl"
    config = config_for(mock, [src], out, concurrency=4).with_changes(token="wrong-s3cret")
    summary = await engine.run(config)
    assert summary.exit_code == 3
    assert summary.stopped is not None
    assert "401" in summary.stopped
    records = read_records(out)
    assert 0 < len(records) < 300  # stopped early; what was sent is on record
    assert all(r["status"] == 401 for r in records)
    assert b"wrong-s3cret" not in out.read_bytes()
    assert "wrong-s3cret" not in summary.line() + summary.stopped


async def test_dead_server_is_a_clear_stop(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    src = write_jsonl([home(i) for i in range(5)])
    out = tmp_path / "out.jsonl"
    with anyio.fail_after(20):
        summary = await engine.run(
            engine.Config(
                inputs=(str(src),),
                output=str(out),
                token="t",
                endpoint="http://127.0.0.1:9/delivery/retailmedia",
            )
        )
    assert summary.exit_code == 3
    assert summary.stopped is not None
    assert "cannot reach the delivery endpoint" in summary.stopped
    records = read_records(out)
    assert len(records) == 5
    assert all(r["status"] is None and "cannot connect" in str(r["error"]) for r in records)


async def test_library_deliver_yields_every_result(mock: MockHandle) -> None:
    events = [home(i) for i in range(20)] + [{"id": "no"}]
    config = engine.Config(endpoint=mock.delivery_url, token="mock-token", concurrency=5)
    results = [r async for r in engine.deliver(events, config)]
    assert sorted(r.seq for r in results) == list(range(21))
    assert sum(r.ok for r in results) == 20
    assert {r.id for r in results if not r.ok} == {"no"}


async def test_stdin_to_stdout_through_the_cli(mock: MockHandle) -> None:
    data = b"".join(orjson.dumps(home(i)) + b"\n" for i in range(10)) + b"oops\n"
    env = {**os.environ, "ADBATCH_TOKEN": "mock-token"}
    result = await anyio.run_process(
        [sys.executable, "-m", "engine", "run", "--endpoint", mock.delivery_url],
        input=data,
        env=env,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 11
    assert {r["source"] for r in records} == {f"<stdin>:{i}" for i in range(1, 12)}
    assert sum(r["ok"] for r in records) == 10
    stderr = result.stderr.decode()
    assert "11 events" in stderr
    assert "10 ok" in stderr
    assert "1 invalid" in stderr
    assert "Traceback" not in stderr
    assert "mock-token" not in stderr
