"""--metrics-addr, --dashboard and --metrics-linger from the command line (issue 14):
what a user types, run as a process, as the docs say.

- A bare :PORT listens on loopback only; an IPv6 host in brackets; a refused address
  is named in one line (exit 2).
- --metrics-linger keeps /metrics up after the last call with the final figures; the
  summary comes after it, and Ctrl-C or SIGTERM ends the wait (exit 0: the run was whole).
- docs/load-testing.md's "Watching a load test" commands run as written (ports and the
  output file made free ones).
- The dashboard of a `run` with --workers 2 in headless Chromium: progress by bytes
  with an ETA, every chart drawn, errors by kind.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_dashboard_browser import chromium, look

from engine.errors import ConfigError
from engine.observe.serve import bind

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("addr", "host"),
    [
        pytest.param(":0", "127.0.0.1", id="bare-port-is-loopback"),
        pytest.param("127.0.0.1:0", "127.0.0.1", id="ipv4"),
        pytest.param("0.0.0.0:0", "0.0.0.0", id="every-interface-when-asked"),
        pytest.param("[::1]:0", "::1", id="ipv6"),
    ],
)
def test_bind_listens_where_asked(addr: str, host: str) -> None:
    if ":" in host and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    sock = bind(addr, "--metrics-addr")
    try:
        bound = sock.getsockname()
        assert bound[0] == host
        assert bound[1] > 0  # port 0: a free one, chosen by the system
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("addr", "message"),
    [
        pytest.param("192.0.2.1:0", "cannot listen on 192.0.2.1:0", id="not-this-machine"),
        pytest.param("[fe80::1]:0", "cannot listen on [fe80::1]:0", id="ipv6-in-brackets"),
        pytest.param("no-such-host.invalid:0", "unknown host", id="unknown-name"),
    ],
)
def test_bind_refuses_in_one_line(addr: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        bind(addr, "--dashboard").close()
    text = str(caught.value)
    assert text.startswith(f"--dashboard {addr}: ")
    assert message in text
    assert "\n" not in text


def adbatch(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, start_new_session=True,
    )  # fmt: skip


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.status == 200
        return str(answer.read().decode())


def calls_total(text: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "adbatch_calls_total"
    )


def _wait_for_the_records(run: subprocess.Popen[str], out: Path, count: int) -> None:
    """Until `out` holds `count` records (the run is over), `run` still up."""
    deadline = time.monotonic() + 30
    while out.read_bytes().count(b"\n") < count if out.exists() else True:
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.1)
    time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "load"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_linger_serves_the_last_scrape_until_a_signal(
    tmp_path: Path, command: str, sig: signal.Signals
) -> None:
    out = tmp_path / "out.jsonl"
    port = free_port()
    schedule = ["--rate", "40", "--duration", "1s"] if command == "load" else []
    run = adbatch(command, "--mock", EXAMPLES / "pageviews.jsonl", *schedule, "-o", out,
                  "--metrics-addr", f":{port}", "--metrics-linger", "60")  # fmt: skip
    try:
        assert run.stderr is not None
        assert run.stderr.readline() == f"adbatch: metrics on http://127.0.0.1:{port}/metrics\n"
        # The run is over when the output holds every record; the endpoint stays up.
        _wait_for_the_records(run, out, 40)
        last = get(f"http://127.0.0.1:{port}/metrics")
        assert calls_total(last) == 40
        assert "adbatch_in_flight 0.0" in last
        assert run.poll() is None, "the endpoint did not linger"
        run.send_signal(sig)
        _, err = run.communicate(timeout=20)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    assert re.search(r"^adbatch: 40 events in ", err, re.M), err
    assert "interrupted" not in err
    assert "stay served 60s more (--metrics-linger): Ctrl-C ends the wait" in err, err
    with pytest.raises(urllib.error.URLError, match="refused"):
        get(f"http://127.0.0.1:{port}/metrics")  # gone with the process


@pytest.mark.slow
def test_a_run_stopped_with_exit_3_is_not_lingered_on(tmp_path: Path) -> None:
    """An endpoint nobody listens on stops the run (exit 3): the summary comes at once,
    not after --metrics-linger (a run that fails is not waited on)."""
    dead = free_port()
    run = adbatch("run", EXAMPLES / "pageviews.jsonl", "--endpoint", f"http://127.0.0.1:{dead}/d",
                  "-o", tmp_path / "out.jsonl", "--no-progress",
                  "--metrics-addr", f":{free_port()}", "--metrics-linger", "600",
                  env={**os.environ, "ADBATCH_TOKEN": "t0ken"})  # fmt: skip
    try:
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 3, err
    assert re.search(r"^adbatch: stopped: cannot reach the delivery endpoint", err, re.M), err
    assert "--metrics-linger" not in err


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "load"])
def test_a_run_a_signal_stops_is_not_lingered_on(tmp_path: Path, command: str) -> None:
    """SIGINT mid-run stops the run (exit 130) and ends it: no --metrics-linger after."""
    port = free_port()
    schedule = ["--rate", "5", "--duration", "60s"] if command == "load" else ["--rate", "5"]
    run = adbatch(command, "--mock", EXAMPLES / "pageviews.jsonl", *schedule, "--no-progress",
                  "-o", tmp_path / "out.jsonl",
                  "--metrics-addr", f":{port}", "--metrics-linger", "600")  # fmt: skip
    try:
        calls = 0.0
        for _ in range(200):  # until a call is made (stderr is a pipe: not its first line)
            try:
                calls = calls_total(get(f"http://127.0.0.1:{port}/metrics"))
            except urllib.error.URLError:
                pass
            if calls:
                break
            assert run.poll() is None, run.communicate()
            time.sleep(0.1)
        assert 0 < calls < 40  # under way
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130, err
    assert re.search(r"^adbatch: stopped: interrupted by SIGINT", err, re.M), err
    assert "--metrics-linger" not in err


@pytest.mark.slow
def test_a_malformed_request_is_answered_400_and_not_logged(tmp_path: Path) -> None:
    """A request whose header line passes aiohttp's limit (anyone who can reach the
    port may send one): 400, and no traceback on the run's stderr."""
    port = free_port()
    out = tmp_path / "out.jsonl"
    run = adbatch("run", "--mock", EXAMPLES / "pageviews.jsonl", "-o", out,
                  "--metrics-addr", f":{port}", "--metrics-linger", "60")  # fmt: skip
    try:
        assert run.stderr is not None
        assert run.stderr.readline() == f"adbatch: metrics on http://127.0.0.1:{port}/metrics\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n"
            )
            assert sock.recv(200).split(b"\r\n")[0].endswith(b" 400 Bad Request")
        _wait_for_the_records(run, out, 40)  # the run ends; the endpoint lingers
        assert calls_total(get(f"http://127.0.0.1:{port}/metrics")) == 40  # still up
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=20)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    assert "Traceback" not in err
    assert "Error handling request" not in err


