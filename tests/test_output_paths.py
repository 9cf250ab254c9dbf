"""Outputs never touch inputs (issue 12, item 5).

An output (`-o`, `--summary`, `--html`, merge's `-o`) that is the same file as an input or
another output, by any spelling, ends the command with exit 2 before anything is opened
for writing; an output deleted or replaced during a run ends it with exit 3.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from conftest import read_records

from engine.cli.main import main
from engine.errors import ConfigError
from engine.files.paths import check_outputs
from engine.mock import MockConfig, running_mock

ROOT = Path(__file__).resolve().parent.parent
EVENT = {
    "criteo-partner-id": 12345,
    "retailer-visitor-id": "rv-1",
    "event-type": "viewHome",
    "page-id": "viewHome_API_desktop",
}


# -- the check itself ----------------------------------------------------------------------


def _spell(tmp_path: Path, how: str) -> tuple[str, str]:
    """(input, output) naming the same file `in.jsonl`, spelled as `how` says."""
    target = tmp_path / "in.jsonl"
    target.write_bytes(b"{}\n")
    if how == "same":
        return str(target), str(target)
    if how == "dot-slash":
        return "in.jsonl", "./in.jsonl"
    if how == "absolute-relative":
        return str(target), "in.jsonl"
    if how == "parent-dir":
        (tmp_path / "sub").mkdir()
        return "in.jsonl", "sub/../in.jsonl"
    if how == "symlink":
        (tmp_path / "link").symlink_to(target)
        return str(target), str(tmp_path / "link")
    if how == "hard-link":
        os.link(target, tmp_path / "hard")
        return str(target), str(tmp_path / "hard")
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["same", "dot-slash", "absolute-relative", "parent-dir", "symlink", "hard-link"]
)
def test_an_output_naming_an_input_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.chdir(tmp_path)
    read, written = _spell(tmp_path, how)
    with pytest.raises(ConfigError, match="the same file as the input") as exc:
        check_outputs([("input", read)], [("-o", written)])
    assert read in str(exc.value)
    assert written in str(exc.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("new.jsonl", "./new.jsonl", id="not-yet-existing"),
        pytest.param("dangling", "new.jsonl", id="symlink-to-not-yet-existing"),
        pytest.param("sub/../new.jsonl", "new.jsonl", id="parent-dir-not-yet-existing"),
    ],
)
def test_two_outputs_naming_one_new_file_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str, second: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "dangling").symlink_to("new.jsonl")
    with pytest.raises(ConfigError, match="the same file as -o"):
        check_outputs([], [("-o", first), ("--summary", second)])


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [
        pytest.param(["-"], ["-"], id="stdin-and-stdout"),
        pytest.param(["/dev/null"], ["/dev/null"], id="a-character-device"),
        pytest.param(["in.jsonl"], ["out.jsonl", "summary.json"], id="distinct-files"),
        pytest.param(["in.jsonl"], [None, "out.jsonl"], id="no-output"),
    ],
)
def test_distinct_or_special_paths_pass(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inputs: list[str],
    outputs: list[str | None],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_bytes(b"{}\n")
    check_outputs([("input", p) for p in inputs], [(f"out{i}", p) for i, p in enumerate(outputs)])


# -- every command, before anything is written ----------------------------------------------


def _commands(inp: str, out: str, link: str) -> list[tuple[str, list[str]]]:
    """(what both paths are, argv) for each command and each output option."""
    run = ["run", "--mock", "--no-progress"]
    load = ["load", "--mock", "--no-progress", "--rate", "10", "--no-loop"]
    replay = ["replay", "--mock", "--no-progress"]
    return [
        ("run -o input", [*run, inp, "-o", link]),
        ("run --summary input", [*run, inp, "-o", out, "--summary", f"./{inp}"]),
        ("run --summary -o", [*run, inp, "-o", out, "--summary", f"./{out}"]),
        ("run --resume -o input", [*run, inp, "-o", link, "--resume"]),
        ("run --workers -o input", [*run, "--workers", "2", inp, "-o", link]),
        ("load -o input", [*load, inp, "-o", link]),
        ("load --summary -o", [*load, inp, "-o", out, "--summary", f"./{out}"]),
        ("replay --summary input", [*replay, inp, "-o", out, "--summary", link]),
        ("merge -o part", ["merge", inp, "-o", link]),
        ("report --html input", ["report", inp, "--html", link]),
        ("report --summary --html", ["report", inp, "--summary", out, "--html", f"./{out}"]),
        ("run -o --token-file", [*run, "--token-file", "token.txt", inp, "-o", "./token.txt"]),
        ("load --summary --config", [*load, "--config", "a.toml", inp, "--summary", "a.toml"]),
    ]


@pytest.mark.parametrize("case", range(13))
def test_every_command_refuses_before_writing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: int,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ADBATCH_TOKEN", raising=False)
    data = b"".join(b'{"id": "e%d", "partner": 1}\n' % i for i in range(5))
    (tmp_path / "in.jsonl").write_bytes(data)
    (tmp_path / "link").symlink_to(tmp_path / "in.jsonl")
    (tmp_path / "token.txt").write_bytes(b"mock-token\n")
    (tmp_path / "a.toml").write_bytes(b"timeout = 3\n")
    name, argv = _commands("in.jsonl", "out.jsonl", "link")[case]
    assert main(argv) == 2, name
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "is the same file as" in err
    assert (tmp_path / "in.jsonl").read_bytes() == data
    assert (tmp_path / "token.txt").read_bytes() == b"mock-token\n"
    assert (tmp_path / "a.toml").read_bytes() == b"timeout = 3\n"
    assert not (tmp_path / "out.jsonl").exists(), "an output was opened before the check"


# -- an output deleted or replaced during the run -------------------------------------------


PROCESSES = pytest.mark.parametrize(
    "procs", [pytest.param([], id="1-process"), pytest.param(["--workers", "2"], id="workers")]
)


def _start(url: str, inputs: Path, out: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ADBATCH_TOKEN": "mock-token", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "engine", "run", "--endpoint", url, "-o", str(out)]
    return subprocess.Popen(
        [*argv, "--no-progress", "-c", "2", *args, str(inputs)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _ended(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    with anyio.fail_after(20):
        while proc.poll() is None:  # noqa: ASYNC110 - a child's exit is no anyio event
            await anyio.sleep(0.02)
    _, err = proc.communicate()  # (closes the pipe)
    return proc.returncode, err.decode()


@pytest.mark.anyio
@pytest.mark.slow
@PROCESSES
@pytest.mark.parametrize("fate", ["deleted", "replaced"])
async def test_an_output_lost_mid_run_ends_it_with_exit_3(
    tmp_path: Path, write_jsonl: Callable[..., Path], procs: list[str], fate: str
) -> None:
    inputs = write_jsonl([{**EVENT, "id": f"e{i}"} for i in range(400)])
    out = tmp_path / "out.jsonl"
    async with running_mock(MockConfig(latency=0.02)) as mock:
        proc = _start(mock.delivery_url, inputs, out, *procs)
        with anyio.fail_after(20):
            while not (out.exists() and out.read_bytes().count(b"\n") >= 4):
                assert proc.poll() is None, "the run ended before its output could be lost"
                await anyio.sleep(0.01)
        if fate == "deleted":
            out.unlink()
        else:
            other = tmp_path / "other.jsonl"
            other.write_bytes(b"kept\n")
            os.replace(other, out)
        lost_at = time.monotonic()
        rc, err = await _ended(proc)
    assert rc == 3, err
    assert f"was {fate}" in err, err
    assert err.count(f"was {fate}") == 1, err  # said once (the close repeated it)
    assert "during the run" in err
    assert "Traceback" not in err
    assert time.monotonic() - lost_at < 10  # 400 calls at 2 in flight would take longer
    if fate == "replaced":
        assert out.read_bytes() == b"kept\n"  # the file put there is not written to


def test_a_run_that_keeps_its_output_ends_well(tmp_path: Path) -> None:
    """The watch does not fire on its own: an output renamed nowhere is still there."""
    (tmp_path / "in.jsonl").write_bytes(b'{"id": "a"}\n' * 3)
    out = tmp_path / "out.jsonl"
    argv = ["run", "--mock", "--no-progress", str(tmp_path / "in.jsonl"), "-o", str(out)]
    assert main([*argv, "--summary", str(tmp_path / "s.json")]) == 1  # invalid events
    assert len(read_records(out)) == 3
    assert b'"exit_code"' in (tmp_path / "s.json").read_bytes()
