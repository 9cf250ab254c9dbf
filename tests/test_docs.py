"""Every shell command of README.md, docs/*.md and benchmarks/README.md runs in a test.

Reading the docs (`doc_commands`): the fenced ```sh, ```bash and ```console blocks. In a
console block a line starting `$ ` is a command and the lines up to the next `$ ` are its
output; in sh and bash blocks every line is a command. A line ending in `\\` goes on with
the next one; blank lines and `#` comment lines are dropped; a trailing ` # comment` is
cut off and read for the exit the text promises (`# exit N`; else 0). Pipes `|`,
redirections `>`, `&&` and `$(...)` stay as written: the command runs through bash.
`export NAME=...` lines are the block's environment: they run before each later command
of their block, in the same bash.

Every command is in exactly one table, and the fast test fails when the docs gain a
command that is in none (an entry the docs no longer have is left alone: other changes
to the docs go on beside this file):
- `RUN`: run here (the slow test), by bash, under the rules below;
- `ELSEWHERE`: run as written by another test, named (not run twice);
- `SKIP`: not run, with the reason.
docs/network.md as a whole is run by tests/test_network_docs.py, which has the same
rule for its page.

How a `RUN` command runs (`shell_line`), each rule for a reason the docs cannot carry:
- in a temporary directory holding a copy of examples/ and the files the docs call the
  user's own: events.jsonl and pageviews.jsonl (examples/pageviews.jsonl),
  events.jsonl.gz, day1.csv and day2.csv (examples/pageviews.csv), and
  ~/.criteo/secret (HOME is that directory); the commands of one block share it, in
  order (`report out.jsonl` reads what the `load` before it wrote);
- `adbatch` and `python` are this checkout's (`python -m engine`);
- `pip install X && ...`: the install is .ci/run's (`pip install '.[test]'`, `.[ray]`,
  `.[http2]`); the rest of the line runs;
- `--mock` is added after `adbatch run|load|replay` where the text aims at the real
  endpoint: the embedded mock takes any token or client credentials and wins over
  `--endpoint` (no network here; no credentials in a test);
- long schedules are cut short: `--duration` to 1s, every stage of `--stages` to 1s,
  `replay --speed` to 100 with `--max-gap 0.05` (the figures are not checked here: the
  commands' options and exit are);
- `--dashboard :8000` and `--metrics-addr :9100` get free ports;
- `--shard 0/N ... # one per shard` runs for every shard 0..N-1 (`part-I.jsonl`), as the
  comment says, so that the `merge` after it is whole;
- a command ending in `&` (a server in the background, `adbatch mock --port 8080 ... &`)
  makes its block one bash script from there on (so `kill %1` finds it): port 8080
  becomes a free one throughout the block, and the script waits for the server to
  listen before the next line; each later command's exit is checked in the script.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.version import DEFAULT_USER_AGENT

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"
]
#: Pages whose every command another test runs, with its own completeness check.
PAGES_ELSEWHERE = {"docs/network.md": "tests/test_network_docs.py"}


@dataclass(frozen=True)
class Command:
    page: str  # relative to the repository
    line: int  # 1-based, where the command starts
    block: int  # index of its block on the page
    text: str  # as written, continuations joined, comment cut
    exit: int  # as the text says
    exports: tuple[str, ...]  # the block's `export` lines before it


_FENCE = re.compile(r"^```(\w*)\s*$")
_EXIT = re.compile(r"\bexit (\d+)\b")


def _cut_comment(line: str) -> tuple[str, str]:
    """(command, comment): a `#` after blank space and outside quotes starts a comment."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def commands_of(markdown: str, page: str = "") -> list[Command]:
    found: list[Command] = []
    lines = markdown.splitlines()
    i, block = 0, -1
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence or not fence.group(1):
            i += 1
            continue
        kind, body, i = fence.group(1), [], i + 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        if kind not in ("sh", "bash", "console"):
            continue
        block += 1
        exports: list[str] = []
        pending = ""
        start = 0
        for number, raw in body:
            text = raw
            if kind == "console":
                if not pending and not text.startswith("$ "):
                    continue  # output
                text = text.removeprefix("$ ") if not pending else text
            if not pending:
                start = number
            if text.endswith("\\"):
                pending += text[:-1].rstrip() + " "
                continue
            command, comment = _cut_comment(pending + text.strip())
            pending = ""
            command = " ".join(command.split())
            if not command:
                continue
            if command.startswith("export "):
                exports.append(command)
                continue
            said = _EXIT.search(comment)
            found.append(
                Command(page, start, block, command, int(said.group(1)) if said else 0,
                        tuple(exports))
            )  # fmt: skip
    return found


