"""The benchmark harness runs end to end on a few hundred events and prints its table;
its parts (the floor client, the CA it makes, how wrk's and hey's reports are read) work.

The end-to-end test checks only that the harness completes (every Python client wrote one
record per event, which the harness itself verifies) and prints the table with the hey
ratios; the figures are not asserted: CI machines are small and shared. Rows whose
program is missing (nginx, hey, wrk) are skipped by the harness with a note.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> ModuleType:
    """A benchmarks/ module by path, under a name of its own (no sys.path change)."""
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


HEY_REPORT = """
Summary:
  Total:\t0.9514 secs
  Requests/sec:\t21021.3208

Status code distribution:
  [200]\t19968 responses
  [503]\t32 responses

Error distribution:
  [3]\tGet "http://127.0.0.1:1/": dial tcp: connection refused
"""
WRK_REPORT = """Running 1s test @ http://127.0.0.1:4000/delivery/retailmedia
  1 threads and 64 connections
  59406 requests in 1.00s, 164.01MB read
  Non-2xx or 3xx responses: 406
Requests/sec:  59277.60
"""


@pytest.mark.parametrize(
    ("tool", "text", "answered"),
    [
        pytest.param("hey", HEY_REPORT, 19968, id="hey-2xx-only"),
        pytest.param("hey", "Error distribution:\n  [64]\tdial tcp: refused\n", 0, id="hey-none"),
        pytest.param("wrk", WRK_REPORT, 59000, id="wrk-less-non-2xx"),
        pytest.param(
            "wrk",
            WRK_REPORT.replace("  Non-2xx or 3xx responses: 406\n", ""),
            59406,
            id="wrk-all-2xx",
        ),
        pytest.param("wrk", "unable to connect to 127.0.0.1:1\n", 0, id="wrk-none"),
    ],
)
def test_tool_reports_count_the_2xx_answers(tool: str, text: str, answered: int) -> None:
    clients = _load("clients")
    parse = clients.parse_hey if tool == "hey" else clients.parse_wrk
    assert parse(text) == answered


def test_separate_processes_count_every_summary() -> None:
    clients = _load("clients")
    text = (
        "adbatch: 25000 events in 1.38s (18067.5/s): 25000 ok, 0 failed, 0 invalid\n"
        "note: something else\n"
        "adbatch: 24999 events in 1.40s (17856.4/s): 24990 ok, 9 failed, 0 invalid\n"
    )
    assert clients.parse_summaries(text) == 49999
    assert clients.parse_summaries("error: cannot read input\n") == 0


@asynccontextmanager
async def delivery_server(
    seen: list[web.Request], context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """aiohttp.web on 127.0.0.1: JSON for every call but `keywords=plain`, which gets text."""

    async def handle(request: web.Request) -> web.Response:
        seen.append(request)
        if request.query.get("keywords") == "plain":
            return web.Response(text="not json")
        return web.json_response({"status": "OK", "placements": [], "n": len(seen)})

    app = web.Application()
    app.router.add_get("/delivery/retailmedia", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    host, port = runner.addresses[0][:2]
    scheme = "https" if context is not None else "http"
    try:
        yield f"{scheme}://{host}:{port}/delivery/retailmedia"
    finally:
        await runner.cleanup()


EVENTS: list[dict[str, Any]] = [
    {"id": f"pv-{i}", "timestamp": 1.5, "criteo-partner-id": 12345, "event-type": "viewItem",
     "item": ["a", "b&c"], "price": 12.5, "user-agent": "UA/1", "ip": "203.0.113.7",
     "keywords": "tea set & cups", "nolog": True}
    for i in range(40)
] + [{"id": "plain", "keywords": "plain"}]  # fmt: skip


@pytest.mark.anyio
@pytest.mark.uvloop
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_floor_client_writes_one_record_per_event(tmp_path: Path, tls: bool) -> None:
    pytest.importorskip("httptools", reason="the floor client needs httptools")
    floor = _load("floor")
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in EVENTS) + b"\n")
    context, ca = None, None
    if tls:
        made = _load("certs").make_certs(tmp_path / "pki")
        if made is None:
            pytest.skip("neither the cryptography package nor openssl: no certificates")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(made.cert, made.key)
        ca = str(made.ca)
    seen: list[web.Request] = []
    out = tmp_path / "out.jsonl"
    async with delivery_server(seen, context) as url:
        args = ["-c", "4", "--token", "t0k", str(events), "-o", str(out), "--endpoint", url]
        await floor.main(floor.parse_args([*args, *(["--cacert", ca] if ca else [])]))
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(records) == len(EVENTS) == len(seen)
    assert sorted(r["seq"] for r in records) == list(range(len(EVENTS)))
    by_id = {r["id"]: r for r in records}
    assert by_id["plain"]["response"] == "not json"
    assert by_id["pv-3"]["status"] == 200
    assert by_id["pv-3"]["ok"] is True
    assert by_id["pv-3"]["response"]["status"] == "OK"
    first = next(r for r in seen if r.query.get("keywords") != "plain")
    assert first.query["item"] == "a|b&c"
    assert first.query["keywords"] == "tea set & cups"
    assert first.query["nolog"] == "1"
    assert first.query["price"] == "12.5"
    assert "id" not in first.query
    assert "timestamp" not in first.query
    assert first.headers["User-Agent"] == "UA/1"
    assert first.headers["X-Forwarded-For"] == "203.0.113.7"
    assert first.headers["Authorization"] == "Bearer t0k"
    # one keep-alive connection per slot, never more
    assert len({r.transport.get_extra_info("peername") for r in seen if r.transport}) <= 4


@pytest.mark.anyio
@pytest.mark.uvloop
async def test_floor_fixed_sends_one_url_n_times(capsys: pytest.CaptureFixture[str]) -> None:
    """`--fixed N` (the transport-alone row): N calls of the URL as given, query and
    all, counted from the 2xx answers; no input, no output."""
    pytest.importorskip("httptools", reason="the floor client needs httptools")
    floor = _load("floor")
    seen: list[web.Request] = []
    async with delivery_server(seen) as url:
        argv = ["--fixed", "25", "-c", "4", "--token", "t0k", "--endpoint", f"{url}?k=plain&a=1"]
        await floor.main(floor.parse_args(argv))
    assert len(seen) == 25
    assert {(r.path, r.query_string) for r in seen} == {("/delivery/retailmedia", "k=plain&a=1")}
    assert {r.headers["Authorization"] for r in seen} == {"Bearer t0k"}
    err = capsys.readouterr().err
    assert _load("clients").parse_answered(err) == 25
    with pytest.raises(SystemExit):
        floor.parse_args(["--endpoint", url])  # neither events nor --fixed


def test_floor_parse_args_defaults() -> None:
    pytest.importorskip("httptools", reason="the floor client needs httptools")
    args = _load("floor").parse_args(["e.jsonl", "-o", "o", "--endpoint", "http://x/"])
    assert isinstance(args, argparse.Namespace)
    assert args.concurrency == 64


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_harness_completes_and_prints_the_table() -> None:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "run.py"),
        "--events", "300",
        "--rounds", "1",
        "--concurrency", "16",
        "--rss-events", "300",
        "--rss-small", "100",
        "--tool-seconds", "1",
        "--compare", "HEAD",  # the committed version, interleaved with the work tree's
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=220, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "| client | events/s (median) |" in out
    assert "| events per CPU-s | min-max | × hey |" in out  # noqa: RUF001
    for row in ("baseline (asyncio + aiohttp)", "adbatch run, 1 process", "--workers 2"):
        assert f"| {row}" in out or row in out, row
    if importlib.util.find_spec("httptools") is not None:
        assert "| floor (httptools + uvloop, reference) |" in out
        assert "| floor, hey's work: one fixed URL (reference) |" in out
    assert "adbatch 1 process / baseline:" in out
    assert "| 2 separate processes, 1/2 of the input each (reference) |" in out
    assert "CPU per event over 1 process (target for --workers: <= +5%): adbatch run" in out
    assert "adbatch 1 process, events per CPU-s: HTTP" in out
    assert "(target >= 1.0, aim 1.2)" in out
    assert "CPU per event, µs (HTTP | HTTPS): hey " in out
    assert "; adbatch " in out
    assert "| adbatch run, 1 process @ HEAD |" in out
    assert "this version / HEAD: 1 process" in out
    assert "Peak RSS on stdin" in out
    nginx = shutil.which("nginx") or Path("/usr/sbin/nginx").exists()
    if nginx:
        assert "| adbatch run, 1 process, HTTPS |" in out
    if shutil.which("hey"):
        assert "| hey (Go, raw HTTP) |" in out
        assert "x hey" in out
        assert "falls short" in out or "met where measured" in out
        if nginx:
            assert "| hey -h2 (Go, raw HTTP/2), HTTPS |" in out
    else:
        assert "note: hey not installed" in out
    if not shutil.which("wrk"):
        assert "note: wrk not installed" in out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_callcost_prints_both_tables() -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "callcost.py"), "--rounds", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| work tree |" in proc.stdout
    for row in ("three coroutines + a future", "one coroutine + a future", "callbacks"):
        assert f"| {row} |" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stages_prints_every_stage() -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "stages.py"), "--events", "500"]
    proc = subprocess.run([*cmd, "--rounds", "1"], capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "500 events, 1 round(s)" in proc.stdout
    stages = ("input", "request", "JSON check", "record (JSON check included)", "encode (JSONL)")
    for row in (*stages, "redaction", "redaction, a real token's length"):
        assert re.search(rf"^\| {re.escape(row)} \| \d+\.\d\d \|", proc.stdout, re.M), row