def docs_block(path: Path, heading: str) -> list[str]:
    """The commands of the first ```sh block under `heading`."""
    text = path.read_text()
    section = text[text.index(heading) :]
    block = section[section.index("```sh\n") + 6 :]
    return [line for line in block[: block.index("```")].splitlines() if line.strip()]


@pytest.mark.slow
def test_the_load_testing_docs_commands_run(tmp_path: Path) -> None:
    """docs/load-testing.md "Watching a load test": the load test and the curl line."""
    load_line, curl_line = docs_block(ROOT / "docs" / "load-testing.md", "## Watching a load test")
    assert load_line.startswith("adbatch load --mock examples/pageviews.jsonl")
    metrics, board = free_port(), free_port()
    argv = shlex.split(load_line)[1:]
    argv[argv.index(":9100")] = f":{metrics}"
    argv[argv.index(":8000")] = f":{board}"
    argv[argv.index("out.jsonl")] = str(tmp_path / "out.jsonl")
    run = adbatch(*argv)
    scrapes: list[str] = []
    pages: list[str] = []
    try:
        assert run.stderr is not None
        served = [run.stderr.readline() for _ in range(2)]
        assert served == [
            f"adbatch: metrics on http://127.0.0.1:{metrics}/metrics\n",
            f"adbatch: dashboard on http://127.0.0.1:{board}/\n",
        ]
        curl = curl_line.replace(":9100", f":{metrics}")
        while run.poll() is None:
            if shutil.which("curl"):
                got = subprocess.run(curl, shell=True, capture_output=True, text=True, check=False)
                scrapes.append(got.stdout)
            else:  # the same, without curl: the lines the grep keeps
                text = get(f"http://127.0.0.1:{metrics}/metrics")
                scrapes.append("".join(line + "\n" for line in text.splitlines()
                                       if line.startswith("adbatch_calls_total")))  # fmt: skip
            try:
                pages.append(get(f"http://127.0.0.1:{board}/"))
            except OSError:
                pass  # closed after the linger
            time.sleep(0.5)
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    records = (tmp_path / "out.jsonl").read_bytes().count(b"\n")
    assert 450 <= records <= 550  # 100/s for 5 s
    counts = [calls_total(s) for s in scrapes if s.strip()]
    assert all(s.startswith('adbatch_calls_total{error_kind="",status="200"} ') for s in scrapes
               if s.strip())  # fmt: skip
    assert any(0 < n < records for n in counts), counts  # during the run
    assert counts[-1] == records  # the linger's scrape: every call
    assert pages
    assert 'id="done"' in pages[0]


