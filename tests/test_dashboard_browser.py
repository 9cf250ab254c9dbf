"""The live dashboard in headless Chromium during a real run (issue 14 item 2).

The README's dashboard command runs (ports made free ones); Chromium loads the page twice
while it goes on, each time running its script until the page has polled its JSON
(--virtual-time-budget): the count of finished calls (id="done") grows between the two
looks. Any request beyond the page's own host would go to a dead proxy (and the page's
Content-Security-Policy forbids it). A screenshot is taken as docs/dashboard.png was.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The README's command (section "Watching a run").
README_COMMAND = (
    'adbatch load --mock examples/pageviews.jsonl --stages "5s:50,10s:200" '
    "--dashboard :8000 --metrics-addr :9100 -o out.jsonl"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def look(browser: str, url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--hide-scrollbars", "--proxy-server=127.0.0.1:9", f"--user-data-dir={profile}",
         "--virtual-time-budget=3000", *extra, url],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "HOME": str(profile)},
    )  # fmt: skip


def test_the_readme_states_the_command() -> None:
    assert README_COMMAND in (ROOT / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_count_grows_in_chromium_during_a_run(tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on this machine")
    board, metrics = free_port(), free_port()
    argv = shlex.split(README_COMMAND)[1:]
    argv[argv.index(":8000")] = f":{board}"
    argv[argv.index(":9100")] = f":{metrics}"
    argv[argv.index("out.jsonl")] = str(tmp_path / "out.jsonl")
    run = subprocess.Popen(
        [sys.executable, "-m", "engine", *argv, "--no-progress"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{board}/"
    try:
        assert run.stderr is not None
        served = [run.stderr.readline().strip() for _ in range(2)]  # both URLs, then the run
        assert served[1] == f"adbatch: dashboard on {url}", served
        time.sleep(2)
        counts = []
        for i in range(2):
            for attempt in range(3):  # headless chromium on a loaded machine may dump none
                page = look(browser, url, tmp_path / f"profile{i}-{attempt}", "--dump-dom")
                assert page.returncode == 0, page.stderr[-2000:]
                found = re.search(r'id="done">([\d,]+)<', page.stdout)
                if found is not None:
                    break
            assert found is not None, page.stdout[-2000:]
            counts.append(int(found.group(1).replace(",", "")))
            time.sleep(1.5)
        shot = tmp_path / "dashboard.png"
        for attempt in range(3):  # headless chromium on a loaded machine may write none
            taken = look(browser, url, tmp_path / f"shot{attempt}", "--window-size=1280,820",
                         f"--screenshot={shot}")  # fmt: skip
            assert taken.returncode == 0, taken.stderr[-2000:]
            if shot.exists():
                break
        assert shot.exists(), taken.stderr[-2000:]
        assert shot.stat().st_size > 10_000
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
        if run.stderr is not None:
            run.stderr.close()  # (a failed check must not leave it to the collector)
        run.wait()
    assert run.returncode == 0, err
    assert 0 < counts[0] < counts[1], counts


async def _evaluate(devtools: int, expression: str) -> object:
    """`expression`'s value in the page of a Chromium started with
    --remote-debugging-port=`devtools` (the DevTools protocol, over its websocket)."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{devtools}/json") as answer:
            targets = await answer.json()
        page = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            params = {"expression": expression, "returnByValue": True}
            await ws.send_json({"id": 1, "method": "Runtime.evaluate", "params": params})
            while True:
                message = await ws.receive_json()
                if message.get("id") == 1:
                    return message["result"]["result"].get("value")


def _page(devtools: int, expression: str) -> object:
    import asyncio

    for _ in range(50):  # until Chromium's DevTools answer and the page has its script
        try:
            return asyncio.run(_evaluate(devtools, expression))
        except (OSError, StopIteration, KeyError):
            time.sleep(0.2)
    raise AssertionError("Chromium's DevTools never answered")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_page_left_open_draws_the_next_run_on_its_port(tmp_path: Path) -> None:
    """A page open through a `load` that ends, then a `run` on the same port: the page's
    charts hold the second run's points from its first (each point as data.json gives it),
    none of the first run's (it asked ?since=<the first run's next> and dropped them)."""
    import json
    import urllib.request

    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on this machine")
    board, devtools = free_port(), free_port()
    events = ROOT / "examples" / "pageviews.jsonl"

    def start(*argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "engine", *argv, "--mock", str(events), "--no-progress",
             "--dashboard", f":{board}", "-o", str(tmp_path / "out.jsonl")],
            cwd=ROOT, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip

    profile = tmp_path / "profile"
    first = start("load", "--rate", "30", "--duration", "5s")
    page = None
    runs = [first]
    try:
        time.sleep(1)
        page = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--proxy-server=127.0.0.1:9", f"--user-data-dir={profile}",
             f"--remote-debugging-port={devtools}", f"http://127.0.0.1:{board}/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "HOME": str(profile)},
        )  # fmt: skip
        assert first.wait(timeout=60) == 0
        old = _page(devtools, "points.length")
        assert isinstance(old, int)
        assert old >= 3, old  # the page drew the first run
        second = start("run", "--rate", "10")  # 40 events: 4 s
        runs.append(second)
        time.sleep(2.5)
        shown = _page(devtools, "JSON.stringify({mode: $('mode').textContent, points})")
        with urllib.request.urlopen(f"http://127.0.0.1:{board}/data.json?since=0") as answer:
            served = json.load(answer)["points"]
        assert second.wait(timeout=60) == 0
    finally:
        for process in [*runs, *([page] if page else [])]:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert isinstance(shown, str)
    drawn = json.loads(shown)
    assert drawn["mode"] == "run"
    assert drawn["points"], "the page dropped the second run's points"
    assert drawn["points"] == served[: len(drawn["points"])], (drawn["points"], served)
