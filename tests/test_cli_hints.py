"""Hints where the user most likely got something wrong: CSV on stdin without --format,
an endpoint path that answers 404 to every call, `report` given an input file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# End to end: CLI runs in subprocesses, seconds in all (CI runs -m slow).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CSV_HINT = "adbatch: hint: stdin looks like CSV: add --format csv\n"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADBATCH_")}
    return {**env, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _adbatch(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        cwd=ROOT,
    )


def _hints(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("adbatch: hint:")]


def test_csv_on_stdin_without_format_gets_a_hint() -> None:
    done = _adbatch("run", "--mock", "-", stdin=(EXAMPLES / "pageviews.csv").read_bytes())
    assert done.returncode == 1  # every line invalid, as JSONL
    assert done.stderr.endswith(CSV_HINT)
    assert _hints(done.stderr) == [CSV_HINT.strip()]


@pytest.mark.parametrize(
    ("args", "file"),
    [
        pytest.param(["--format", "csv"], "pageviews.csv", id="csv-with-format"),
        pytest.param([], "pageviews.jsonl", id="jsonl"),
    ],
)
def test_no_csv_hint_when_stdin_is_read_right(args: list[str], file: str) -> None:
    done = _adbatch("run", "--mock", *args, "-", stdin=(EXAMPLES / file).read_bytes())
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 40  # stdin was peeked, not eaten
    assert _hints(done.stderr) == []


def test_a_malformed_jsonl_line_without_commas_gets_no_csv_hint() -> None:
    done = _adbatch("run", "--mock", "-", stdin=b"not json\n")
    assert done.returncode == 1
    assert _hints(done.stderr) == []


@pytest.fixture
def mock_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli.main", "mock", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    try:
        yield line[3]  # adbatch mock: delivery URL  token URL
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)


@pytest.mark.parametrize(
    ("path", "hinted"),
    [
        pytest.param("/delivery/retail-media", True, id="wrong-path"),
        pytest.param("/delivery/retailmedia", False, id="right-path"),
    ],
)
def test_404_on_every_call_names_the_endpoint(mock_url: str, path: str, hinted: bool) -> None:
    base = mock_url.removesuffix("/delivery/retailmedia")
    done = _adbatch(
        "run",
        "--endpoint",
        base + path,
        "--token",
        "mock-token",
        str(EXAMPLES / "pageviews.jsonl"),
    )
    hints = _hints(done.stderr)
    if hinted:
        assert done.returncode == 1
        assert len(hints) == 1
        assert "every call was answered 404" in hints[0]
        assert "--endpoint" in hints[0]
    else:
        assert done.returncode == 0, done.stderr
        assert hints == []


def test_report_refuses_an_input_file(tmp_path: Path) -> None:
    done = _adbatch("report", str(EXAMPLES / "pageviews.jsonl"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "holds no records of a run" in done.stderr


def test_report_reads_a_runs_output(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    run = _adbatch("run", "--mock", str(EXAMPLES / "pageviews.jsonl"), "-o", str(out))
    assert run.returncode == 0, run.stderr
    done = _adbatch("report", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("records   40")
