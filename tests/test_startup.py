"""Start-up of the command line (issue 18): a command loads its own modules only, every
command and its help are what they were, and the collector is on again after start-up.

Each check runs in a fresh interpreter: this one has imported everything already.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli.commands import COMMANDS
from engine.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent

#: What a 0-event `run` must not load: other commands' modules, their drivers and reports.
NOT_FOR_RUN = (
    "engine.cli.load",
    "engine.cli.report",
    "engine.cli.config_cmd",
    "engine.load",
    "engine.report",
    "engine.distributed",
    "engine.multiproc",
    "engine.observe",
    "engine.mock",
    "ray",
    "tomllib",
    # a static token and a local output: no OAuth provider, no object-store parts
    "engine.net.oauth",
    "engine.files.partjoin",
    "engine.files.parts",
    "hashlib",  # (--shard-by id and the part joins import it when they run)
    "tempfile",  # (--resume's compaction and the manifests import it when they run)
)

RUN_0 = """
import gc, sys
from engine.cli.main import main
code = main(sys.argv[1:])
print(code, gc.isenabled(), gc.get_freeze_count() > 0)
print(*sorted(sys.modules))
"""


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands' parsers by name."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def python(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def test_a_run_of_no_events_loads_only_what_run_needs(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = python(
        RUN_0, "run", "/dev/null", "-o", str(out), "--endpoint", "http://127.0.0.1:9/x",
        "--token", "t", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "0 events" in done.stderr
    assert out.read_bytes() == b""
    first, loaded = done.stdout.splitlines()
    assert first == "0 True True", "exit 0, the collector on again, the start-up frozen"
    modules = set(loaded.split())
    assert "engine.runtime.session" in modules  # (the check can see a loaded module)
    wrong = sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_FOR_RUN))
    assert not wrong, f"a 0-event run loaded {wrong}"


def test_run_help_loads_no_other_command() -> None:
    code = "import sys, runpy; sys.argv = ['adbatch', 'run', '--help']\n" + (
        "try:\n    runpy.run_module('engine', run_name='__main__')\n"
        "except SystemExit as exc:\n    print(exc.code, 'engine.cli.load' in sys.modules)"
    )
    done = python(code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("usage: adbatch run [-h] [--version]")
    assert "--concurrency" in done.stdout
    assert lines[-1] == "0 False"


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["report"], ["bogus"]])
def test_the_collector_is_on_again_when_parsing_exits(argv: list[str]) -> None:
    code = (
        "import gc, sys\nfrom engine.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n"
        "    print(exc.code, gc.isenabled())"
    )
    done = python(code, *argv)
    assert done.stdout.split()[-1] == "True", done.stderr


def test_python_m_engine_run_help_is_the_run_parsers() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--help"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == commands(build_parser())["run"].format_help()


def test_the_lazy_parser_lists_every_command_as_the_full_one() -> None:
    lazy, full = build_parser(lazy=True), build_parser()
    assert lazy.format_help() == full.format_help()
    parsers = commands(full)
    assert list(parsers) == list(COMMANDS), "each command module's parsers are indexed"
    for name, parser in parsers.items():
        assert parser.description, f"{name}: its own parser, not the index's placeholder"