def all_commands() -> list[Command]:
    return [c for doc in DOCS for c in commands_of(doc.read_text(), str(doc.relative_to(ROOT)))]


#: Run by the slow test here, by the rules above.
RUN = {
    "pip install . && adbatch run --mock examples/pageviews.jsonl -o ads.jsonl",
    "adbatch run events.jsonl.gz -o ads.jsonl",
    "adbatch run day1.csv day2.csv --rate 500 -c 128 --endpoint "
    "https://d.eu.criteo.com/delivery/retailmedia",
    "zcat events.jsonl.gz | adbatch run --ordered > ads.jsonl",
    "adbatch run --dry-run events.jsonl",
    "adbatch run --help",
    "adbatch run events.jsonl -o ads.jsonl",
    "adbatch load --mock examples/pageviews.jsonl --rate 50 --duration 10s -o out.jsonl",
    'adbatch load --mock examples/pageviews.jsonl --stages "30s:100,1m:500,30s:0" -o out.jsonl',
    "adbatch replay --mock examples/access.log --speed 5 --max-gap 2 -o out.jsonl",
    "adbatch report out.jsonl --html report.html",
    'adbatch load --mock examples/pageviews.jsonl --stages "5s:50,10s:200" --dashboard :8000 '
    "--metrics-addr :9100 -o out.jsonl",
    "adbatch run events.jsonl --shard 0/4 --rate 250 -o part-0.jsonl",
    "adbatch merge part-*.jsonl -o ads.jsonl",
    "adbatch load --mock examples/pageviews.jsonl --ramp-from 10 --ramp-to 300 --duration 1m "
    "-o out.jsonl",
    "adbatch replay --mock examples/access.log --speed 5 --max-gap 2 --rate 100 -o out.jsonl",
    "adbatch report out.jsonl --html report.html --summary figures.json",
    "adbatch load --mock examples/pageviews.jsonl --rate 50 --duration 10s --records errors "
    "--series base.series -o errors.jsonl",
    "adbatch load --mock examples/pageviews.jsonl --rate 50 --duration 10s --series new.series "
    "-o /dev/null",
    "adbatch report new.series --html series.html",
    "adbatch report base.series new.series --html compare.html",
    "adbatch load --mock examples/pageviews.jsonl --rate 200 --duration 10s --workers 2 "
    "--threshold 'p99<500ms' --threshold 'errors<1%' -o out.jsonl",
    "adbatch load --mock examples/pageviews.jsonl --rate 50 --duration 1s --retries 2 -o out.jsonl",
    "adbatch load --mock examples/pageviews.jsonl --rate 50 --duration 1s --resume -o out.jsonl",
    "adbatch load --mock examples/pageviews.jsonl --rate 100 --duration 3s --workers 2 "
    "--series s.series -o out.jsonl",
    "adbatch report s.series",
    "adbatch run events.jsonl -o out.jsonl",
    "adbatch run events.jsonl -o out.jsonl --resume",
    "adbatch run pageviews.jsonl -o ads.jsonl",
    "adbatch mock --port 8080 --latency 0.02 --p503 0.05 --p429 0.02 --reset 0.01 --slow 0.01 "
    "--slow-seconds 2 --every-call &",
    "adbatch load --endpoint http://127.0.0.1:8080/delivery/retailmedia --token mock-token "
    '--stages "5s:50,10s:200" examples/pageviews.jsonl -o out.jsonl',
    "kill %1",
    "adbatch run --client-id my-client-id --client-secret-file ~/.criteo/secret pageviews.jsonl "
    "-o ads.jsonl",
}

