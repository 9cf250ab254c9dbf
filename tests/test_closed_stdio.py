"""Closed standard streams and pipes on stdout (engine/files/paths.py).

- A command started with fd 0, 1 or 2 closed (`<&-`, `>&-`, `2>&-`, as some daemons and
  cron wrappers leave them) runs as with the stream on /dev/null when it does not need
  it: no abort in uvloop (a socket on fd 0-2), no traceback, every record written.
- A closed stream it needs is exit 2, one line, nothing sent: events from a closed stdin,
  records (or --summary) to a closed stdout.
- stdout that is a pipe is compared like a file: `--summary /dev/stdout | cat` with the
  records on stdout is exit 2, and nothing reaches the pipe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import orjson
import pytest
from conftest import exactly_once, read_records

from engine.mock import running_mock

# End to end: CLI runs in subprocesses, a second or so each (CI runs -m slow).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EVENT = {
    "criteo-partner-id": 12345,
    "retailer-visitor-id": "rv-1",
    "event-type": "viewHome",
    "page-id": "viewHome_API_desktop",
}
N = 5
DATA = b"".join(orjson.dumps({**EVENT, "id": f"e{i}"}) + b"\n" for i in range(N))
RUN = ["run", "--mock", "--no-progress"]


def closed(cwd: Path, redirect: str, *argv: str) -> tuple[int, str]:
    """The CLI with `redirect` (`<&-`, `>&-`, `2>&-`) applied last, as a shell would:
    (exit code, stderr; empty when stderr is the stream closed). The other streams are
    files of `cwd` (stdin empty)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ADBATCH_TOKEN", None)
    (cwd / "empty").write_bytes(b"")
    with open(cwd / "empty", "rb") as fin, open(cwd / "stdout", "wb") as fout:
        done = subprocess.run(
            ["sh", "-c", f'exec "$@" {redirect}', "sh", sys.executable, "-m", "engine", *argv],
            cwd=cwd,
            env=env,
            stdin=fin,
            stdout=fout,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    err = done.stderr.decode()
    assert "Traceback" not in err, err
    return done.returncode, err


@pytest.mark.parametrize("redirect", ["<&-", "2>&-", "<&- 2>&-"])
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([*RUN, "in.jsonl", "-o", "out.jsonl"], id="run"),
        pytest.param([*RUN, "--workers", "2", "in.jsonl", "-o", "out.jsonl"], id="run-workers"),
    ],
)
def test_a_closed_stream_the_run_does_not_need_is_harmless(
    tmp_path: Path, argv: list[str], redirect: str
) -> None:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    rc, err = closed(tmp_path, redirect, *argv)
    assert rc == 0, err
    exactly_once(read_records(tmp_path / "out.jsonl"), N)


@pytest.mark.parametrize("redirect", ["<&-", ">&-", "2>&-"])
@pytest.mark.parametrize(
    ("argv", "made"),
    [
        pytest.param(
            ["load", "--mock", "--no-progress", "--rate", "50", "--no-loop", "in.jsonl",
             "-o", "out.jsonl"],
            "out.jsonl",
            id="load",
        ),
        pytest.param(["merge", "in.jsonl", "-o", "out.jsonl"], "out.jsonl", id="merge"),
        pytest.param(["config", "--show", "--token", "tok-1234", "--rate", "7"], None, id="config"),
        pytest.param(["report", "in.jsonl", "--html", "out.html"], "out.html", id="report"),
    ],
)  # fmt: skip
def test_every_command_runs_with_a_closed_stream(
    tmp_path: Path, argv: list[str], made: str | None, redirect: str
) -> None:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    if argv[0] in ("merge", "report"):  # they read records: make some
        rc, err = closed(tmp_path, "", *RUN, "in.jsonl", "-o", "recs.jsonl")
        assert rc == 0, err
        (tmp_path / "in.jsonl").write_bytes((tmp_path / "recs.jsonl").read_bytes())
    rc, err = closed(tmp_path, redirect, *argv)
    if argv[0] == "report" and redirect == ">&-":  # its text report goes to stdout
        assert rc == 2, err
        assert err.strip() == (
            "adbatch: error: stdout is closed: the text report would be lost; "
            "redirect stdout to a file (> FILE)"
        )
        assert not (tmp_path / "out.html").exists()
        return
    assert rc == 0, err
    if made is not None:
        assert (tmp_path / made).stat().st_size > 0
    if argv[0] == "config" and redirect != ">&-":
        assert b"rate = 7.0" in (tmp_path / "stdout").read_bytes()


