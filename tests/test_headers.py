"""`--header 'Name: value'`: checked (pure table), sent on every delivery call by both
clients and under --workers 2 (an aiohttp.web server records what came), never on
token calls, below an event's own user-agent / referer / ip, shown by --dry-run, and
read from the config file as a list."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiohttp import web
from conftest import read_records

from engine.cli.main import main
from engine.core.headers import parse_header, parse_headers
from engine.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        pytest.param("X-Gateway: staging", ("X-Gateway", "staging"), id="plain"),
        pytest.param("X-Gateway:staging  ", ("X-Gateway", "staging"), id="spaces-dropped"),
        pytest.param("X-Empty:", ("X-Empty", ""), id="empty-value"),
        pytest.param("X-A: b: c", ("X-A", "b: c"), id="colon-in-value"),
        pytest.param("x-odd!#$%&'*+.^_`|~: 1", ("x-odd!#$%&'*+.^_`|~", "1"), id="token-chars"),
        pytest.param("user-agent: gw", ("User-Agent", "gw"), id="user-agent-spelling"),
        pytest.param("REFERER: r", ("Referer", "r"), id="referer-spelling"),
        pytest.param("x-forwarded-for: 1.2.3.4", ("X-Forwarded-For", "1.2.3.4"), id="xff"),
        pytest.param("X-Text: é ü", ("X-Text", "é ü"), id="non-ascii-value"),
    ],
)
def test_headers_that_are_taken(text: str, pair: tuple[str, str]) -> None:
    assert parse_header(text) == pair


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("X-Gateway staging", "no colon", id="no-colon"),
        pytest.param(": v", "is not a header name", id="no-name"),
        pytest.param("X Gateway: v", "is not a header name", id="space-in-name"),
        pytest.param("X-Gé: v", "is not a header name", id="non-token-name"),
        pytest.param("X-A\r\nX-B: v", "is not a header name", id="crlf-in-name"),
        pytest.param("X-A: v\r\nX-Evil: 1", "control character (U+000D)", id="crlf-in-value"),
        pytest.param("X-A: v\nw", "control character (U+000A)", id="lf-in-value"),
        pytest.param("X-A: v\tw", "control character (U+0009)", id="tab-in-value"),
        pytest.param("X-A: v\x7f", "control character (U+007F)", id="del-in-value"),
        pytest.param("X-A: \ud800", "lone surrogate", id="surrogate"),
        pytest.param("Authorization: Bearer x", "the bearer token's", id="authorization"),
        pytest.param("host: other.example", "the endpoint's", id="host"),
        pytest.param("Content-Length: 5", "cannot be set", id="content-length"),
        pytest.param("Transfer-Encoding: chunked", "cannot be set", id="transfer-encoding"),
        pytest.param("Connection: close", "cannot be set", id="connection"),
        pytest.param("Accept-Encoding: br", "cannot be set", id="accept-encoding"),
        pytest.param("Proxy-Authorization: Basic x", "cannot be set", id="proxy-authorization"),
    ],
)
def test_headers_that_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as raised:
        parse_header(text)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert "\r" not in str(raised.value)


def test_a_name_given_twice_is_refused() -> None:
    assert parse_headers(["X-A: 1", "X-B: 2"]) == (("X-A", "1"), ("X-B", "2"))
    with pytest.raises(ConfigError, match="given twice"):
        parse_headers(["X-A: 1", "x-a: 2"])


# -- on the wire ---------------------------------------------------------------------


class Recorder:
    """An aiohttp.web server in a thread of its own (the CLI runs its own loop), keeping
    the headers of every request by path."""

    def __init__(self) -> None:
        self.seen: dict[str, list[dict[str, str]]] = {"delivery": [], "token": []}
        self.url = ""

    async def delivery(self, request: web.Request) -> web.Response:
        self.seen["delivery"].append(dict(request.headers))
        return web.json_response({"status": "OK", "placements": []})

    async def token(self, request: web.Request) -> web.Response:
        self.seen["token"].append(dict(request.headers))
        return web.json_response({"access_token": "tok", "token_type": "Bearer", "expires_in": 900})


@contextmanager
def recording_server() -> Iterator[Recorder]:
    recorder = Recorder()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/delivery/retailmedia", recorder.delivery)
        app.router.add_post("/oauth2/token", recorder.token)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        recorder.url = f"http://127.0.0.1:{port}"
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield recorder
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def _events(write_jsonl: Callable[..., Path]) -> Path:
    base = {
        "criteo-partner-id": 1,
        "retailer-visitor-id": "v",
        "event-type": "viewHome",
        "page-id": "viewHome_API_desktop",
    }
    rows = [{**base, "id": f"e{i}"} for i in range(20)]
    rows.append(
        {
            **base,
            "id": "own",
            "user-agent": "Mozilla/5.0",
            "referer": "https://r.example/",
            "ip": "203.0.113.7",
        }
    )
    return write_jsonl(rows)


HEADERS = [
    "--header",
    "X-Gateway: staging",
    "--header",
    "user-agent: gateway-ua",
    "--header",
    "Referer: https://gw.example/",
    "--header",
    "X-Forwarded-For: 198.51.100.1",
]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(["--http-client", "http1"], id="http1"),
        pytest.param(["--http-client", "session"], id="session"),
        pytest.param(["--workers", "2"], id="workers"),
    ],
)
def test_every_delivery_call_carries_them_and_an_events_own_win(
    extra: list[str],
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ADBATCH_CLIENT_SECRET", "s")
    out = tmp_path / "out.jsonl"
    with recording_server() as server:
        code = main(
            [
                "run",
                "--no-progress",
                *extra,
                *HEADERS,
                "-o",
                str(out),
                "--endpoint",
                f"{server.url}/delivery/retailmedia",
                "--client-id",
                "c",
                "--token-url",
                f"{server.url}/oauth2/token",
                str(_events(write_jsonl)),
            ]
        )
    assert code == 0, capsys.readouterr().err
    calls = server.seen["delivery"]
    assert len(calls) == len(read_records(out)) == 21
    assert all(c["X-Gateway"] == "staging" for c in calls)
    own = [c for c in calls if c["User-Agent"] == "Mozilla/5.0"]
    assert len(own) == 1
    assert own[0]["Referer"] == "https://r.example/"
    assert own[0]["X-Forwarded-For"] == "203.0.113.7"
    others = [c for c in calls if c is not own[0]]
    assert {c["User-Agent"] for c in others} == {"gateway-ua"}
    assert {c["Referer"] for c in others} == {"https://gw.example/"}
    assert {c["X-Forwarded-For"] for c in others} == {"198.51.100.1"}
    # Token calls are not delivery calls.
    assert server.seen["token"]
    assert not any("X-Gateway" in c for c in server.seen["token"])


def test_dry_run_shows_them_and_the_config_file_takes_a_list(
    write_jsonl: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "adbatch.toml"
    config.write_text('header = ["X-Gateway: staging", "X-Team: ads"]\n')
    out = tmp_path / "out.jsonl"
    code = main(
        [
            "run",
            "--dry-run",
            "--config",
            str(config),
            "--token",
            "t",
            "-o",
            str(out),
            "--endpoint",
            "https://127.0.0.1:1/d",
            str(_events(write_jsonl)),
        ]
    )
    assert code == 0, capsys.readouterr().err
    shown = [r["response"]["headers"] for r in read_records(out)]
    assert shown[0] == {
        "User-Agent": shown[0]["User-Agent"],
        "X-Gateway": "staging",
        "X-Team": "ads",
        "Authorization": "Bearer [redacted]",
    }
    assert shown[-1]["User-Agent"] == "Mozilla/5.0"


@pytest.mark.parametrize(
    ("args", "toml", "message"),
    [
        pytest.param(["--header", "Host: x"], None, "--header Host: this header is", id="host"),
        pytest.param(
            ["--header", "Authorization: Bearer x"],
            None,
            "--header Authorization",
            id="authorization",
        ),
        pytest.param(
            [], 'header = ["X-A: 1\\r\\nX-B: 2"]', "control character (U+000D)", id="toml-crlf"
        ),
        pytest.param(
            [], "header = [1]", "header: expected a string or an array", id="toml-not-text"
        ),
        pytest.param(["--header", "X-A 1"], None, "no colon", id="no-colon"),
        pytest.param(
            ["--header", "User-Agent: a", "--user-agent", "b"],
            None,
            "give --user-agent or --header 'User-Agent: ...', not both",
            id="ua-twice",
        ),
        pytest.param(["--header", "X-A: 1", "--header", "X-A: 2"], None, "given twice", id="twice"),
    ],
)
def test_bad_headers_are_exit_2_in_one_line(
    args: list[str],
    toml: str | None,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml + "\n")
        args = [*args, "--config", str(tmp_path / "c.toml")]
    code = main(["run", "--dry-run", "--token", "t", *args, "-"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert message in err
