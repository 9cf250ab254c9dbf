"""A stdout or stderr whose reader has gone (engine/files/paths.py, `drop_unread_messages`).

- `adbatch load ... 2>&1 | head` in CI: once `head` exits, what is written to the pipe
  fails with EPIPE. The messages are lost, nothing else: the exit code is the run's
  (0 all ok, 4 a threshold failed), the records and --summary are whole, no traceback
  (which was exit 1, with an empty --summary).
- The same for every command: run, replay, report (its text on stdout), config --show
  and --help (on stdout).
- stderr on a full disk (`2>/dev/full`) loses the messages the same way.
- Real pipes whose read end is closed before the command writes, in subprocesses: the
  reader exited early.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import events, exactly_once, read_records

# End to end: CLI runs in subprocesses, a second or so each (CI runs -m slow).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
N = 20
DATA = b"".join(orjson.dumps(event) + b"\n" for event in events(N))
LOAD = ["load", "--mock", "--rate", "40", "--duration", "0.5s", "--no-loop"]


def unread(cwd: Path, *argv: str, streams: tuple[str, ...] = ("stderr",)) -> int:
    """The CLI's exit code with `streams` (stdout, stderr or both, as `2>&1 | head`) on
    one pipe whose reader has exited; the others on files of `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ADBATCH_TOKEN", None)
    read_end, write_end = os.pipe()
    os.close(read_end)
    files = {name: open(cwd / name, "wb") for name in ("stdout", "stderr")}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "engine", *argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=write_end if "stdout" in streams else files["stdout"],
            stderr=write_end if "stderr" in streams else files["stderr"],
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
        for file in files.values():
            file.close()
    err = (cwd / "stderr").read_text()
    assert "Traceback" not in err, err
    return done.returncode


def summary_of(path: Path) -> dict[str, object]:
    data = orjson.loads(path.read_bytes())  # whole: it parses
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("streams", [("stderr",), ("stdout", "stderr")], ids=["2>", "2>&1"])
@pytest.mark.parametrize(
    ("threshold", "code"), [("p99<60s", 0), ("p99<0ms", 4)], ids=["passed", "failed"]
)
def test_load_keeps_its_exit_code_and_files(
    tmp_path: Path, streams: tuple[str, ...], threshold: str, code: int
) -> None:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    argv = [*LOAD, "in.jsonl", "-o", "out.jsonl", "--summary", "s.json"]
    assert unread(tmp_path, *argv, "--threshold", threshold, streams=streams) == code
    data = summary_of(tmp_path / "s.json")
    records = read_records(tmp_path / "out.jsonl")
    assert records
    assert data["attempts"] == len(records)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_run_keeps_its_exit_code_and_files(tmp_path: Path, workers: str) -> None:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    argv = ["run", "--mock", "--workers", workers, "in.jsonl", "-o", "out.jsonl"]
    assert unread(tmp_path, *argv, "--summary", "s.json", streams=("stdout", "stderr")) == 0
    exactly_once(read_records(tmp_path / "out.jsonl"), N)
    assert summary_of(tmp_path / "s.json")["exit_code"] == 0


def test_replay_keeps_its_exit_code_and_files(tmp_path: Path) -> None:
    log = str(ROOT / "examples" / "access.log")  # 40 requests
    argv = ["replay", "--mock", log, "--speed", "100", "-o", "out.jsonl", "--summary", "s.json"]
    assert unread(tmp_path, *argv) == 0
    assert len(read_records(tmp_path / "out.jsonl")) == 40
    summary_of(tmp_path / "s.json")


def test_report_keeps_its_exit_code_and_files(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    assert unread(tmp_path, "run", "--mock", "in.jsonl", "-o", "out.jsonl") == 0
    argv = ["report", "out.jsonl", "--html", "r.html", "--summary", "s.json"]
    assert unread(tmp_path, *argv, streams=("stdout", "stderr")) == 0
    assert (tmp_path / "r.html").read_text().rstrip().endswith("</html>")
    summary_of(tmp_path / "s.json")


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        pytest.param(["config", "--show", "--mock"], 0, id="config-show"),
        pytest.param(["--help"], 0, id="help"),
        pytest.param(["run", "--help"], 0, id="run-help"),
        pytest.param(["run", "--rate", "fast"], 2, id="usage-error"),
    ],
)
def test_what_prints_keeps_its_exit_code(tmp_path: Path, argv: list[str], code: int) -> None:
    assert unread(tmp_path, *argv, streams=("stdout", "stderr")) == code


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["run", "--mock", "in.jsonl", "-o", "out.jsonl"], id="run"),
        pytest.param([*LOAD, "in.jsonl", "-o", "out.jsonl"], id="load"),
    ],
)
def test_a_full_stderr_keeps_the_exit_code_and_files(tmp_path: Path, argv: list[str]) -> None:
    """stderr on a full disk (`2>/dev/full`: every write ENOSPC): the messages are lost,
    the run's exit code and files are not (it was 120, Python's 'lost sys.stderr')."""
    (tmp_path / "in.jsonl").write_bytes(DATA)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "engine", *argv, "--summary", "s.json"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=full,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0
    summary_of(tmp_path / "s.json")
    assert read_records(tmp_path / "out.jsonl")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_records_on_a_stdout_whose_reader_went_stop_the_run_with_its_summary(
    tmp_path: Path, workers: str
) -> None:
    """The records on stdout, its reader gone: the output failed, exit 3, the summary
    written (a --workers parent wrote none: 0 bytes), and no --resume offered (it
    needs -o FILE)."""
    (tmp_path / "in.jsonl").write_bytes(DATA * 20)
    argv = ["run", "--mock", "--workers", workers, "in.jsonl", "--summary", "s.json"]
    assert unread(tmp_path, *argv, streams=("stdout",)) == 3
    data = summary_of(tmp_path / "s.json")
    assert data["exit_code"] == 3
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert summary["stopped"] == "output <stdout> was closed by the reader"