def test_the_mock_serves_with_closed_streams(tmp_path: Path) -> None:
    """`adbatch mock` with stdin and stderr closed listens and says where (no abort)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = ["sh", "-c", 'exec "$@" <&- 2>&-', "sh", sys.executable, "-m", "engine"]
    with subprocess.Popen(
        [*command, "mock", "--port", "0"], env=env, stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.terminate()
    assert line.startswith(b"adbatch mock: delivery http://127.0.0.1:"), line
    assert proc.returncode == -15 or proc.returncode == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("redirect", "args", "message"),
    [
        pytest.param(
            ">&-", ["in.jsonl"],
            "stdout is closed: the records would be lost; give -o FILE",
            id="records-to-closed-stdout",
        ),
        pytest.param(
            ">&-", ["in.jsonl", "-o", "-"],
            "stdout is closed: the records would be lost; give -o FILE",
            id="o-dash-to-closed-stdout",
        ),
        pytest.param(
            ">&-", ["in.jsonl", "-o", "/dev/stdout"],
            "stdout is closed: the records would be lost; give -o FILE",
            id="o-dev-stdout-closed",
        ),
        *(
            pytest.param(
                ">&-", ["in.jsonl", "-o", name],
                "stdout is closed: the records would be lost; give -o FILE",
                id=f"o-{tag}-closed",
            )
            for name, tag in (("//dev/stdout", "double-slash"), ("to-stdout", "link"),
                              ("to-fd1", "link-to-proc-fd"))
        ),
        pytest.param(
            ">&-", ["in.jsonl", "-o", "out.jsonl", "--summary", "to-stdout"],
            "stdout is closed: --summary would be lost; name a file",
            id="summary-by-link-to-closed-stdout",
        ),
        pytest.param(
            ">&-", ["in.jsonl", "-o", "out.jsonl", "--summary", "/dev/stdout"],
            "stdout is closed: --summary would be lost; name a file",
            id="summary-to-closed-stdout",
        ),
        pytest.param(
            "<&-", ["-o", "out.jsonl"],
            "stdin is closed: the events cannot be read from it; name a file",
            id="events-from-closed-stdin",
        ),
        pytest.param(
            "<&-", ["-", "-o", "out.jsonl", "--workers", "2"],
            "stdin is closed: the events cannot be read from it; name a file",
            id="events-from-closed-stdin-workers",
        ),
    ],
)  # fmt: skip
async def test_a_closed_stream_the_run_needs_is_refused(
    tmp_path: Path, redirect: str, args: list[str], message: str
) -> None:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    (tmp_path / "to-stdout").symlink_to("/dev/stdout")  # other names of the same stream
    (tmp_path / "to-fd1").symlink_to("/proc/self/fd/1")
    async with running_mock() as mock:
        argv = ["run", "--endpoint", mock.delivery_url, "--token", "mock-token", "--no-progress"]
        rc, err = await anyio.to_thread.run_sync(lambda: closed(tmp_path, redirect, *argv, *args))
    assert rc == 2, err
    assert err.strip() == f"adbatch: error: {message}"
    assert mock.state.delivery_requests == 0
    assert not (tmp_path / "out.jsonl").exists()


# -- stdout a pipe -----------------------------------------------------------------------


def piped(cwd: Path, *argv: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "engine", *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--summary", "/dev/stdout"], id="records-and-summary"),
        pytest.param(["-o", "-", "--summary", "/dev/fd/1"], id="o-dash-and-summary"),
    ],
)
def test_a_summary_into_the_piped_records_is_refused(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    done = piped(tmp_path, *RUN, "in.jsonl", *args)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.strip().count("\n") == 0, err
    assert "is the same file as stdout (" in err, err
    assert done.stdout == b""


def test_a_piped_stdout_with_other_outputs_passes(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    done = piped(tmp_path, *RUN, "in.jsonl", "--summary", "s.json")
    assert done.returncode == 0, done.stderr.decode()
    (tmp_path / "out.jsonl").write_bytes(done.stdout)
    exactly_once(read_records(tmp_path / "out.jsonl"), N)
    assert orjson.loads((tmp_path / "s.json").read_bytes())["exit_code"] == 0