#: Run as written by another test.
ELSEWHERE = {
    "adbatch run 's3://lake/pv/2026-11-*/part-*.jsonl.gz' -o ads.jsonl":
        "tests/test_storage_inputs.py::test_the_readme_storage_commands_run (against moto)",
    "AWS_ENDPOINT_URL=http://127.0.0.1:9000 adbatch run s3://lake/pv/ -o ads.jsonl":
        "tests/test_storage_inputs.py::test_the_readme_storage_commands_run (against moto)",
    "adbatch run events.jsonl -o s3://results/ads.jsonl --part-size 16MiB --part-seconds 30s":
        "tests/test_storage_readme.py::test_the_readme_storage_output_commands_run (moto)",
    "adbatch run events.jsonl -o s3://results/ads.jsonl --resume":
        "tests/test_storage_readme.py::test_the_readme_storage_output_commands_run (moto)",
    "adbatch run --shard 0/2 events.jsonl -o s3://results/shard-0.jsonl":
        "tests/test_storage_readme.py::test_the_readme_storage_output_commands_run (moto)",
    "adbatch run --shard 1/2 events.jsonl -o s3://results/shard-1.jsonl":
        "tests/test_storage_readme.py::test_the_readme_storage_output_commands_run (moto)",
    "adbatch merge 's3://results/shard-*.jsonl' -o s3://results/all.jsonl":
        "tests/test_storage_readme.py::test_the_readme_storage_output_commands_run (moto)",
    "adbatch replay s3://logs/access.log.gz --speed 50 -o s3://results/replay.jsonl":
        "tests/test_storage_readme.py::test_the_readme_storage_output_commands_run (moto)",
    "adbatch run 's3://lake/pageviews/2026-11-29/*.parquet' -o s3://results/ads-2026-11-29.jsonl":
        "tests/test_storage_readme.py::test_the_readme_parquet_to_s3_job_runs (moto)",
    "HTTPS_PROXY=http://proxy.corp.example:3128 adbatch run events.jsonl -o ads.jsonl":
        "tests/test_network_docs.py::test_proxy_variables (through a real tinyproxy)",
    "adbatch load --mock examples/pageviews.jsonl --rate 100 --duration 5s --metrics-addr :9100 "
    "--dashboard :8000 --metrics-linger 2 -o out.jsonl":
        "tests/test_observe_cli.py::test_the_load_testing_docs_commands_run",
    "curl -s http://127.0.0.1:9100/metrics | grep '^adbatch_calls_total'":
        "tests/test_observe_cli.py::test_the_load_testing_docs_commands_run (during that load)",
    "pip install '.[parquet]' && adbatch run pageviews.parquet -o ads.jsonl":
        "tests/test_parquet.py::test_the_readme_parquet_commands_run (on a Parquet copy of "
        "examples/pageviews.jsonl)",
    "adbatch run --shard 1/3 pageviews.parquet -o part-1.jsonl":
        "tests/test_parquet.py::test_the_readme_parquet_commands_run",
}  # fmt: skip

