"""Any JSON is an input, never a crash (issue 12, item 2), through the whole CLI.

A value that cannot become a URL or a header (a lone surrogate anywhere, a control
character in a header value) makes its event `invalid`, naming the field; the good lines
around it are sent. Every line gets exactly one record, the run exits 1, nothing prints a
traceback: with both HTTP clients, under --workers 2, on --resume and in `report`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import orjson
import pytest
from conftest import exactly_once, read_records

from engine.cli.main import main

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,  # end to end: real servers and CLI runs, seconds in all (CI runs -m slow)
]

ROOT = Path(__file__).resolve().parent.parent
GOOD = b'"criteo-partner-id":1,"retailer-visitor-id":"v","event-type":"viewHome","page-id":"p"'

#: (the JSON line's extra members, the field its record must name); None: a good line.
LINES: list[tuple[bytes, str | None]] = [
    (b'"id":"ok-1"', None),
    (b'"id":"a\\ud800b"', "id"),
    (b'"id":"k1","keywords":"x\\udc00y"', "parameter keywords"),
    (b'"id":"k2","x\\ud800":"1"', "parameter name"),
    (b'"id":"k3","item":["a","\\udfff"]', "parameter item"),
    (b'"id":"ua-sur","user-agent":"Mozilla\\ud83d"', "user-agent"),
    (b'"id":"ref-sur","referer":"https://x.test/\\udc80"', "referer"),
    (b'"id":"ip-sur","ip":"1.2.3.4\\ud800"', "ip"),
    (b'"id":"ok-2","user-agent":"Mozilla/5.0 (\\u00e9 \\ud83d\\ude00)"', None),
    (b'"id":"ua-nul","user-agent":"a\\u0000b"', "user-agent"),
    (b'"id":"ua-vt","user-agent":"a\\u000bb"', "user-agent"),
    (b'"id":"ua-ff","user-agent":"a\\fb"', "user-agent"),
    (b'"id":"ua-del","user-agent":"a\\u007fb"', "user-agent"),
    (b'"id":"ua-tab","user-agent":"a\\tb"', "user-agent"),
    (b'"id":"ref-crlf","referer":"a\\r\\nX-Evil: 1"', "referer"),
    (b'"id":"ip-esc","ip":"1.2.3.4\\u001b"', "ip"),
    (b'"id":"ok-3","keywords":"control \\u0001 in a query is data"', None),
]


def _input(path: Path) -> Path:
    path.write_bytes(b"".join(b"{" + extra + b"," + GOOD + b"}\n" for extra, _ in LINES))
    return path


async def _cli(*args: str, cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ADBATCH_TOKEN", None)
    proc = await anyio.run_process(
        [sys.executable, "-m", "engine", *args], cwd=cwd, env=env, check=False
    )
    assert proc.returncode is not None
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def _check(records: list[dict[str, object]]) -> None:
    exactly_once(records, len(LINES))
    by_seq = {r["seq"]: r for r in records}
    for seq, (_, field) in enumerate(LINES):
        record = by_seq[seq]
        if field is None:
            assert record["ok"] is True, record
        else:
            assert record["error_kind"] == "invalid", record
            assert isinstance(record["error"], str)
            assert record["error"].startswith(field), record
            assert record["status"] is None
    # The id with a lone surrogate is kept, escaped (a backslash, then ud800).
    assert by_seq[1]["id"] == "a\\ud800b"


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("client", ["http1", "session"])
async def test_unsendable_values_are_invalid_records_and_resume_completes(
    tmp_path: Path, client: str, workers: str
) -> None:
    events = _input(tmp_path / "events.jsonl")
    out = tmp_path / "out.jsonl"
    common = ["--mock", "--http-client", client, "--workers", workers, "--no-progress"]
    code, err = await _cli("run", *common, str(events), "-o", str(out), cwd=tmp_path)
    assert code == 1, err
    assert "Traceback" not in err
    _check(read_records(out))

    # A crash that kept a few records: --resume reads them back (the escaped id too)
    # and completes the run.
    lines = out.read_bytes().splitlines(keepends=True)
    kept = [line for line in lines if b"\\\\ud800b" in line] + lines[:3]
    out.write_bytes(b"".join(dict.fromkeys(kept)))
    code, err = await _cli("run", *common, "--resume", str(events), "-o", str(out), cwd=tmp_path)
    assert code in (0, 1), err
    assert "Traceback" not in err
    _check(read_records(out))

    code, err = await _cli("report", str(out), cwd=tmp_path)
    assert code == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        pytest.param("--user-agent", "a\x01b", "--user-agent", id="ua-soh"),
        pytest.param("--user-agent", "a\x7fb", "--user-agent", id="ua-del"),
        pytest.param("--user-agent", "a\udcffb", "--user-agent", id="ua-undecodable"),
        pytest.param("--ip", "1.2.3.4\x00", "--ip", id="ip-nul"),
        pytest.param("--ip", "1.2.3.4\r\nX: y", "--ip", id="ip-crlf"),
        pytest.param("--endpoint", "http://127.0.0.1:9/d\x01", "--endpoint", id="endpoint-soh"),
        pytest.param("--endpoint", "http://127.0.0.1:9/\udcff", "--endpoint", id="endpoint-byte"),
    ],
)
def test_a_header_option_that_cannot_be_sent_is_exit_2(
    option: str, value: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--mock", option, value, "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert named in err


def test_a_record_with_a_surrogate_anywhere_is_writable() -> None:
    """An undecodable byte of a path reaches `source` as a lone surrogate."""
    from engine.core.records import Result

    record = Result(0, "i\ud800", "n\udcff.jsonl:1", None, False, 0, None, None, "e", None)
    assert orjson.loads(record.to_json())["source"] == "n\\udcff.jsonl:1"
