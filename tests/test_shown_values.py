"""Values a message shows: never what may be a credential (core/shown.py, core/urls.py).

- A mistyped-scheme http(s) URL (`https//h/d#...`, `https:/u:pw@h/d#...`) hides its
  #fragment as a well-formed one does.
- A header without its colon shows none of it, in `config --show` and in its error.
- Any bad option value quoted in a message (argv, ADBATCH_*, the config file; -c, --rate,
  --timeout, --metrics-addr, --threshold, --shard, --partner-id...) goes by the URL rule:
  what may be `user:password` before an '@' is hidden, read as a URL or not.
- The open-files refusal names the option that drives the count: load's --max-in-flight
  under --workers (load refuses -c), --workers when its pipes outweigh the calls, and a
  limit too low for any run is said to be so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import one_line

from engine.cli.main import main
from engine.config import Config
from engine.core.shown import quoted, shown_given, shown_value
from engine.core.urls import credentials, without_credentials
from engine.runtime.loop import open_files_problem

ROOT = Path(__file__).resolve().parent.parent
SECRET = "PwSecret77"
TOKEN = "static-test-token"
EVENT = {"id": "a", "event-type": "viewHome", "page-id": "p", "retailer-visitor-id": "v"}


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.upper().startswith("ADBATCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "events.jsonl"
    path.write_bytes(orjson.dumps({**EVENT, "criteo-partner-id": 1}) + b"\n")
    return path


def _exit(argv: list[str]) -> int:
    """main(argv)'s exit status, argparse's usage errors included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


# -- a mistyped scheme's fragment --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(f"https//h/d#access_token={SECRET}", "https//h/d#[redacted]", id="no-colon"),
        pytest.param(
            f"https//u:pw@h/d#access_token={SECRET}", "https//u:[redacted]@h/d#[redacted]", id="at"
        ),
        pytest.param(
            f"https:/u:pw@h/d#access_token={SECRET}",
            "https:/u:[redacted]@h/d#[redacted]",
            id="one-slash",
        ),
        pytest.param(f"https:/h/d#{SECRET}", "https:/h/d#[redacted]", id="one-slash-as-typed"),
        pytest.param(
            f"HTTP//u:pw@h/d?k=v#{SECRET}",
            "HTTP//u:[redacted]@h/d?k=[redacted]#[redacted]",
            id="upper-query",
        ),
        pytest.param(f"https://h/d#{SECRET}", "https://h/d#[redacted]", id="well-formed"),
        pytest.param("s3//b/a#1.jsonl", "s3//b/a#1.jsonl", id="storage-kept"),
        pytest.param("data//x#1.jsonl", "data//x#1.jsonl", id="path-kept"),
    ],
)
def test_a_mistyped_http_url_hides_its_fragment(url: str, shown: str) -> None:
    assert without_credentials(url) == shown
    hidden = credentials(url)
    assert all(secret not in shown for secret in hidden)
    assert any(SECRET in secret for secret in hidden) == (SECRET in url)


@pytest.mark.parametrize(
    "endpoint",
    [f"https//h/d#access_token={SECRET}", f"https:/u:pw@h/d#access_token={SECRET}"],
)
def test_config_show_and_the_error_hide_a_mistyped_endpoints_fragment(
    endpoint: str, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "--show", "--token", TOKEN, "--endpoint", endpoint]) == 2
    out, err = capsys.readouterr()
    assert "#[redacted]" in out
    assert "#[redacted]'" in one_line(err)
    assert SECRET not in out + err


# -- a header without its colon ------------------------------------------------------------


def test_a_header_without_a_colon_is_shown_by_one_rule() -> None:
    given = f"X-Api-Key {SECRET}"
    assert shown_value("headers", (given,)) == shown_given("headers", [given]) == ["[redacted]"]
    assert shown_value("headers", ("X-Api-Key: v",)) == ["X-Api-Key: [redacted]"]


def test_config_show_and_the_error_hide_a_header_without_a_colon(
    events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["config", "--show", "--token", TOKEN, "--header", f"X-Api-Key {SECRET}"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert 'headers = ["[redacted]"]' in out
    assert "no colon" in one_line(err)
    assert SECRET not in out + err


# -- option values with user:password@ -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(f"u:{SECRET}@h/d", "'u:[redacted]@h/d'", id="no-scheme"),
        pytest.param(f"https//u:{SECRET}@h", "'https//u:[redacted]@h'", id="mistyped"),
        pytest.param(f"{SECRET}@h:9", "'[redacted]@h:9'", id="no-user"),
        pytest.param([f"u:{SECRET}@h/d"], "['u:[redacted]@h/d']", id="array"),
        pytest.param("1m30x", "'1m30x'", id="no-at-as-given"),
    ],
)
def test_quoted_goes_by_the_url_rule(value: object, shown: str) -> None:
    assert quoted(value) == shown


