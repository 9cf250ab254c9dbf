"""--threshold (issue 13, item 6) and the end figures (item 7).

Tables for parsing and evaluation (core/thresholds.py), the figures block
(core/figures.py), and the command line on the embedded mock: a passing and a failing
threshold for load and run (and run --workers 2), the exit-code precedence, the TOML list.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli.main import main
from engine.core.errors import ConfigError
from engine.core.figures import MAX_MESSAGES, OTHER_MESSAGES, count_message, figures
from engine.core.stats import Histogram, RunStats, Summary, summarize
from engine.core.thresholds import evaluate, judged, parse_threshold, verdict_line
from engine.report.text import figures_text

EXAMPLES = Path(__file__).parent.parent / "examples" / "pageviews.jsonl"


@pytest.mark.parametrize(
    ("text", "metric", "op", "limit"),
    [
        pytest.param("p99<250ms", "p99", "<", 250.0, id="p99-ms"),
        pytest.param(" p99.9 <= 0.5s ", "p99.9", "<=", 500.0, id="seconds-spaces"),
        pytest.param("send.p50>1ms", "send.p50", ">", 1.0, id="send-view"),
        pytest.param("max<2s", "max", "<", 2000.0, id="max"),
        pytest.param("errors<1%", "errors", "<", 1.0, id="errors"),
        pytest.param("dropped<=0%", "dropped", "<=", 0.0, id="dropped"),
        pytest.param("rate>=490/s", "rate", ">=", 490.0, id="rate"),
        pytest.param("rate>.5/s", "rate", ">", 0.5, id="leading-dot"),
    ],
)
def test_parse(text: str, metric: str, op: str, limit: float) -> None:
    t = parse_threshold(text)
    assert (t.metric, t.op, t.limit, t.text) == (metric, op, limit, text.strip())


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("p99", "write METRIC OP VALUE", id="no-operator"),
        pytest.param("p99=250ms", "write METRIC OP VALUE", id="equals"),
        pytest.param("p98<250ms", "unknown metric 'p98'", id="unknown-percentile"),
        pytest.param("latency<1s", "unknown metric", id="unknown-metric"),
        pytest.param("p99<250", "p99 takes ms or s after its number", id="no-unit"),
        pytest.param("p99<1%", "p99 takes ms or s, not %", id="wrong-unit"),
        pytest.param("errors<1ms", "errors takes %, not ms", id="errors-in-ms"),
        pytest.param("rate>=490", "rate takes /s", id="rate-bare"),
        pytest.param("p99<-1ms", "write METRIC OP VALUE", id="negative"),
        pytest.param("", "write METRIC OP VALUE", id="empty"),
    ],
)
def test_malformed_is_one_line_with_an_example(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_threshold(text)
    message = str(info.value)
    assert says in message
    assert f"--threshold {text.strip()!r}" in message
    assert "p99<250ms" in message
    assert "\n" not in message


def _figures(*, schedule: bool) -> dict[str, Any]:
    send, sched = Histogram(), Histogram()
    for ms in (10.0, 20.0, 30.0):
        send.record(ms)
        sched.record(ms + 100.0)
    return figures(
        send=send,
        schedule=sched if schedule else None,
        calls=200,
        ok=190,
        dropped=4,
        statuses={200: 190, 500: 6},
        messages=Counter({"HTTP 500": 6, "dropped: 256 calls already in flight": 4}),
        bytes_in=1960,
        bytes_out=980,
    )


@pytest.mark.parametrize(
    ("text", "schedule", "value", "passed"),
    [
        pytest.param("p99<250ms", True, 130.0, True, id="p99-from-schedule"),
        pytest.param("p99<120ms", True, 130.0, False, id="p99-schedule-fails"),
        pytest.param("p99<120ms", False, 30.0, True, id="run-p99-is-from-send"),
        pytest.param("send.p99<120ms", True, 30.0, True, id="send-p99"),
        pytest.param("max<=0.13s", True, 130.0, True, id="max-equal"),
        pytest.param("min>100ms", True, 110.0, True, id="min"),
        pytest.param("errors<3%", True, 3.0, False, id="errors-exclude-dropped"),
        pytest.param("errors<=3%", True, 3.0, True, id="errors-le"),
        pytest.param("dropped<1%", True, 2.0, False, id="dropped"),
        pytest.param("rate>=490/s", True, 495.0, True, id="rate"),
        pytest.param("rate>500/s", True, 495.0, False, id="rate-fails"),
    ],
)
def test_evaluate(text: str, schedule: bool, value: float, passed: bool) -> None:
    (verdict,) = evaluate([parse_threshold(text)], _figures(schedule=schedule), 495.0)
    assert verdict["value"] == pytest.approx(value, rel=0.01)
    assert verdict["pass"] is passed
    assert verdict["threshold"] == text


@pytest.mark.parametrize(
    ("text", "figure", "line"),
    [
        pytest.param("p99<=9.303ms", 9.3034, "pass (measured 9.303 ms)", id="ms-equal-shown"),
        pytest.param("p99<=0.009303s", 9.3034, "pass (measured 9.303 ms)", id="s-equal-shown"),
        pytest.param("p99<9.303ms", 9.3034, "FAIL (measured 9.303 ms)", id="lt-equal-fails"),
        pytest.param("p99<=9.303ms", 9.3036, "FAIL (measured 9.304 ms)", id="rounds-up"),
        pytest.param("errors<=0.333%", 1, "pass (measured 0.333%)", id="1-in-300"),
        pytest.param("errors<0.333%", 1, "FAIL (measured 0.333%)", id="1-in-300-lt"),
        pytest.param("rate>=99.5/s", 99.4996, "pass (measured 99.5/s)", id="rate-shown"),
    ],
)
def test_judged_on_the_figure_as_shown(text: str, figure: float, line: str) -> None:
    """A verdict never shows a passing number beside FAIL: it judges what it prints."""
    latency = {"p99": figure}
    block = {"calls": 300, "errors": figure, "dropped": 0,
             "latency_ms": {"schedule": latency, "send": latency}}  # fmt: skip
    (verdict,) = evaluate([parse_threshold(text)], block, figure)
    assert verdict_line(verdict) == f"threshold {text}: {line}"


def test_no_value_fails() -> None:
    empty = figures(
        send=Histogram(), schedule=None, calls=0, ok=0, dropped=0, statuses={},
        messages={}, bytes_in=0, bytes_out=0,
    )  # fmt: skip
    verdicts = evaluate([parse_threshold("p99<1s"), parse_threshold("errors<1%")], empty, 0.0)
    assert [v["pass"] for v in verdicts] == [False, False]
    assert verdict_line(verdicts[0]) == "threshold p99<1s: FAIL (measured no value)"


@pytest.mark.parametrize(
    ("verdict", "line"),
    [
        pytest.param(
            {"threshold": "p99<250ms", "value": 12.3, "unit": "ms", "pass": True},
            "threshold p99<250ms: pass (measured 12.3 ms)",
            id="ms",
        ),
        pytest.param(
            {"threshold": "errors<1%", "value": 2.5, "unit": "%", "pass": False},
            "threshold errors<1%: FAIL (measured 2.5%)",
            id="percent",
        ),
        pytest.param(
            {"threshold": "rate>=490/s", "value": 500.0, "unit": "/s", "pass": True},
            "threshold rate>=490/s: pass (measured 500/s)",
            id="rate",
        ),
    ],
)
def test_verdict_line(verdict: dict[str, Any], line: str) -> None:
    assert verdict_line(verdict) == line


def _summary(
    *, failed: int = 0, stopped: str | None = None, interrupted: int | None = None
) -> Summary:
    stats = RunStats()
    stats.add(status=200, ok=True, invalid=False, latency_ms=5.0, error_kind=None)
    for _ in range(failed):
        stats.add(status=500, ok=False, invalid=False, latency_ms=5.0, error_kind="http_500")
    return summarize(stats, elapsed_s=1.0, stopped=stopped, interrupted=interrupted)


@pytest.mark.parametrize(
    ("kwargs", "threshold", "code"),
    [
        pytest.param({}, "p99<1s", 0, id="pass"),
        pytest.param({}, "p99<1ms", 4, id="fail"),
        pytest.param({"failed": 1}, "p99<1s", 1, id="failed-events-pass"),
        pytest.param({"failed": 1}, "p99<1ms", 4, id="threshold-wins-over-1"),
        pytest.param({"stopped": "stop"}, "p99<1ms", 3, id="stop-wins-over-4"),
        pytest.param({"interrupted": 2}, "p99<1ms", 130, id="sigint-wins-over-4"),
    ],
)
def test_exit_code_precedence(kwargs: dict[str, Any], threshold: str, code: int) -> None:
    assert judged(_summary(**kwargs), [threshold]).exit_code == code


def test_figures_block_and_text() -> None:
    block = _figures(schedule=True)
    assert block["statuses"] == {"200": 190, "500": 6, "none": 4}
    assert block["success_ratio"] == 0.95
    assert block["errors"] == 6
    assert block["bytes_in"] == {"total": 1960, "mean": 10.0}  # per call sent (196)
    assert block["top_errors"][0] == {"message": "HTTP 500", "count": 6}
    assert set(block["latency_ms"]["send"]) == {
        "min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max",
    }  # fmt: skip
    text = figures_text(block)
    assert "from schedule" in text
    assert "success  95.00% (190 ok of 200 calls; 6 errors, 4 dropped)" in text
    assert "status   200 x190, 500 x6, none x4" in text
    assert "6  HTTP 500" in text


def test_messages_are_cut_and_bounded() -> None:
    messages: Counter[str] = Counter()
    count_message(messages, "x" * 500)
    assert list(messages) == ["x" * 100]
    for n in range(MAX_MESSAGES + 10):
        count_message(messages, f"HTTP 400: no item {n}")
    assert len(messages) == MAX_MESSAGES + 1
    assert messages[OTHER_MESSAGES] == 11


# -- the command line, on the embedded mock ---------------------------------------------------


def _load(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "load", "--mock", str(EXAMPLES), "--rate", "40", "--duration", "0.5s",
        "-o", str(tmp_path / "o.jsonl"), "--summary", str(tmp_path / "s.json"), *extra,
    ]  # fmt: skip


def _run(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run", "--mock", str(EXAMPLES), "-o", str(tmp_path / "o.jsonl"),
        "--summary", str(tmp_path / "s.json"), *extra,
    ]  # fmt: skip


# The failing threshold asks for a rate no run reaches: behaviour, not a timing.
PASS = ("--threshold", "p99<60s", "--threshold", "errors<=0%", "--threshold", "rate>0/s")
FAIL = ("--threshold", "p99<60s", "--threshold", "rate>=100000000/s")


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        pytest.param(_load, (), id="load"),
        pytest.param(_run, (), id="run"),
        pytest.param(_run, ("--workers", "2"), id="run-workers-2"),
    ],
)
@pytest.mark.parametrize(("thresholds", "code"), [(PASS, 0), (FAIL, 4)], ids=["pass", "fail"])
def test_cli_thresholds(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: Any,
    extra: tuple[str, ...],
    thresholds: tuple[str, ...],
    code: int,
) -> None:
    assert main(command(tmp_path, *extra, *thresholds)) == code
    err = capsys.readouterr().err
    data = orjson.loads((tmp_path / "s.json").read_bytes())
    verdicts = data["summary"]["thresholds"]
    assert [v["threshold"] for v in verdicts] == list(thresholds[1::2])
    assert [v["pass"] for v in verdicts] == [True] * len(verdicts) if code == 0 else [True, False]
    for v in verdicts:
        assert verdict_line(v) in err
        assert v["value"] is not None
    if code == 4:
        assert "threshold rate>=100000000/s: FAIL (measured " in err
    block = data["summary"]["figures"]
    assert block["calls"] == block["ok"] > 0
    assert block["bytes_in"]["total"] > 0
    assert block["bytes_out"]["total"] > 0
    assert block["statuses"] == {"200": block["calls"]}
    # run has no schedule: its p99 threshold is the latency from the send.
    assert (block["latency_ms"]["schedule"] is None) == (command is _run)
    if command is _load:
        assert "from schedule" in err
        assert "success  100.00%" in err


def test_threshold_wins_over_failed_events(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    events.write_bytes(EXAMPLES.read_bytes() + b"not json\n")
    argv = ["run", "--mock", str(events), "-o", str(tmp_path / "o.jsonl")]
    assert main(argv) == 1
    assert main([*argv, "--threshold", "rate>=100000000/s"]) == 4


def test_thresholds_in_the_toml_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('thresholds = ["p99<60s", "rate>=100000000/s"]\n')
    assert main(_run(tmp_path, "--config", str(config))) == 4
    assert "threshold rate>=100000000/s: FAIL" in capsys.readouterr().err
    config.write_text('thresholds = ["p99<60s"]\n')
    assert main(_run(tmp_path, "--config", str(config))) == 0
    capsys.readouterr()
    config.write_text('thresholds = ["p99 < 60"]\n')
    assert main(_run(tmp_path, "--config", str(config))) == 2
    err = capsys.readouterr().err
    assert "--threshold 'p99 < 60': p99 takes ms or s after its number" in err
    assert len(err.strip().splitlines()) == 1


def test_malformed_threshold_on_the_command_line_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_load(tmp_path, "--threshold", "p99<x")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--threshold 'p99<x'" in err
    assert "p99<250ms" in err
    assert not (tmp_path / "o.jsonl").exists()