EVENT = (
    '{"criteo-partner-id": 1, "retailer-visitor-id": "v", "event-type": "viewHome", '
    '"page-id": "viewHome_API_desktop"}\n'
)


def chart_paths(dom: str, chart: str) -> int:
    found = re.search(rf'<svg id="{chart}"[^>]*>(.*?)</svg>', dom, re.S)
    assert found is not None, dom[-2000:]
    return found.group(1).count("<path")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_dashboard_of_a_run_with_workers_in_chromium(tmp_path: Path) -> None:
    """`run` reading a file: progress by bytes with an ETA, every chart drawn, errors."""
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (Debian package `chromium`, see .ci/run)")
    events = tmp_path / "events.jsonl"
    invalid = '{"event-type": "viewSearchResult"}\n'  # no keywords: an invalid record
    events.write_text((EVENT * 9 + invalid) * 50)
    board = free_port()
    run = adbatch("run", "--mock", events, "--workers", "2", "--rate", "60", "--no-progress",
                  "-o", tmp_path / "out.jsonl", "--dashboard", f":{board}")  # fmt: skip
    try:
        assert run.stderr is not None
        assert run.stderr.readline() == f"adbatch: dashboard on http://127.0.0.1:{board}/\n"
        time.sleep(3)  # a few points to draw
        netlog = tmp_path / "netlog.json"
        page = look(browser, f"http://127.0.0.1:{board}/", tmp_path / "profile", "--dump-dom",
                    f"--log-net-log={netlog}")  # fmt: skip
        assert page.returncode == 0, page.stderr[-2000:]
        assert run.poll() is None, "the run ended before the look"
    finally:
        run.kill()
        run.communicate()
    # Every request the page made went to its own host, and it polled more than once in
    # its 3 s (of virtual time): once a second. (Chromium's own background requests,
    # initiated by no page, go to a dead proxy.)
    origin = f"http://127.0.0.1:{board}"
    asked = [
        event["params"]["url"]
        for event in json.loads(netlog.read_text())["events"]
        if event.get("params", {}).get("initiator") == origin and "url" in event["params"]
    ]
    assert asked
    assert all(url.startswith(origin + "/") for url in asked), asked
    polls = {url for url in asked if url.startswith(f"{origin}/data.json?since=")}
    assert len(polls) >= 2, asked
    dom = page.stdout
    progress = re.search(r'id="progresstext">([^<]*)<', dom)
    assert progress is not None
    assert re.fullmatch(r"\d+\.\d% of the input read, ETA \d+s", progress.group(1)), progress
    for chart in ("c-rate", "c-latency", "c-inflight", "c-errors"):
        assert chart_paths(dom, chart) >= 1, chart
    assert chart_paths(dom, "c-rate") == 2  # achieved and target
    assert re.search(r"<td>invalid</td><td class=\"n\">[1-9]", dom), dom[-3000:]
    assert re.search(r'id="state"[^>]*>running<', dom)
    done = re.search(r'id="done">([\d,]+)<', dom)
    assert done is not None
    assert 0 < int(done.group(1).replace(",", "")) < 500


def test_the_docs_name_every_series() -> None:
    """README and docs/load-testing.md name the series /metrics serves, no other."""
    from test_observe_core import SERIES

    served = {name + ("_total" if kind == "counter" else "") for name, (kind, _) in
              SERIES.items()}  # fmt: skip
    for doc in (ROOT / "README.md", ROOT / "docs" / "load-testing.md"):
        named = {re.sub(r"_(bucket|count|sum)$", "", name)
                 for name in re.findall(r"\b(adbatch_[a-z_]+)", doc.read_text())}  # fmt: skip
        assert named == served, (doc.name, named ^ served)
