"""Pipes and limits (issue 12, item 9).

Named pipes, character devices and process substitution are inputs like files: each is
opened once, to be read (no probing open). The soft limit on open files is raised to the
hard one at start; a -c that still does not fit is refused with exit 2, naming both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import orjson
import pytest
from conftest import exactly_once, read_records

from engine.cli.main import main
from engine.mock import MockConfig, running_mock

# End to end: CLI runs in subprocesses, seconds in all (CI runs -m slow).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def events(n: int) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "id": f"ev-{i}",
                "timestamp": 1764331200 + i / 100,
                "criteo-partner-id": 12345,
                "retailer-visitor-id": f"rv-{i}",
                "event-type": "viewHome",
                "page-id": "viewHome_API_desktop",
            }
        )
        + b"\n"
        for i in range(n)
    )


class Writer(threading.Thread):
    """Writes `data` into the named pipe `path` once, as a producer would."""

    def __init__(self, path: Path, data: bytes) -> None:
        super().__init__(daemon=True)
        self.path, self.data = path, data
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with open(self.path, "wb") as f:  # waits for the reader's open
                f.write(self.data)
        except BaseException as exc:
            self.error = exc


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "events.fifo"
    os.mkfifo(path)
    yield path
    # A run that never opened the pipe would leave the writer blocked: release it.
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb"):
        pass


@pytest.mark.parametrize(
    "procs", [pytest.param([], id="1-process"), pytest.param(["--workers", "2"], id="workers")]
)
def test_a_named_pipe_is_read_once_to_the_end(
    tmp_path: Path, fifo: Path, procs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    n = 300
    writer = Writer(fifo, events(n))
    writer.start()
    out = tmp_path / "out.jsonl"
    assert main(["run", "--mock", "--no-progress", *procs, str(fifo), "-o", str(out)]) == 0
    writer.join(5)
    assert not writer.is_alive()
    assert writer.error is None
    records = read_records(out)
    exactly_once(records, n)
    assert all(r["status"] == 200 for r in records)
    assert {r["source"] for r in records} == {f"{fifo}:{i + 1}" for i in range(n)}
    assert f"{n} events" in capsys.readouterr().err


def test_dev_null_is_an_empty_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["run", "--mock", "--no-progress", "/dev/null", "-o", str(out)]) == 0
    assert out.read_bytes() == b""
    assert "0 events" in capsys.readouterr().err


def test_process_substitution_and_dev_stdin(tmp_path: Path) -> None:
    """`/dev/fd/N` (what `<(...)` passes) and `/dev/stdin` holding a pipe: read once."""
    out = tmp_path / "out.jsonl"
    read_end, write_end = os.pipe()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "engine", "run", "--mock", "--no-progress", "-o", str(out)]
    with subprocess.Popen(
        [*argv, f"/dev/fd/{read_end}", "/dev/stdin"],
        env=env,
        pass_fds=(read_end,),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        os.close(read_end)
        with open(write_end, "wb") as w:
            w.write(events(20))
        _, err = proc.communicate(events(30), timeout=30)
    assert proc.returncode == 0, err
    records = read_records(out)
    exactly_once(records, 50)
    assert sum(r["source"].startswith("/dev/stdin:") for r in records) == 30


def test_replay_reads_a_named_pipe_once(tmp_path: Path, fifo: Path) -> None:
    writer = Writer(fifo, events(40))
    writer.start()
    out = tmp_path / "out.jsonl"
    argv = ["replay", "--mock", "--no-progress", "--speed", "1000", str(fifo), "-o", str(out)]
    assert main(argv) == 0
    writer.join(5)
    exactly_once(read_records(out), 40)


# -- the open-files limit ----------------------------------------------------------------

#: Runs the CLI under a lowered RLIMIT_NOFILE (soft, hard), set before engine is imported.
LIMITED = (
    "import resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))\n"
    "from engine.cli.main import main\n"
    "sys.exit(main(sys.argv[3:]))\n"
)


def run_limited(soft: int, hard: int, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ADBATCH_TOKEN": "mock-token", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(soft), str(hard), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_concurrency_beyond_the_hard_limit_is_exit_2(tmp_path: Path) -> None:
    inputs = tmp_path / "in.jsonl"
    inputs.write_bytes(events(3))
    out = tmp_path / "out.jsonl"
    done = run_limited(256, 256, "run", "--mock", "-c", "1000", str(inputs), "-o", str(out))
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err
    assert "-c 1000 needs about" in err
    assert "the limit is 256" in err
    assert not out.exists()  # refused before the output was opened


@pytest.mark.anyio
async def test_the_soft_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    """soft 64, hard 256: 60 connections held at once (the mock answers slowly) do not
    fit under 64 files with the interpreter's own; they do once the soft limit is raised."""
    n = 120
    inputs = tmp_path / "in.jsonl"
    inputs.write_bytes(events(n))
    out = tmp_path / "out.jsonl"
    async with running_mock(MockConfig(latency=0.2)) as mock:
        argv = ["run", "--endpoint", mock.delivery_url, "-c", "60", "--no-progress"]
        done = await anyio.to_thread.run_sync(
            lambda: run_limited(64, 256, *argv, str(inputs), "-o", str(out))
        )
    assert done.returncode == 0, done.stderr
    records = read_records(out)
    exactly_once(records, n)
    assert all(r["status"] == 200 for r in records), {r["error"] for r in records}