#: Not run, with the reason.
SKIP = {
    "pip install '.[test]' && python -m pytest":
        "the test suite itself; .ci/run runs this very line",
    "python -m engine run ...":
        "`...` stands for any arguments; `python -m engine` is what every command here runs",
    "pip install '.[ray]' && adbatch run --backend ray events.jsonl --rate 5000 -o ads.jsonl":
        "starts a Ray cluster (tens of seconds, gigabytes); tests/test_ray_backend.py runs "
        "--backend ray on a local cluster",
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_API = re.compile(r"(\badbatch (?:run|load|replay)\b)(?![^|;&]*--mock)")


def _short_stages(match: re.Match[str]) -> str:
    return '--stages "' + re.sub(r"[^,:]+:", "1s:", match.group(1)) + '"'


def shell_line(command: Command, *, mock: bool = True) -> str:
    """The bash line that runs `command` by the module's rules (without its exports)."""
    text = re.sub(r"^pip install \S+ && ", "", command.text)
    if mock:
        text = _API.sub(r"\1 --mock", text)
    text = re.sub(r"--duration \S+", "--duration 1s", text)
    text = re.sub(r'--stages "([^"]*)"', _short_stages, text)
    if " replay " in text:
        text = re.sub(r"--speed \S+", "--speed 100", text)
        text = re.sub(r"--max-gap \S+", "--max-gap 0.05", text)
    text = text.replace("--dashboard :8000", f"--dashboard :{_free_port()}")
    text = text.replace("--metrics-addr :9100", f"--metrics-addr :{_free_port()}")
    shard = re.search(r"--shard 0/(\d+)", text)
    if shard:
        n = int(shard.group(1))
        text = " && ".join(
            text.replace("--shard 0/", f"--shard {i}/").replace("part-0.", f"part-{i}.")
            for i in range(n)
        )
    return text


def user_dir(tmp: Path) -> Path:
    """A directory with examples/ and the user's own files the docs name."""
    shutil.copytree(ROOT / "examples", tmp / "examples")
    jsonl = (ROOT / "examples" / "pageviews.jsonl").read_bytes()
    for name in ("events.jsonl", "pageviews.jsonl"):
        (tmp / name).write_bytes(jsonl)
    (tmp / "events.jsonl.gz").write_bytes(gzip.compress(jsonl))
    for name in ("day1.csv", "day2.csv"):
        shutil.copy(ROOT / "examples" / "pageviews.csv", tmp / name)
    (tmp / ".criteo").mkdir()
    (tmp / ".criteo" / "secret").write_text("mock-secret\n")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "adbatch").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m engine "$@"\n')
    (bin_dir / "adbatch").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    return tmp


def background_script(commands: list[Command]) -> str:
    """From a server started with `&` on: one script, its port a free one, each exit checked."""
    port = str(_free_port())
    lines = list(commands[0].exports)
    for c in commands:
        text = shell_line(c, mock=False).replace("8080", port)
        if text.endswith("&"):
            lines.append(text)
            lines.append(f"for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/{port}) "
                         "2>/dev/null && break; sleep 0.1; done")  # fmt: skip
        else:
            stop = f'{{ echo "{c.page}:{c.line} exited $rc" >&2; kill %1; exit 99; }}'
            lines.append(f'{text}; rc=$?; [ "$rc" = {c.exit} ] || {stop}')
    return "\n".join(lines)


def run_in(
    directory: Path, command: Command, script: str | None = None
) -> subprocess.CompletedProcess[str]:
    script = script or "\n".join([*command.exports, shell_line(command)])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ADBATCH_")},
        "HOME": str(directory),
        "PATH": f"{directory / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        ["bash", "-c", script], cwd=directory, env=env, capture_output=True, text=True,
        timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_every_command_is_run_covered_or_skipped() -> None:
    ours = [c for c in all_commands() if c.page not in PAGES_ELSEWHERE]
    listed = RUN | set(ELSEWHERE) | set(SKIP)
    new = [f"{c.page}:{c.line}: {c.text}" for c in ours if c.text not in listed]
    assert not new, "a documented command neither run nor listed here:\n" + "\n".join(new)
    assert not RUN & set(SKIP)
    assert not RUN & set(ELSEWHERE)
    assert not set(SKIP) & set(ELSEWHERE)
    for where in ELSEWHERE.values():
        path, _, name = where.split(" ")[0].partition("::")
        assert f"def {name}(" in (ROOT / path).read_text(), where
    for page, test in PAGES_ELSEWHERE.items():
        assert page in (ROOT / test).read_text(), (page, test)


