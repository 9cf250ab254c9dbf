"""engine/core/units.py: one grammar for durations, rates and sizes, and the CLI's one-line
errors for a bad quantity (options, ADBATCH_* and --stages)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli.main import main
from engine.core.pacing import parse_stages
from engine.core.units import UnitError, parse_duration, parse_rate, parse_size

EXAMPLES = str(Path(__file__).parent.parent / "examples" / "pageviews.jsonl")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("2", 2.0, id="bare"),
        pytest.param("0.25", 0.25, id="bare-fraction"),
        pytest.param("2s", 2.0, id="seconds"),
        pytest.param("1.5s", 1.5, id="fraction-seconds"),
        pytest.param("500ms", 0.5, id="millis"),
        pytest.param("1m30s", 90.0, id="combined"),
        pytest.param("1h", 3600.0, id="hour"),
        pytest.param("1h30m", 5400.0, id="hour-minutes"),
        pytest.param(" 2S ", 2.0, id="upper-and-spaces"),
        pytest.param("0s", 0.0, id="zero"),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("x", id="word"),
        pytest.param("10x", id="unit"),
        pytest.param("-3", id="negative"),
        pytest.param("s", id="no-number"),
        pytest.param("1m 30s", id="space-inside"),
        pytest.param("inf", id="inf"),
        pytest.param("nan", id="nan"),
        pytest.param("2 s", id="space-before-unit"),
        pytest.param("9" * 400, id="past-a-float"),  # read as inf: a run with no end
        pytest.param("9" * 400 + "s", id="past-a-float-in-seconds"),
    ],
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(UnitError, match=r"expected a duration such as 2, 2s, 500ms"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        pytest.param("500", 500.0, id="bare"),
        pytest.param("500/s", 500.0, id="per-second"),
        pytest.param("30000/m", 500.0, id="per-minute"),
        pytest.param("30000/min", 500.0, id="per-min"),
        pytest.param("3600/h", 1.0, id="per-hour"),
        pytest.param("1k", 1000.0, id="kilo"),
        pytest.param("1K", 1000.0, id="kilo-upper"),
        pytest.param("1.5k/s", 1500.0, id="kilo-per-second"),
        pytest.param("2M/h", 2e6 / 3600, id="mega-per-hour"),
        pytest.param("0.5", 0.5, id="fraction"),
        pytest.param("10 /S", 10.0, id="spaces-upper-unit"),
        pytest.param("0", 0.0, id="zero"),
    ],
)
def test_rates(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x", id="word"),
        pytest.param("", id="empty"),
        pytest.param("-5", id="negative"),
        pytest.param("1m", id="lowercase-m-is-not-mega"),
        pytest.param("5/d", id="unknown-period"),
        pytest.param("5/", id="no-period"),
        pytest.param("1e3", id="exponent"),
        pytest.param("inf", id="inf"),
    ],
)
def test_bad_rates(text: str) -> None:
    with pytest.raises(UnitError, match=r"expected a rate such as 500, 500/s, 30000/m, 1k"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        pytest.param("1048576", 1048576, id="bare"),
        pytest.param("512k", 512_000, id="si-kilo"),
        pytest.param("512K", 512_000, id="si-kilo-upper"),
        pytest.param("512kB", 512_000, id="si-kilo-bytes"),
        pytest.param("8M", 8_000_000, id="si-mega"),
        pytest.param("1G", 10**9, id="si-giga"),
        pytest.param("8MiB", 8 * 1024 * 1024, id="iec-mebi"),
        pytest.param("8Mi", 8 * 1024 * 1024, id="iec-mebi-no-b"),
        pytest.param("64KiB", 65536, id="iec-kibi"),
        pytest.param("1.5k", 1500, id="fraction-whole"),
        pytest.param("100B", 100, id="bytes"),
        pytest.param("99999999999999999999", 99999999999999999999, id="exact-big"),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("x", "expected a size such as", id="word"),
        pytest.param("8mb", "expected a size such as", id="milli-is-not-mega"),
        pytest.param("-1k", "expected a size such as", id="negative"),
        pytest.param("8XiB", "expected a size such as", id="unknown-prefix"),
        pytest.param("1.5", "whole number of bytes", id="fraction-of-a-byte"),
        pytest.param("0.0001k", "whole number of bytes", id="fraction-with-prefix"),
    ],
)
def test_bad_sizes(text: str, message: str) -> None:
    with pytest.raises(UnitError, match=message):
        parse_size(text)


def test_stages_take_durations_and_rates_of_the_same_grammar() -> None:
    assert parse_stages("30s:100,1m:1k/s,500ms:30000/m") == [
        (30.0, 100.0),
        (60.0, 1000.0),
        (0.5, 500.0),
    ]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        pytest.param(
            ["run", "--rate", "x"],
            "adbatch run: error: --rate: expected a rate such as 500, 500/s, 30000/m, 1k, "
            "1.5k/s, got 'x'",
            id="rate",
        ),
        pytest.param(
            ["load", "--rate", "1", "--duration", "soon"],
            "adbatch load: error: --duration: expected a duration such as 2, 2s, 500ms, "
            "1m30s, 1h, got 'soon'",
            id="load-duration",
        ),
        pytest.param(
            ["run", "--timeout", "0s"],
            "adbatch run: error: --timeout: expected a duration above 0 such as 2, 2s, "
            "500ms, 1m30s, 1h, got '0s'",
            id="zero-timeout",
        ),
        pytest.param(
            ["replay", "--max-response-bytes", "8mb"],
            "adbatch replay: error: --max-response-bytes: expected a size such as 1048576, "
            "512k (SI: 512000), 8MiB (IEC: 8388608), got '8mb'",
            id="size",
        ),
        pytest.param(
            ["load", "--ramp-from", "fast"],
            "adbatch load: error: --ramp-from: expected a rate such as 500, 500/s, 30000/m, "
            "1k, 1.5k/s, got 'fast'",
            id="ramp",
        ),
    ],
)
def test_a_bad_quantity_is_one_line_naming_the_option(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--mock", "-"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--rate", "10/s", "--timeout", "2s", "--grace", "5s"], id="rate-timeout"),
        pytest.param(["--rate", "1k", "--token-wait", "1m", "--give-up-after", "1m30s"], id="k"),
        pytest.param(["--max-line-bytes", "512k", "--max-response-bytes", "8MiB"], id="sizes"),
        pytest.param(["--backoff-base", "100ms", "--backoff-cap", "10s"], id="backoff"),
        pytest.param(["--retry-after-cap", "30s", "--metrics-linger", "0s"], id="caps"),
    ],
)
def test_options_take_units(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--mock", "--dry-run", *argv, EXAMPLES, "-o", "/dev/null"]) == 0
    assert "40 events" in capsys.readouterr().err


def test_environment_takes_units(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADBATCH_RATE", "1.5k/s")
    monkeypatch.setenv("ADBATCH_TIMEOUT", "500ms")
    argv = ["run", "--mock", "--dry-run", EXAMPLES, "-o", "/dev/null"]
    assert main(argv) == 0
    monkeypatch.setenv("ADBATCH_TIMEOUT", "soon")
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "adbatch: error: ADBATCH_TIMEOUT: expected a duration such as 2, 2s, 500ms, "
        "1m30s, 1h, got 'soon'\n"
    )
