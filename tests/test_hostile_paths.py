"""Outputs never touch inputs, however they are named (issue 12, item 5; what an
adversarial tester found past test_output_paths).

- stdin and stdout redirected to a regular file are that file: `run - -o in.jsonl <
  in.jsonl`, `run in.jsonl >> in.jsonl` (records to stdout), `report - --html out.jsonl
  < out.jsonl` are exit 2 before anything is written;
- the manifests a command writes are outputs, those it reads are inputs;
- resume's compaction writes a new temporary file, never an existing one;
- a path with an undecodable byte (surrogateescape) never crashes a manifest, a merge,
  a report or a summary;
- the open-files refusal of load names --max-in-flight.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import config_for, exactly_once, read_records
from test_pipes_limits import run_limited

from engine import api
from engine.cli.common import json_bytes
from engine.cli.main import main
from engine.core.stats import Summary
from engine.files.manifests import read_manifest
from engine.mock import running_mock

# End to end: CLI runs in subprocesses, seconds in all (CI runs -m slow).
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


def adbatch(
    cwd: Path, *argv: str, stdin: str | None = None, stdout: str | None = None
) -> tuple[int, str]:
    """Run the CLI in a process of its own, stdin from / stdout appended to a file of
    `cwd` as a shell's `<` and `>>` would: (exit code, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ADBATCH_TOKEN", None)
    with (
        open(cwd / stdin, "rb") if stdin else open(os.devnull, "rb") as fin,
        open(cwd / stdout, "ab") if stdout else open(os.devnull, "wb") as fout,
    ):
        done = subprocess.run(
            [sys.executable, "-m", "engine", *argv],
            cwd=cwd,
            env=env,
            stdin=fin,
            stdout=fout,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    return done.returncode, done.stderr.decode()


def refused(rc: int, err: str) -> None:
    assert rc == 2, err
    assert err.strip().count("\n") == 0, err
    assert "is the same file as" in err, err
    assert "Traceback" not in err


# -- stdin and stdout ------------------------------------------------------------------------

RUN = ["run", "--mock", "--no-progress"]


@pytest.mark.parametrize(
    ("argv", "stdin", "stdout"),
    [
        pytest.param([*RUN, "-", "-o", "in.jsonl"], "in.jsonl", None, id="run-stdin-o-input"),
        pytest.param([*RUN, "-o", "in.jsonl"], "in.jsonl", None, id="run-implicit-stdin"),
        pytest.param(
            [*RUN, "--workers", "2", "-o", "in.jsonl"], "in.jsonl", None, id="run-workers-stdin"
        ),
        pytest.param([*RUN, "in.jsonl"], None, "in.jsonl", id="run-stdout-appended-to-input"),
        pytest.param([*RUN, "-", "-o", "-"], "in.jsonl", "in.jsonl", id="run-stdin-is-stdout"),
        pytest.param(
            [*RUN, "--workers", "2", "in.jsonl"], None, "in.jsonl", id="run-workers-stdout"
        ),
        pytest.param(
            ["load", "--mock", "--no-progress", "--rate", "50", "--no-loop", "in.jsonl"],
            None,
            "in.jsonl",
            id="load-stdout-appended-to-input",
        ),
        pytest.param(["report", "-", "--html", "in.jsonl"], "in.jsonl", None, id="report-html"),
        pytest.param(["report", "in.jsonl"], None, "in.jsonl", id="report-text-to-input"),
    ],
)
def test_stdin_or_stdout_on_an_input_is_refused(
    tmp_path: Path, argv: list[str], stdin: str | None, stdout: str | None
) -> None:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    rc, err = adbatch(tmp_path, *argv, stdin=stdin, stdout=stdout)
    refused(rc, err)
    assert "stdin" in err or "stdout" in err
    assert (tmp_path / "in.jsonl").read_bytes() == DATA


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
@pytest.mark.parametrize(
    "command",
    [
        pytest.param([*RUN], id="run"),
        pytest.param(["load", "--mock", "--no-progress", "--rate", "20", "--duration", "0.2"],
                     id="load"),
    ],
)  # fmt: skip
def test_a_summary_that_cannot_be_written_after_the_run_is_exit_3(
    tmp_path: Path, command: list[str]
) -> None:
    """Every call was sent and its record written; the --summary write fails at the end
    (a full disk): exit 3, not 2, which says nothing was sent."""
    (tmp_path / "in.jsonl").write_bytes(DATA)
    rc, err = adbatch(tmp_path, *command, "in.jsonl", "-o", "o.jsonl", "--summary", "/dev/full")
    assert rc == 3, err
    told = "cannot write /dev/full: No space left on device (the run's records are written"
    assert told in err
    assert "Traceback" not in err
    assert (tmp_path / "o.jsonl").read_bytes().count(b"\n") >= 1


@pytest.mark.parametrize("workers", [1, 2])
def test_an_output_that_fills_mid_run_says_resume_and_resume_ends_it(
    tmp_path: Path, workers: int
) -> None:
    """The output's file system fills mid-run (RLIMIT_FSIZE: writes past 40 KB fail, as
    on a full disk): the run stops with its summary (--summary written), exit 3, its stop
    line naming --resume; the same command with --resume, once there is room, answers
    every event exactly once."""
    n = 300
    (tmp_path / "in.jsonl").write_bytes(
        b"".join(orjson.dumps({**EVENT, "id": f"e{i}"}) + b"\n" for i in range(n))
    )
    argv = [*RUN, "--workers", str(workers), "in.jsonl", "-o", "o.jsonl"]
    summary = tmp_path / "s.json"
    full = fsize_limited(tmp_path, 40_000, *argv, "--summary", str(summary))
    err = full.stderr.strip()
    assert full.returncode == 3, err
    assert "Traceback" not in err
    assert "cannot write output o.jsonl: File too large" in err
    assert "run the same command with --resume" in err
    told = orjson.loads(summary.read_bytes())
    assert told["exit_code"] == 3
    assert "cannot write output o.jsonl: File too large" in told["summary"]["stopped"]
    stopped = [line for line in err.splitlines() if line.startswith("adbatch: stopped: ")]
    assert stopped == [f"adbatch: stopped: {told['summary']['stopped']}"]
    assert 0 < (tmp_path / "o.jsonl").stat().st_size <= 40_000
    rc, err = adbatch(tmp_path, *argv, "--resume")
    assert rc == 0, err
    exactly_once(read_records(tmp_path / "o.jsonl"), n)


def test_a_load_whose_output_fills_stops_without_offering_resume(tmp_path: Path) -> None:
    """load has no --resume (a schedule, exit 2 if given): its stop line says what
    failed, and offers none."""
    (tmp_path / "in.jsonl").write_bytes(DATA)
    argv = ["load", "--mock", "--no-progress", "--rate", "200", "--duration", "1s"]
    full = fsize_limited(tmp_path, 20_000, *argv, "in.jsonl", "-o", "o.jsonl")
    assert full.returncode == 3, full.stderr
    stopped = [line for line in full.stderr.splitlines() if line.startswith("adbatch: stopped:")]
    assert stopped == ["adbatch: stopped: cannot write output o.jsonl: File too large"]


def fsize_limited(cwd: Path, limit: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """The CLI in `cwd` with every file it writes limited to `limit` bytes: a full disk."""
    return subprocess.run(
        [sys.executable, "-c", FSIZE_LIMITED, str(limit), *argv],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


#: `python -c FSIZE_LIMITED BYTES ARGV...`: adbatch with files limited to BYTES (a write
#: past it fails with EFBIG; Python ignores SIGXFSZ).
FSIZE_LIMITED = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from engine.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_summary_on_stdout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    rc, err = adbatch(tmp_path, *RUN, "in.jsonl", "--summary", "s.json", stdout="s.json")
    refused(rc, err)
    assert (tmp_path / "s.json").read_bytes() == b""


@pytest.mark.parametrize(
    "procs",
    [
        pytest.param(["--http-client", "http1"], id="http1"),
        pytest.param(["--http-client", "session"], id="session"),
        pytest.param(["--workers", "2"], id="workers"),
    ],
)
def test_stdin_and_stdout_on_other_files_pass(tmp_path: Path, procs: list[str]) -> None:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    rc, err = adbatch(tmp_path, *RUN, *procs, "-", stdin="in.jsonl", stdout="out.jsonl")
    assert rc == 0, err
    exactly_once(read_records(tmp_path / "out.jsonl"), N)
    assert (tmp_path / "in.jsonl").read_bytes() == DATA


# -- manifests ------------------------------------------------------------------------------


def _shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inp: str = "in.jsonl") -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ADBATCH_TOKEN", raising=False)
    (tmp_path / inp).write_bytes(DATA)
    for i in range(2):
        assert main([*RUN, inp, "--shard", f"{i}/2", "-o", f"s{i}.jsonl"]) == 0


def test_merge_never_writes_over_a_parts_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _shards(tmp_path, monkeypatch)
    manifest = tmp_path / "s0.jsonl.manifest.json"
    before = manifest.read_bytes()
    capsys.readouterr()
    assert main(["merge", "s0.jsonl", "s1.jsonl", "-o", "s0.jsonl.manifest.json"]) == 2
    err = capsys.readouterr().err
    assert "the manifest of a part" in err
    assert manifest.read_bytes() == before
    assert main(["merge", "s0.jsonl", "s1.jsonl", "-o", "m.jsonl"]) == 0  # intact


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["in.jsonl", "--summary", "z.jsonl.manifest.json"], id="summary"),
        pytest.param(["z.jsonl.manifest.json"], id="input"),
    ],
)
def test_a_shard_manifest_is_an_output_of_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_bytes(DATA)
    (tmp_path / "z.jsonl.manifest.json").write_bytes(DATA)  # an input, or an old manifest
    assert main([*RUN, "--shard", "0/1", "-o", "z.jsonl", *argv]) == 2
    err = capsys.readouterr().err
    assert "the manifest of -o" in err
    assert (tmp_path / "z.jsonl.manifest.json").read_bytes() == DATA
    assert not (tmp_path / "z.jsonl").exists()


