"""A real Prometheus scrapes `adbatch load --rate 200 --metrics-addr` (issue 14 item 1).

Debian's `prometheus` (installed by .ci/run) runs with its own config in tmp_path: a 1 s
scrape interval, its TSDB in tmp_path, its web API on a free loopback port. While the
load test runs, its HTTP API is asked for rate(adbatch_calls_total[5s]): near 200.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(api: str, promql: str) -> list[dict[str, object]]:
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as answer:
        data = json.load(answer)
    assert data["status"] == "success", data
    result: list[dict[str, object]] = data["data"]["result"]
    return result


def query_range(api: str, promql: str, start: float, end: float) -> list[float]:
    """The values of `promql` evaluated once a second from `start` to `end`."""
    params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"}
    url = f"{api}/api/v1/query_range?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as answer:
        data = json.load(answer)
    assert data["status"] == "success", data
    return [float(v) for result in data["data"]["result"] for _, v in result["values"]]


def wait_ready(api: str, proc: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, "prometheus exited"
        try:
            with urllib.request.urlopen(f"{api}/-/ready", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("prometheus did not become ready")


def wait_scraping(api: str, seconds: float = 30.0) -> None:
    """Until Prometheus has tried the target once (it takes up its targets a few seconds
    after its start): from then on it scrapes every second."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if query(api, "up"):
            return
        time.sleep(0.2)
    raise AssertionError("prometheus did not scrape its target")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_prometheus_sees_the_rate_of_a_load_test(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (Debian package `prometheus`, installed by .ci/run)")
    metrics_port, web_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: adbatch\n    scrape_interval: 1s\n"
        "    scrape_timeout: 900ms\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    with open(tmp_path / "prometheus.log", "wb") as log_file:
        prom = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web_port}"],
            stdout=subprocess.DEVNULL, stderr=log_file, env={**os.environ, "HOME": str(tmp_path)},
        )  # fmt: skip
    api = f"http://127.0.0.1:{web_port}"
    try:
        wait_ready(api, prom)
        wait_scraping(api)
        load = subprocess.Popen(
            [sys.executable, "-m", "engine", "load", "--mock", "examples/pageviews.jsonl",
             "--rate", "200", "--duration", "8s", "--metrics-addr", f":{metrics_port}",
             "--metrics-linger", "3", "--no-progress", "-o", str(tmp_path / "out.jsonl")],
            cwd=ROOT, stderr=subprocess.PIPE,
        )  # fmt: skip
        rates: list[float] = []
        try:
            # Asked while the run goes on: the rate is live (the first scrape comes a
            # second or two in, once Prometheus has the target).
            deadline = time.monotonic() + 40
            while load.poll() is None and time.monotonic() < deadline:
                found = query(api, "sum(rate(adbatch_calls_total[3s]))")
                if found:
                    rates.append(float(found[0]["value"][1]))  # type: ignore[index]
                time.sleep(0.5)
            _, err = load.communicate(timeout=30)
        finally:
            if load.poll() is None:
                load.kill()
        assert load.returncode == 0, err.decode()
        done = query(api, "max_over_time(adbatch_calls_total[1m])")  # the linger's scrape
        # The rate Prometheus recorded over the run, second by second: from 3 s after
        # its first sample to the sample where the count reached its end.
        series = query(api, "adbatch_calls_total[1m]")  # one series: every call is a 200
        points = [(float(t), float(v)) for t, v in series[0]["values"]]  # type: ignore[index]
        end = next(t for t, v in points if v == points[-1][1])
        recorded = query_range(api, "sum(rate(adbatch_calls_total[3s]))", points[0][0] + 3, end)
        log = (tmp_path / "prometheus.log").read_text()
    finally:
        prom.send_signal(signal.SIGTERM)
        prom.wait(timeout=20)
    records = (tmp_path / "out.jsonl").read_bytes().count(b"\n")
    assert rates, f"prometheus had no rate of adbatch_calls_total; its log:\n{log[-2000:]}"
    assert any(r > 0 for r in rates), f"no live rate: {rates}"
    assert len(recorded) >= 3, recorded
    assert 180 <= statistics.median(recorded) <= 220, recorded
    # The last scrape (in the linger) holds every call written.
    assert sum(float(d["value"][1]) for d in done) == records  # type: ignore[index]
    assert 1560 <= records <= 1640
