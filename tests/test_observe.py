"""--metrics-addr and --dashboard during real runs against the mock (issue 14, items 1-2).

Each test runs `run`, `load`, `replay` or `run --workers 2` in this process, scrapes
/metrics (parsed by prometheus_client's own parser) or polls the dashboard's JSON with
aiohttp while it goes on, and checks the last scrape, taken while the servers linger
after the run, against the records written.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
from conftest import config_for, read_records
from prometheus_client.parser import text_string_to_metric_families

from engine import api
from engine.cli.main import main
from engine.config import Config
from engine.core.addresses import parse_listen
from engine.core.pacing import constant
from engine.errors import ConfigError
from engine.load.plan import LoadPlan
from engine.mock import MockConfig, running_mock

EVENT = {
    "criteo-partner-id": 12345,
    "retailer-visitor-id": "rv",
    "event-type": "viewHome",
    "page-id": "viewHome_API_desktop",
}
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] of a /metrics body (the format checked by parsing)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(found: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(v for _, v in found.get(name, []))


async def watch_while(
    run: Callable[[], Awaitable[Any]], url: str, *, every: float = 0.2
) -> tuple[Any, list[str]]:
    """Run `run()` while GETting `url` every `every` s; (its result, every body got)."""
    bodies: list[str] = []
    result: list[Any] = []

    async def runner(scope: anyio.CancelScope) -> None:
        result.append(await run())
        scope.cancel()

    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        tg.start_soon(runner, tg.cancel_scope)
        while True:
            try:
                async with http.get(url) as answer:
                    assert answer.status == 200
                    bodies.append(await answer.text())
            except aiohttp.ClientConnectionError:
                pass  # not up yet, or closed after the linger
            await anyio.sleep(every)
    return result[0], bodies


def check_final(bodies: list[str], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The last scrape counts every record written; an earlier one saw the run half done."""
    assert bodies, "no scrape answered"
    last = samples(bodies[-1])
    assert total(last, "adbatch_calls_total") == len(records)
    statuses = {"" if r["status"] is None else str(r["status"]) for r in records}
    assert {labels["status"] for labels, _ in last["adbatch_calls_total"]} == statuses
    assert total(last, "adbatch_attempts_total") == sum(r["attempts"] for r in records)
    timed = [r for r in records if r["latency_ms"] is not None]
    assert total(last, "adbatch_call_duration_seconds_count") == len(timed)
    assert total(last, "adbatch_in_flight") == 0
    seen = [total(samples(b), "adbatch_calls_total") for b in bodies]
    assert any(0 < n < len(records) for n in seen), f"never saw the run under way: {seen}"
    return last


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("workers", [1, 2])
async def test_run_metrics_add_up_to_the_records(
    workers: int, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    port = free_port()
    async with running_mock() as mock:
        config = config_for(
            mock,
            write_jsonl([EVENT] * 300),
            out,
            rate=200.0,
            workers=workers,
            metrics_addr=f":{port}",
            metrics_linger=1.0,
        )
        summary, bodies = await watch_while(
            lambda: api.run(config), f"http://127.0.0.1:{port}/metrics"
        )
    records = read_records(out)
    assert summary.exit_code == 0
    assert len(records) == 300
    last = check_final(bodies, records)
    assert total(last, "adbatch_events_read_total") == 300
    assert last["adbatch_target_rate"] == [({}, 200.0)]
    assert "adbatch_schedule_lag_seconds_count" not in last  # a run has no schedule


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["load", "replay", "replay-capped"])
async def test_load_and_replay_metrics(
    mode: str, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    port = free_port()
    cap = {"rate": 1000.0} if mode == "replay-capped" else {}  # a ceiling, not a target
    if mode == "load":
        events = write_jsonl([EVENT] * 5)
        plan = LoadPlan(pacer=constant(150, 2))
    else:  # 300 events 0.01 s apart: 3 s of traffic replayed in 1.5
        events = write_jsonl([{**EVENT, "timestamp": 1e9 + i / 100} for i in range(300)])
        plan = LoadPlan(mode="replay", speed=2.0)
    async with running_mock() as mock:
        config = config_for(
            mock, events, out, metrics_addr=f"127.0.0.1:{port}", metrics_linger=1, **cap
        )
        outcome, bodies = await watch_while(
            lambda: api.run_load(config, plan), f"http://127.0.0.1:{port}/metrics"
        )
    records = read_records(out)
    assert outcome.exit_code == 0
    last = check_final(bodies, records)
    assert total(last, "adbatch_schedule_lag_seconds_count") == len(records)  # all sent
    assert total(last, "adbatch_dropped_total") == 0
    if mode == "load":
        assert last["adbatch_target_rate"] == [({}, 0.0)]  # the schedule is over
        assert 270 <= len(records) <= 330
    else:
        # A replay asks for no rate: the log's pace is its schedule, --rate only a cap.
        assert all("adbatch_target_rate" not in samples(b) for b in bodies)
        assert total(last, "adbatch_events_read_total") == 300


@pytest.mark.slow
@pytest.mark.anyio
async def test_load_with_workers_metrics(write_jsonl: Callable[..., Path], tmp_path: Path) -> None:
    """load --workers 2: the parent serves the workers' summed figures as a load's (issue
    14): the schedule lag of every call, the schedule's target rate, the calls due."""
    out = tmp_path / "out.jsonl"
    port = free_port()
    plan = LoadPlan(pacer=constant(150, 2))
    async with running_mock() as mock:
        config = config_for(
            mock, write_jsonl([EVENT] * 5), out, workers=2, metrics_addr=f":{port}",
            metrics_linger=1,
        )  # fmt: skip
        outcome, bodies = await watch_while(
            lambda: api.run_load(config, plan), f"http://127.0.0.1:{port}/metrics"
        )
    records = read_records(out)
    assert outcome.exit_code == 0
    assert 270 <= len(records) <= 330
    last = check_final(bodies, records)
    assert total(last, "adbatch_schedule_lag_seconds_count") == len(records)  # all sent
    assert total(last, "adbatch_events_read_total") == len(records)  # every call came due
    assert total(last, "adbatch_dropped_total") == 0
    assert last["adbatch_target_rate"] == [({}, 0.0)]  # the schedule is over
    targets = [samples(b).get("adbatch_target_rate") for b in bodies]
    assert [({}, 150.0)] in targets, targets  # while it ran: the schedule's rate


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["load", "replay"])
async def test_dashboard_of_load_and_replay_with_workers_names_the_mode(
    mode: str, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    port = free_port()
    if mode == "load":
        events = write_jsonl([EVENT] * 5)
        plan = LoadPlan(pacer=constant(100, 1.5))
    else:  # 200 events 0.01 s apart: 2 s of traffic replayed in 1
        events = write_jsonl([{**EVENT, "timestamp": 1e9 + i / 100} for i in range(200)])
        plan = LoadPlan(mode="replay", speed=2.0)
    async with running_mock() as mock:
        config = config_for(
            mock, events, out, workers=2, dashboard=f":{port}", metrics_linger=1.5
        )
        outcome, bodies = await watch_while(
            lambda: api.run_load(config, plan), f"http://127.0.0.1:{port}/data.json"
        )
    records = read_records(out)
    assert outcome.exit_code == 0
    figures = [orjson.loads(b) for b in bodies]
    assert {f["mode"] for f in figures} == {mode}
    assert figures[-1]["finished"] is True
    assert figures[-1]["done"] == len(records)
    assert any(0 < f["done"] < len(records) for f in figures)
    if mode == "load":
        assert any(f["target_rate"] == 100.0 for f in figures)
        assert figures[-1]["progress"]["unit"] == "seconds"
    else:
        assert {f["target_rate"] for f in figures} == {None}
        assert figures[-1]["events_read"] == 200


@pytest.mark.slow
@pytest.mark.anyio
async def test_metrics_count_errors_retries_and_token_renewals(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """Failures by status and kind, retries by reason, invalid lines, token renewals."""
    out = tmp_path / "out.jsonl"
    port = free_port()
    lines = [*([EVENT] * 40), {"event-type": "viewHome"}, b"not json"]
    mock_config = MockConfig(fail_503=0.5, faults_first_attempt_only=False, token_lifetime=2.0)
    async with running_mock(mock_config) as mock:
        config = config_for(
            mock,
            write_jsonl(lines),
            out,
            token=None,
            client_id=mock.config.clients[0][0],
            client_secret=mock.config.clients[0][1],
            token_url=mock.token_url,
            rate=15.0,
            retries=1,
            backoff_base=0.01,
            metrics_addr=f":{port}",
            metrics_linger=1,
        )
        _, bodies = await watch_while(lambda: api.run(config), f"http://127.0.0.1:{port}/metrics")
    records = read_records(out)
    last = check_final(bodies, records)
    calls = {(la["status"], la["error_kind"]): v for la, v in last["adbatch_calls_total"]}
    assert calls[("", "invalid")] == 2
    failed = [r for r in records if r["status"] == 503]
    assert calls.get(("503", "http_503"), 0) == len(failed)
    retried = sum(len(r["retries"]) for r in records)
    assert retried > 0
    assert total(last, "adbatch_retries_total") == retried
    assert total(last, "adbatch_token_renewals_total") >= 1


@pytest.mark.slow
@pytest.mark.anyio
async def test_dry_run_metrics_and_dashboard_count_its_records(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """--dry-run writes one ok record per event: /metrics has one call per record and the
    finished dashboard says them done and ok, its input read to the end."""
    out = tmp_path / "out.jsonl"
    port = free_port()
    config = Config(
        inputs=(str(write_jsonl([EVENT] * 60)),),
        output=str(out),
        endpoint="http://127.0.0.1:9/d",
        token="dry-token-0123456789",
        dry_run=True,
        metrics_addr=f":{port}",
        dashboard=f":{port}",
        metrics_linger=0.6,
    )
    base = f"http://127.0.0.1:{port}"

    async def scrape() -> tuple[str, dict[str, Any]]:
        async with aiohttp.ClientSession() as http:
            while True:  # until the run is over and the servers linger
                try:
                    async with http.get(f"{base}/data.json") as answer:
                        figures = await answer.json()
                    if figures["finished"]:
                        async with http.get(f"{base}/metrics") as answer:
                            return await answer.text(), figures
                except aiohttp.ClientConnectionError:
                    pass
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(api.run, config)
        metrics, figures = await scrape()
    records = read_records(out)
    assert len(records) == 60
    assert {(r["ok"], r["error_kind"]) for r in records} == {(True, "dry_run")}
    last = samples(metrics)
    assert last["adbatch_calls_total"] == [({"status": "", "error_kind": "dry_run"}, 60.0)]
    assert (figures["done"], figures["ok"]) == (60, 60)
    assert figures["progress"]["fraction"] == 1.0


@pytest.mark.slow
@pytest.mark.anyio
async def test_dashboard_serves_a_page_and_figures_that_grow(
    write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    port = free_port()
    async with running_mock() as mock:
        config = config_for(
            mock,
            write_jsonl([EVENT] * 400),
            out,
            rate=200.0,
            dashboard=f":{port}",
            metrics_addr=f":{port}",  # the same address: one server for both
            metrics_linger=1.5,
        )
        _, bodies = await watch_while(lambda: api.run(config), f"http://127.0.0.1:{port}/data.json")
    records = read_records(out)
    figures = [orjson.loads(b) for b in bodies]
    done = [f["done"] for f in figures]
    assert done == sorted(done)
    assert figures[-1]["done"] == len(records) == 400
    assert figures[-1]["finished"] is True
    assert any(0 < n < 400 for n in done)
    assert figures[-1]["progress"]["unit"] == "bytes"
    assert figures[-1]["progress"]["fraction"] == 1.0
    mid = next(f for f in figures if 0 < f["done"] < 400 and f["points"])
    assert mid["progress"]["eta"] is not None
    assert mid["points"][-1]["target"] == 200.0
    assert mid["points"][-1]["send"][0] is not None  # p50 of that second


@pytest.mark.anyio
async def test_dashboard_page_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    port = free_port()
    config = Config(
        inputs=(str(ROOT / "examples" / "pageviews.jsonl"),),
        output=str(tmp_path / "out.jsonl"),
        mock=True,
        dashboard=f":{port}",
        metrics_linger=30,
    )
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        tg.start_soon(api.run, config)
        for _ in range(100):
            try:
                async with http.get(f"http://127.0.0.1:{port}/") as answer:
                    page = await answer.text()
                    headers = answer.headers
                break
            except aiohttp.ClientConnectionError:
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert 'id="done"' in page
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    # No URL but the SVG namespace: no CDN, no font, no image from elsewhere.
    assert page.replace("http://www.w3.org/2000/svg", "").count("//") == 0


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own error
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        pytest.param("--metrics-addr", "9100", "--metrics-addr must be HOST:PORT", id="no-colon"),
        pytest.param("--dashboard", ":99999", "--dashboard must be HOST:PORT", id="port"),
        pytest.param("--metrics-addr", "::1:80", "HOST:PORT", id="ipv6-no-brackets"),
        pytest.param("--metrics-addr", "192.0.2.1:80", "cannot listen on", id="not-here"),
        pytest.param("--metrics-linger", "-1", "--metrics-linger", id="linger"),
    ],
)
def test_bad_addresses_are_one_line_exit_2(
    option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = str(ROOT / "examples" / "pageviews.jsonl")
    assert exit_code(["run", "--mock", inputs, "-o", "/dev/null", option, value]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in last
    assert "Traceback" not in last


def test_a_busy_port_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    inputs = str(ROOT / "examples" / "pageviews.jsonl")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["load", "--mock", inputs, "--rate", "5", "--duration", "1",
                     "-o", "/dev/null", "--metrics-addr", f":{port}"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"adbatch: error: --metrics-addr :{port}: cannot listen on 127.0.0.1:{port} "
        "(Address already in use)"
    ]


def test_options_come_from_the_toml_file(tmp_path: Path) -> None:
    from engine.cli.main import build_parser
    from engine.cli.options import config_from_args

    toml = tmp_path / "adbatch.toml"
    toml.write_text('metrics-addr = ":9100"\ndashboard = "0.0.0.0:8000"\nmetrics-linger = 5\n')
    argv = ["run", "--mock", "--config", str(toml), "x.jsonl"]
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.metrics_addr, config.dashboard, config.metrics_linger) == (
        ":9100",
        "0.0.0.0:8000",
        5,
    )
    toml.write_text('metrics-linger = "soon"\n')
    with pytest.raises(ConfigError, match="metrics-linger: expected a duration"):
        config_from_args(build_parser().parse_args(argv))


@pytest.mark.parametrize(
    ("metrics", "dashboard", "warned"),
    [
        pytest.param("0.0.0.0:0", ":0", ["--metrics-addr 0.0.0.0:"], id="metrics-any-ipv4"),
        pytest.param(":0", "[::]:0", ["--dashboard [::]:"], id="dashboard-any-ipv6"),
        pytest.param("198.51.100.7:0", "myhost:0", ["--metrics-addr", "--dashboard"], id="both"),
        pytest.param("127.0.0.2:0", "localhost:0", [], id="loopback"),
        pytest.param("[::1]:0", ":0", [], id="loopback-ipv6"),
    ],
)
def test_a_server_beyond_loopback_is_announced_with_a_warning(
    metrics: str, dashboard: str, warned: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Must show: an unauthenticated page bound beyond loopback says so, one line under
    its URL, on stderr; loopback says nothing more. (The sockets are bound on 127.0.0.1
    under the asked host's key: the test exposes nothing.)"""
    from engine.observe.serve import _announce

    config = Config(inputs=("x.jsonl",), metrics_addr=metrics, dashboard=dashboard)
    keys = {parse_listen(metrics, "--metrics-addr"), parse_listen(dashboard, "--dashboard")}
    sockets = {key: socket.socket() for key in keys}
    try:
        for sock in sockets.values():
            sock.bind(("127.0.0.1", 0))
        _announce(config, sockets)
    finally:
        for sock in sockets.values():
            sock.close()
    lines = capsys.readouterr().err.splitlines()
    warnings = [line for line in lines if line.startswith("adbatch: warning: ")]
    assert len(lines) == 2 + len(warnings)
    assert len(warnings) == len(warned)
    for warning, option in zip(warnings, warned, strict=True):
        assert option in warning
        assert "reachable from other machines and has no authentication" in warning