@pytest.mark.parametrize(
    ("argv", "env", "toml"),
    [
        pytest.param([], {"ADBATCH_RATE": f"u:{SECRET}@h/d"}, None, id="env-rate"),
        pytest.param([], {"ADBATCH_TIMEOUT": f"https//u:{SECRET}@h/d"}, None, id="env-timeout"),
        pytest.param([], {"ADBATCH_PARTNER_ID": f"u:{SECRET}@h"}, None, id="env-partner"),
        pytest.param([], {}, f'rate = ["u:{SECRET}@h/d"]', id="file-rate-array"),
        pytest.param([], {}, f'timeout = "https//u:{SECRET}@h"', id="file-timeout"),
        pytest.param([], {}, f'metrics-addr = "u:{SECRET}@127.0.0.1:9"', id="file-metrics"),
        pytest.param(["--rate", f"u:{SECRET}@h"], {}, None, id="argv-rate"),
        pytest.param(["-c", f"u:{SECRET}@h"], {}, None, id="argv-concurrency"),
        pytest.param(["--shard", f"u:{SECRET}@h"], {}, None, id="argv-shard"),
        pytest.param(["--threshold", f"u:{SECRET}@h"], {}, None, id="argv-threshold"),
        pytest.param(["--metrics-addr", f"u:{SECRET}@h:9"], {}, None, id="argv-metrics"),
        pytest.param(["--partner-id", f"u:{SECRET}@h"], {}, None, id="argv-partner"),
        pytest.param(["--storage-option", f"u:{SECRET}@h=1"], {}, None, id="storage-key"),
    ],
)
@pytest.mark.parametrize("command", ["run", "config"])
def test_a_bad_value_holding_user_password_is_never_quoted(
    command: str,
    argv: list[str],
    env: dict[str, str],
    toml: str | None,
    events: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if command == "config" and "--shard" in argv:
        pytest.skip("config --show takes no --shard")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if toml is not None:
        (events.parent / "c.toml").write_text(toml + "\n")
        argv = [*argv, "--config", "c.toml"]
    if command == "run":
        argv = ["run", "--token", TOKEN, *argv, str(events), "-o", "-"]
    else:
        argv = ["config", "--show", "--token", TOKEN, *argv]
    assert _exit(argv) == 2
    out, err = capsys.readouterr()
    line = one_line(err)
    assert "[redacted]@" in line, line  # quoted, what may be the password hidden
    assert SECRET not in out + err


# -- open files: the option that drives the count ------------------------------------------


@pytest.mark.parametrize(
    ("options", "soft", "option", "words"),
    [
        pytest.param(
            {"concurrency": 1000}, 256, "-c", "-c 1000 needs about 1100 open files but the "
            "limit is 256: lower -c", id="c",
        ),
        pytest.param(
            {"concurrency": 100, "workers": 2, "mock": True}, 150, "--max-in-flight",
            "--max-in-flight 100 needs about 256 open files per process (2 workers) but the "
            "limit is 150: lower --max-in-flight", id="load-workers",
        ),
        pytest.param(
            {"concurrency": 1, "workers": 80, "mock": True}, 120, "-c",
            "--workers 80 needs about 342 open files but the limit is 120: lower --workers",
            id="pipes-alone",
        ),
        pytest.param(
            {"concurrency": 120, "workers": 60}, 101, "-c",
            "--workers 60 needs about 282 open files but the limit is 101: lower --workers",
            id="pipes-outweigh",
        ),
        pytest.param(
            {"concurrency": 1, "workers": 30, "mock": True}, 50, "-c",
            "--workers 30 needs about 192 open files but the limit is 50, under the 102 of "
            "the smallest run (-c 1, one process): raise the limit (ulimit -n)",
            id="pipes-limit-too-low",
        ),
        pytest.param(
            {"concurrency": 1, "mock": True}, 20, "--max-in-flight",
            "--max-in-flight 1 needs about 102 open files but the limit is 20, under the 102 "
            "of the smallest run (--max-in-flight 1, one process)", id="limit-too-low",
        ),
    ],
)  # fmt: skip
def test_the_open_files_refusal_names_what_drives_the_count(
    options: dict[str, object], soft: int, option: str, words: str
) -> None:
    problem = open_files_problem(Config(**options), soft, soft, option=option)  # type: ignore[arg-type]
    assert problem is not None
    assert problem.startswith(words), problem


def test_a_run_that_fits_is_no_problem() -> None:
    assert open_files_problem(Config(concurrency=64, workers=4), 1024, 1024) is None


#: The CLI under RLIMIT_NOFILE (soft = hard = argv[1]).
LIMITED = (
    "import resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1])))\n"
    "from engine.cli.main import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE as on Linux")
def test_load_workers_is_refused_by_its_max_in_flight_not_by_c(tmp_path: Path) -> None:
    events = str(ROOT / "examples" / "pageviews.jsonl")
    argv = [
        "load",
        "--mock",
        "--workers",
        "2",
        "--duration",
        "1s",
        "--rate",
        "5",
        "--max-in-flight",
        "100",
        events,
        "--no-progress",
        "-o",
        str(tmp_path / "o"),
    ]
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, "150", *argv],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    # 100 in flight over 2 workers: 50 sockets each, the mock's 100 in the parent, pipes.
    assert "--max-in-flight 100 needs about 256 open files per process (2 workers)" in line
    assert "-c " not in line
