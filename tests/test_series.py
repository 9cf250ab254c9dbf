"""Long tests without giant files, and runs you can compare (issue 13 items 8, 9):
--records, --series, no records on a terminal, adbatch report on a series file and on
two runs, the HTML report in headless Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from pty_screen import run_in_pty
from test_report import _chromium, png_pixels

from engine.cli.main import main
from engine.config import Config
from engine.core.records import Result, parse_record
from engine.core.secrets import Secrets
from engine.core.series import Figures
from engine.core.serieslog import SecondLog, read_series
from engine.load.series_file import header
from engine.mock import MockConfig, running_mock
from engine.report.compare import compare_rows
from engine.report.text import FileTally, figures_from_lines, file_figures, text_report

T0 = 1_790_000_000.0
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "pageviews.jsonl"


def result(sched: float | None, sent: float | None, *, status: int | None = 200,
           lat: float | None = 10.0, kind: str | None = None,
           attempts: int = 1) -> Result:  # fmt: skip
    ok = status is not None and 200 <= status < 300
    return Result(
        seq=0, id=None, source="t", status=status, ok=ok, attempts=attempts, latency_ms=lat,
        sent_at=None if sent is None else T0 + sent, error=None if ok else "bad",
        response=None, error_kind=kind if kind else (None if ok else f"http_{status}"),
        scheduled_at=None if sched is None else T0 + sched,
    )  # fmt: skip


def through_series(results: list[Result], *, take_at: list[float]) -> dict[str, Any]:
    """`results` written as a --series file would be (taken at the given times), read back."""
    log = SecondLog(origin=T0)
    lines = [orjson.dumps({"adbatch_series": 1, "start": T0})]
    for r in results:
        log.add(r)
    for t in take_at:
        lines += [orjson.dumps(x, option=orjson.OPT_NON_STR_KEYS) for x in log.take(T0 + t)]
    lines += [orjson.dumps(x, option=orjson.OPT_NON_STR_KEYS) for x in log.take_all()]
    lines.append(orjson.dumps({"end": True, "elapsed_s": 3.0, "invalid": log.invalid}))
    figures, head, elapsed, bad = read_series(lines)
    assert (head["start"], elapsed, bad) == (T0, 3.0, 0)
    return {**figures.to_dict(elapsed_s=elapsed), "figures": file_figures(figures, None)}


MIXED = [
    result(0.1, 0.1, lat=5),
    result(0.5, 0.9, lat=40),
    result(1.2, 1.25, status=503),
    result(1.5, None, status=None, lat=None, kind="dropped"),
    result(2.0, 2.0, lat=700),
    result(None, None, status=None, lat=None, kind="invalid"),
]


@pytest.mark.parametrize("take_at", [pytest.param([], id="at-the-end"),
                                      pytest.param([1.0, 2.5], id="as-the-run-goes")])  # fmt: skip
def test_series_file_gives_the_figures_of_the_records(take_at: list[float]) -> None:
    direct = Figures(origin=T0)
    for r in MIXED:
        direct.add_result(r)
    want = direct.to_dict(elapsed_s=3.0)
    got = through_series(MIXED, take_at=take_at)
    for key in ("events", "sent", "ok", "failed", "invalid", "dropped", "statuses", "errors",
                "latency_ms", "corrected_latency_ms", "throughput", "series", "sends"):  # fmt: skip
        assert got[key] == want[key], key
    # The rate's span (first send to last, a dropped call at its due time) is in the
    # scheduled lines (first_sent, last_sent): the records' 1.9 s, not whole seconds.
    assert (want["sent_s"], got["sent_s"]) == (pytest.approx(1.9), pytest.approx(1.9))
    assert want["rate"] == got["rate"] == round(4 / 1.9, 3)


def test_a_series_file_without_the_sends_span_counts_whole_seconds() -> None:
    """A file written before the lines held first_sent and last_sent: its span is known to
    the second (sends in seconds 0, 1 and 2, the dropped call in 1: 3 s)."""
    lines = [{k: v for k, v in x.items() if k not in ("first_sent", "last_sent")}
             for x in _series_lines()]  # fmt: skip
    figures, _, _, bad = read_series(orjson.dumps(x, option=NON_STR) for x in lines)
    assert (bad, figures.sent_s, round(figures.rate, 3)) == (0, 3.0, round(4 / 3.0, 3))


#: 10 calls scheduled 0.1 s apart; the odd ones failed once and were sent again after a
#: backoff of up to 2 s, so their records' sent_at (the last attempt's) is late.
RETRIED = [
    result(i / 10, i / 10 + (0.5 + i / 5 if i % 2 else 0.0), attempts=2 if i % 2 else 1)
    for i in range(10)
]


def _rate_of(how: str, results: list[Result]) -> dict[str, Any]:
    """The figures of `results` as the live run, a report of the records or of a --series
    file reckon them."""
    if how == "series":
        return through_series(results, take_at=[1.0])
    figures = Figures(origin=T0)
    for r in results:
        if how == "live":
            figures.add_result(r)
        else:
            record = parse_record(r.to_json())
            assert record is not None
            figures.add_record(record)
    return figures.to_dict(elapsed_s=3.0)


@pytest.mark.parametrize("how", ["live", "records", "series"])
def test_a_retried_call_counts_in_the_rate_at_its_first_send(how: str) -> None:
    """--retries: a record's sent_at is its last attempt's, so the backoff stretched the
    span of sends (10 calls over 3.2 s: 3.1/s for a 10/s schedule); a retried call counts
    at its scheduled time, when its first attempt went: 10 calls over 0.9 s."""
    data = _rate_of(how, RETRIED)
    assert data["sent_s"] == pytest.approx(0.9)
    assert data["rate"] == round(10 / 0.9, 3)
    # The sends view still shows each call at its (last) send.
    assert sum(p["rate"] for p in data["sends"]) == 10
    assert data["sends"][-1]["t"] == 3.0  # the last call's second attempt, at 3.2 s


#: Sent a fraction of a millisecond before its scheduled time, at the series' start (a
#: timer fires up to 1 ms early under uvloop), then 4 more on time.
EARLY = [result(0.0, -0.0009), *(result(i / 10, i / 10) for i in range(1, 5))]


@pytest.mark.parametrize("how", ["live", "records", "series"])
def test_a_call_sent_before_the_start_is_in_second_zero(how: str) -> None:
    """Never at t = -1 s: the report of such a series said 'rate 25.0/s (sent over 2.00
    s)' for a 0.5 s load whose records said 101.9/s. The rate is the records' in all three."""
    data = _rate_of(how, EARLY)
    assert [p["t"] for p in data["sends"]] == [0.0]
    assert [p["t"] for p in data["series"]] == [0.0]
    assert data["sent_s"] == pytest.approx(0.4009)
    assert data["rate"] == round(5 / 0.4009, 3)
    if how == "series":
        log = SecondLog(origin=T0)
        for r in EARLY:
            log.add(r)
        assert all(line["t"] >= 0 for line in log.take_all())


@pytest.mark.parametrize(("first", "last"), [pytest.param(0.5, 0.1, id="first-after-last"),
                                              pytest.param("0", 0.1, id="text"),
                                              pytest.param(None, 0.1, id="half"),
                                              pytest.param(0.0, 1e300, id="far")])  # fmt: skip
def test_a_second_whose_sends_span_is_not_one_is_skipped(first: object, last: object) -> None:
    lines = _series_lines()
    line = next(x for x in lines[1:] if x.get("by") == "scheduled" and x["calls"])
    line["first_sent"], line["last_sent"] = first, last
    _, _, _, bad = read_series(orjson.dumps(x, option=NON_STR) for x in lines)
    assert bad == 1


def test_series_file_gives_the_figures_block() -> None:
    """Item 7 from a --series file: the records' latencies, counts and statuses; no
    bytes, and the error kinds stand for the messages (the lines keep no texts)."""
    direct = Figures(origin=T0)
    for r in MIXED:
        direct.add_result(r)
    want = file_figures(direct, FileTally(scheduled=True))
    got = through_series(MIXED, take_at=[1.0])
    block = got["figures"]
    for key in ("calls", "ok", "errors", "dropped", "success_ratio", "latency_ms", "statuses"):
        assert block[key] == want[key], key
    assert block["statuses"] == {"200": 3, "503": 1, "none": 1}
    assert block["latency_ms"]["schedule"]["max"] == pytest.approx(700.0, rel=0.01)
    assert block["bytes_in"]["total"] is None
    assert block["bytes_out"]["total"] is None
    assert block["top_errors"] == [{"message": "dropped", "count": 1},
                                   {"message": "http_503", "count": 1}]  # fmt: skip
    text = text_report({**got, "run": {"mode": "load"}})
    assert "p99.9" in text
    assert "error kinds, not messages" in text


def test_a_late_straggler_adds_to_its_second() -> None:
    log = SecondLog(origin=T0)
    log.add(result(0.2, 0.2))
    first = log.take(T0 + 1.5)
    log.add(result(0.4, 0.4))  # answered after its second was written
    lines = [orjson.dumps({"adbatch_series": 1, "start": T0})]
    lines += [orjson.dumps(x, option=orjson.OPT_NON_STR_KEYS) for x in first + log.take_all()]
    figures, _, _, _ = read_series(lines)
    data = figures.to_dict()
    assert data["sent"] == 2
    assert [p["rate"] for p in data["series"]] == [2.0]


def test_a_burst_shows_by_send_time_not_by_schedule() -> None:
    # 10 calls a second for 3 s on the schedule; the client stalls in second 1 and
    # sends that second's calls at 2.0-2.1 s.
    results = [result(i / 10, i / 10 if not 10 <= i < 20 else 2.0 + (i - 10) / 100)
               for i in range(30)]  # fmt: skip
    figures = Figures(origin=T0)
    for r in results:
        figures.add_result(r)
    data = figures.to_dict()
    assert [p["scheduled"] for p in data["series"]] == [10, 10, 10]
    assert [p["rate"] for p in data["sends"]] == [10, 0, 20]


def test_calls_in_flight_are_cut_at_second_edges() -> None:
    figures = Figures(origin=T0)
    figures.add_result(result(0.75, 0.75, lat=500))  # in flight 0.75-1.25 s
    figures.add_result(result(1.0, 1.0, lat=1000))  # 1.0-2.0 s
    assert [p["in_flight"] for p in figures.to_dict()["sends"]] == [0.25, 1.25]


def fig(rate: float, p99: float, failed: int = 0) -> dict[str, Any]:
    figures = Figures(origin=T0)
    for i in range(100):
        status = 500 if i < failed else 200
        at = i / rate  # the rate is the calls over the span of their sends
        figures.add_result(result(at, at, lat=p99 if i == 99 else 1.0, status=status))
    return figures.to_dict()


@pytest.mark.parametrize(
    ("b", "metric", "verdict"),
    [
        pytest.param(fig(100, 50), "p99.9 from send", "worse", id="slower"),
        pytest.param(fig(100, 5), "p99.9 from send", "better", id="faster"),
        pytest.param(fig(80, 10), "rate", "worse", id="lower-rate"),
        pytest.param(fig(100, 10, failed=3), "errors", "worse", id="more-errors"),
        pytest.param(fig(100.5, 10), "rate", "", id="under-1%-is-noise"),
    ],
)
def test_compare_marks_the_change(b: dict[str, Any], metric: str, verdict: str) -> None:
    rows = {r["metric"]: r for r in compare_rows(fig(100, 10), b)}
    assert rows[metric]["verdict"] == verdict


def test_series_header_redacts_secrets() -> None:
    """The options shown as config --show shows them (core/shown.py): the secrets the
    run knows, and a URL's password and query values, a credential storage option's."""
    config = Config(
        token="tok-SECRET-1234567890", proxy="http://user:pw-SECRET@127.0.0.1:3128",
        headers=("X-Api-Key: key-SECRET",), rate=50.0,
        endpoint="https://u:pw-SECRET@ads.example/d?apikey=q-SECRET",
        token_url="https://t:tu-SECRET@ads.example/oauth2/token?k=tq-SECRET",
        client_id="c", client_secret="cs-SECRET-1234",
        storage_options=(("secret_access_key", "so-SECRET"), ("region", "eu-west-1")),
    )  # fmt: skip
    secrets = Secrets(["tok-SECRET-1234567890", "pw-SECRET"])
    head = header(config, secrets, mode="load", start=T0)
    text = orjson.dumps(head).decode()
    assert "SECRET" not in text
    options = head["options"]
    assert options["rate"] == 50.0
    assert options["token"] == options["client_secret"] == "[redacted]"
    assert options["endpoint"] == "https://u:[redacted]@ads.example/d?apikey=[redacted]"
    assert options["storage_options"] == ["secret_access_key=[redacted]", "region=eu-west-1"]
    assert options["proxy"] == "http://[redacted]@127.0.0.1:3128"
    assert head["target"] == "ads.example"


# -- against the mock ---------------------------------------------------------------------


def adbatch(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *argv], cwd=cwd, capture_output=True, text=True,
        timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )  # fmt: skip


LOAD = ("load", "--mock", str(EXAMPLES), "--rate", "50", "--duration", "2s", "--no-progress")


@pytest.mark.slow
def test_load_series_records_and_report(tmp_path: Path) -> None:
    done = adbatch(*LOAD, "-o", "all.jsonl", "--series", "a.series", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = (tmp_path / "all.jsonl").read_bytes().splitlines()
    assert len(records) == 100
    lines = [orjson.loads(x) for x in (tmp_path / "a.series").read_bytes().splitlines()]
    assert lines[0]["mode"] == "load"
    assert lines[0]["options"]["rate"] == 50.0
    assert lines[-1]["end"] is True
    assert {x["by"] for x in lines[1:-1]} == {"scheduled", "sent"}
    assert sum(x["calls"] for x in lines[1:-1] if x["by"] == "scheduled") == 100

    # The same figures from either file.
    for name in ("all.jsonl", "a.series"):
        shown = adbatch("report", name, "--summary", f"{name}.json", cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        data = orjson.loads((tmp_path / f"{name}.json").read_bytes())
        assert (data["sent"], data["ok"]) == (100, 100), name
        assert data["figures"]["statuses"] == {"200": 100}, name
        assert data["figures"]["latency_ms"]["schedule"]["p99.9"] is not None, name
        assert (data["figures"]["bytes_in"]["total"] is None) == (name == "a.series")
        assert "p99.9" in shown.stdout

    # --records errors and none: nothing written when all is well; the series still is.
    for which in ("errors", "none"):
        done = adbatch(*LOAD, "-o", f"{which}.jsonl", "--records", which,
                       "--series", f"{which}.series", cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (tmp_path / f"{which}.jsonl").read_bytes() == b""
        assert (tmp_path / f"{which}.series").stat().st_size > 0

    compared = adbatch("report", "a.series", "none.series", "--html", "cmp.html", cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    assert "p99 from schedule (ms)" in compared.stdout
    assert "change B - A" in compared.stdout
    assert 'id="compare"' in (tmp_path / "cmp.html").read_text()


@pytest.mark.slow
@pytest.mark.anyio
async def test_load_errors_only_keeps_the_failures(tmp_path: Path) -> None:
    async with running_mock(MockConfig(fail_500=0.3)) as server:
        argv = ["load", str(EXAMPLES), "--rate", "50", "--duration", "2s", "--no-progress",
                "--endpoint", server.delivery_url, "--token", "mock-token", "-o", "e.jsonl",
                "--records", "errors"]  # fmt: skip
        done = await anyio.to_thread.run_sync(lambda: adbatch(*argv, cwd=tmp_path))
    assert done.returncode == 1, done.stderr
    records = [orjson.loads(x) for x in (tmp_path / "e.jsonl").read_bytes().splitlines()]
    assert 0 < len(records) < 100  # the mock failed some calls, not all
    assert all(r["status"] == 500 for r in records)


def test_run_refuses_records_other_than_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--mock", str(EXAMPLES), "-o", str(tmp_path / "o"), "--records",
                 "errors"]) == 2  # fmt: skip
    assert "--records is for load and replay" in capsys.readouterr().err
    config = tmp_path / "c.toml"
    config.write_text('records = "none"\n')
    assert main(["run", "--mock", str(EXAMPLES), "-o", str(tmp_path / "o"),
                 "--config", str(config)]) == 2  # fmt: skip
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_load_to_a_terminal_writes_no_records() -> None:
    screen = run_in_pty([sys.executable, "-m", "engine", *LOAD], columns=120)
    text = screen.seen_text()
    assert screen.returncode == 0, text
    assert "records not written to the terminal: give -o FILE" in text
    assert '"seq"' not in text


@pytest.mark.slow
def test_series_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium on this machine")
    done = adbatch(*LOAD, "-o", "/dev/null", "--series", "s.series", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shown = adbatch("report", "s.series", "--html", "r.html", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    page = tmp_path / "r.html"
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--proxy-server=127.0.0.1:9",
            f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=50, env=env, check=False)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    for needle in ("mode <b>load</b>", "embedded mock", "UTC", "rate", "Calls in flight",
                   'id="errors"', 'id="sends"', 'aria-label="target rate"'):  # fmt: skip
        assert needle in dom.stdout, needle
    shot = tmp_path / "shot.png"
    proc = subprocess.run([*base, "--window-size=800,1600", f"--screenshot={shot}",
                           page.as_uri()], capture_output=True, timeout=50, env=env,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, _, colours = png_pixels(shot.read_bytes())
    # Achieved rate (blue), target (slate, dashed), calls in flight (purple) were drawn.
    for name, rgb in (("blue", (0x25, 0x63, 0xEB)), ("slate", (0x64, 0x74, 0x8B)),
                      ("purple", (0x93, 0x33, 0xEA))):  # fmt: skip
        assert colours[rgb] > 5, name


@pytest.mark.slow
def test_load_workers_honour_records(tmp_path: Path) -> None:
    done = adbatch(*LOAD, "--workers", "2", "--records", "none", "-o", "w.jsonl",
                   "--summary", "w.json", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "w.jsonl").read_bytes() == b""
    assert orjson.loads((tmp_path / "w.json").read_bytes())["ok"] == 100


def report_of(name: str, cwd: Path) -> tuple[str, dict[str, Any]]:
    shown = adbatch("report", name, "--summary", f"{name}.json", cwd=cwd)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout, orjson.loads((cwd / f"{name}.json").read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["load", "replay"])
def test_workers_write_one_series_file(tmp_path: Path, mode: str) -> None:
    if mode == "load":
        argv = ["load", "--mock", str(EXAMPLES), "--rate", "100", "--duration", "3s"]
    else:
        argv = ["replay", "--mock", str(EXAMPLES.parent / "access.log"), "--speed", "20"]
    done = adbatch(*argv, "--workers", "2", "--no-progress", "--series", "s.jsonl",
                   "-o", "r.jsonl", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(x) for x in (tmp_path / "s.jsonl").read_bytes().splitlines()]
    assert lines[0]["mode"] == mode
    assert lines[0]["start"] > 0
    assert lines[-1]["end"] is True
    records = (tmp_path / "r.jsonl").read_bytes().splitlines()
    assert len(records) > 1
    assert sum(x["calls"] for x in lines[1:-1] if x["by"] == "scheduled") == len(records)
    # Both workers wrote lines for the same seconds: the report adds them up.
    seconds = [x["t"] for x in lines[1:-1] if x["by"] == "scheduled"]
    assert len(seconds) > len(set(seconds))
    text_s, from_series = report_of("s.jsonl", tmp_path)
    text_r, from_records = report_of("r.jsonl", tmp_path)
    for key in ("events", "sent", "ok", "failed", "dropped"):
        assert from_series[key] == from_records[key], key
    assert from_series["figures"]["statuses"] == from_records["figures"]["statuses"]
    status = [line for line in text_s.splitlines() if line.lstrip().startswith("status")]
    assert status
    assert status == [
        line for line in text_r.splitlines() if line.lstrip().startswith("status")
    ]


@pytest.mark.slow
def test_workers_refuse_a_series_that_is_no_file(tmp_path: Path) -> None:
    refused = adbatch(*LOAD, "--workers", "2", "--series", "/dev/null", "-o", "w.jsonl",
                      cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2
    assert "--series /dev/null is not a regular file" in refused.stderr
    assert refused.stderr.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_first_call_is_at_second_zero_of_the_series(tmp_path: Path, workers: str) -> None:
    """The series' start is on the records' microsecond grid: a first call scheduled at the
    start (its scheduled_at rounded to 6 places) was placed at t = -1 s about one run in
    two, where a report of the records placed it at 0. Eight runs: all at 0 s."""
    for i in range(8):
        series, out = tmp_path / f"{i}.series", tmp_path / f"{i}.jsonl"
        assert main(["load", "--mock", str(EXAMPLES), "--rate", "100", "--duration", "0.1s",
                     "--no-progress", "--workers", workers, "--series", str(series),
                     "-o", str(out)]) == 0  # fmt: skip
        lines = [orjson.loads(x) for x in series.read_bytes().splitlines()]
        scheduled = [x for x in lines[1:-1] if x["by"] == "scheduled"]
        assert {x["t"] for x in scheduled} == {0.0}, i
        assert sum(x["calls"] for x in scheduled) == len(out.read_bytes().splitlines()) == 10
        # Nor by its send: a call sent a hair before the start (a timer firing early)
        # was at -1 s, and the series' rate then was not the records'.
        assert {x["t"] for x in lines[1:-1]} == {0.0}, i
        from_series, _, _, _ = read_series(series.read_bytes().splitlines())
        records, _ = figures_from_lines(out.read_bytes().splitlines())
        assert from_series.to_dict()["rate"] == pytest.approx(records.to_dict()["rate"], rel=1e-4)


NON_STR = orjson.OPT_NON_STR_KEYS


def _series_lines() -> list[dict[str, Any]]:
    log = SecondLog(origin=T0)
    for r in MIXED:
        log.add(r)
    return [{"adbatch_series": 1, "start": T0}, *log.take_all(), {"end": True, "elapsed_s": 3.0}]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("ok", 1_000_000, id="ok-over-calls"),
        pytest.param("errors", 7, id="errors-over-calls"),
        pytest.param("calls", 0, id="calls-under-ok"),
    ],
)
def test_a_second_whose_counts_do_not_add_up_is_skipped(key: str, value: int) -> None:
    """ok + errors = calls on every line written: a line where they do not is unreadable
    (ok over calls made failures negative and success over 100%)."""
    lines = _series_lines()
    first = next(x for x in lines[1:] if x.get("by") == "scheduled" and x["calls"])
    first[key] = value
    figures, _, _, bad = read_series(orjson.dumps(x, option=NON_STR) for x in lines)
    assert bad == 1
    assert 0 <= figures.ok <= figures.events - figures.invalid
    assert figures.failed >= 0


@pytest.mark.parametrize("start", [pytest.param("absent", id="no-start"),
                                   pytest.param(None, id="start-null")])  # fmt: skip
def test_a_series_header_without_start_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], start: str | None
) -> None:
    lines = _series_lines()
    if start == "absent":
        del lines[0]["start"]
    else:
        lines[0]["start"] = start
    path = tmp_path / "s.series"
    path.write_bytes(b"".join(orjson.dumps(x, option=NON_STR) + b"\n" for x in lines))
    assert main(["report", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "s.series" in err
    assert "'start'" in err


def test_a_series_of_no_second_may_have_a_null_start(tmp_path: Path) -> None:
    """As a run that scheduled nothing writes it: read, nothing refused."""
    path = tmp_path / "s.series"
    path.write_bytes(b'{"adbatch_series": 1, "start": null}\n{"end": true, "elapsed_s": 0.0}\n')
    assert main(["report", str(path)]) == 0