def test_the_commands_are_read_as_the_module_says() -> None:
    page = (
        "text\n```sh\n# alone\nexport A=1\nadbatch run --a 'x # y' \\\n    y.jsonl   # why\n"
        "adbatch run z   # exit 3: refused\nzcat a | adbatch run > b\n```\n"
        "```json\n{}\n```\n```console\n$ adbatch report x\nfigures\n$ true\n```\n"
    )
    got = commands_of(page, "p.md")
    assert [(c.line, c.text, c.exit, c.exports) for c in got] == [
        (5, "adbatch run --a 'x # y' y.jsonl", 0, ("export A=1",)),
        (7, "adbatch run z", 3, ("export A=1",)),
        (8, "zcat a | adbatch run > b", 0, ("export A=1",)),
        (14, "adbatch report x", 0, ()),
        (16, "true", 0, ()),
    ]
    assert [c.block for c in got] == [0, 0, 0, 1, 1]


def test_the_rewrites() -> None:
    def rewrite(text: str) -> str:
        return shell_line(Command("p", 1, 0, text, 0, ()))

    assert rewrite("zcat e | adbatch run -O > a") == "zcat e | adbatch run --mock -O > a"
    assert rewrite("adbatch load --mock e --duration 1m") == "adbatch load --mock e --duration 1s"
    assert rewrite('adbatch load e --stages "30s:1,1m:0"') == (
        'adbatch load --mock e --stages "1s:1,1s:0"'
    )
    assert rewrite("adbatch replay x --speed 5 --max-gap 2") == (
        "adbatch replay --mock x --speed 100 --max-gap 0.05"
    )
    assert rewrite("adbatch load --endpoint http://h:8080/d e") == (
        "adbatch load --mock --endpoint http://h:8080/d e"
    )  # the rule; a block with a server in the background is run otherwise (see below)
    assert rewrite("pip install . && adbatch merge p -o a") == "adbatch merge p -o a"
    assert rewrite("adbatch run e --shard 0/2 -o part-0.jsonl") == (
        "adbatch run --mock e --shard 0/2 -o part-0.jsonl && "
        "adbatch run --mock e --shard 1/2 -o part-1.jsonl"
    )  # fmt: skip


def test_the_readme_states_the_default_user_agent() -> None:
    assert f"`{DEFAULT_USER_AGENT}`" in (ROOT / "README.md").read_text()


def _blocks() -> list[list[Command]]:
    by_block: dict[tuple[str, int], list[Command]] = {}
    for c in all_commands():
        if c.text in RUN and c.page not in PAGES_ELSEWHERE:
            by_block.setdefault((c.page, c.block), []).append(c)
    return list(by_block.values())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("block", _blocks(), ids=lambda b: f"{b[0].page}:{b[0].line}")
def test_the_documented_commands_exit_as_the_text_says(
    block: list[Command], tmp_path: Path
) -> None:
    directory = user_dir(tmp_path)
    server = next((i for i, c in enumerate(block) if c.text.endswith("&")), len(block))
    if server < len(block):
        done = run_in(directory, block[server], background_script(block[server:]))
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Traceback" not in done.stderr, done.stderr
    for command in block[:server]:
        if command.text.startswith("zcat") and shutil.which("zcat") is None:
            continue
        done = run_in(directory, command)
        assert done.returncode == command.exit, (
            f"{command.page}:{command.line}: {shell_line(command)}\n{done.stderr[-2000:]}"
        )
        assert "Traceback" not in done.stderr, done.stderr


def _shape(summary: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "N", summary.strip())


@pytest.mark.slow
def test_the_readme_summary_line_is_what_its_first_command_prints(tmp_path: Path) -> None:
    """README's summary example (Output) has the parts the quick-start command prints."""
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"^adbatch: \d+ events in .*$", readme, re.M)
    assert example is not None
    first = next(c for c in commands_of(readme, "README.md") if "--mock" in c.text)
    done = run_in(user_dir(tmp_path), first)
    assert done.returncode == 0, done.stderr
    assert _shape(done.stderr.splitlines()[-1]) == _shape(example.group(0))