# -- resume's compaction ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"http_client": "http1"}, id="http1"),
        pytest.param({"http_client": "session"}, id="session"),
        pytest.param({"http_client": "http1", "workers": 2}, id="workers"),
    ],
)
async def test_compaction_never_writes_over_an_existing_file(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    """The input is named as the compaction's temporary file once was."""
    inputs = tmp_path / ".out.jsonl.adbatch-compact"
    inputs.write_bytes(DATA)
    out = tmp_path / "out.jsonl"
    async with running_mock() as mock:
        await api.run(config_for(mock, inputs, out))
        first = read_records(out)
        first[1] = {**first[1], "status": 503, "ok": False, "error_kind": "http_503"}
        out.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in first))
        summary = await api.run(config_for(mock, inputs, out, resume=True, **options))
    assert summary.exit_code == 0
    assert inputs.read_bytes() == DATA
    final = read_records(out)
    exactly_once(final, N)  # compacted: the old 503 went
    assert all(r["status"] == 200 for r in final)
    assert sorted(os.listdir(tmp_path)) == [inputs.name, out.name]  # no temporary left


# -- undecodable bytes in paths -----------------------------------------------------------------


def test_paths_with_an_undecodable_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = os.fsdecode(b"i\xff.jsonl")  # 'i\udcff.jsonl'
    _shards(tmp_path, monkeypatch, inp)
    shard = read_manifest("s0.jsonl.manifest.json")
    assert shard is not None
    assert shard["inputs"] == [inp]  # read back as the same path
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    part = os.fsdecode(b"p\xff.jsonl")
    os.rename("s0.jsonl", part)
    os.rename("s0.jsonl.manifest.json", part + ".manifest.json")
    summary = os.fsdecode(b"m\xff.json")
    assert main(["merge", part, "s1.jsonl", "-o", "m.jsonl"]) == 0
    merged = read_manifest("m.jsonl.manifest.json")
    assert merged is not None
    assert merged["parts"][0]["part"] == part
    assert merged["exactly_once"] is True
    out = os.fsdecode(b"o\xff.jsonl")
    os.rename("m.jsonl", out)
    title = os.fsdecode(b"t\xff")
    argv = ["report", out, "--html", "h.html", "--summary", summary]
    assert main(argv) == 0
    assert b"<title>adbatch report: o\\udcff.jsonl</title>" in Path("h.html").read_bytes()
    assert main([*argv, "--title", title]) == 0
    assert b"<title>t\\udcff</title>" in Path("h.html").read_bytes()
    assert orjson.loads(Path(summary).read_bytes())["events"] == N
    assert "Traceback" not in capsys.readouterr().err


def test_a_summary_naming_an_undecodable_path_is_written() -> None:
    stopped = "output o\udcff.jsonl was deleted during the run"
    summary = Summary(0, 0, 0, 0, 0, 0.0, 0.0, {}, {}, {}, stopped=stopped)
    data = orjson.loads(json_bytes({"summary": summary, "exit_code": 3}))
    assert data["summary"]["stopped"] == "output o\\udcff.jsonl was deleted during the run"


# -- the open-files limit names the option given -------------------------------------------------


def test_load_beyond_the_open_files_limit_names_max_in_flight(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(DATA)
    out = tmp_path / "out.jsonl"
    argv = ["load", "--mock", "--rate", "10", "--no-loop", "--max-in-flight", "1000"]
    done = run_limited(256, 256, *argv, str(tmp_path / "in.jsonl"), "-o", str(out))
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err.count("\n") == 0, err
    assert "--max-in-flight 1000 needs about" in err
    assert "-c " not in err
    assert not out.exists()
