"""Secrets in every spelling, through the whole CLI (issue 12, item 6).

A delivery server on 127.0.0.1 echoes the caller's token, and the client credentials'
Basic form, JSON-escaped, percent-encoded and base64 in its answers (JSON bodies, text
bodies, error messages); the output, stderr and --summary must hold no spelling of the
token or the client secret, and every record must still be JSON. Both HTTP clients,
--workers 2. Then the token endpoint's side: a token that no header can carry is a
refusal (exit 3, never sent), and an endpoint that echoes the form body in its error
does not put the percent-encoded client secret in the exit-3 message.
"""

from __future__ import annotations

import base64
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import anyio
import orjson
import pytest
from aiohttp import web
from conftest import read_records

from engine.cli.main import main

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,  # end to end: real servers and CLI runs, seconds in all (CI runs -m slow)
]

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID = "echo-client"
SECRET = "s3cr+t/=&é"  # characters that JSON and percent-encoding both spell differently
ISSUED = "iss/ued+Tok=en~A.b_c-0123"
STATIC = "st/at+ic=Tok~en.9_x-42"
EVENT = {
    "criteo-partner-id": 12345,
    "retailer-visitor-id": "rv-1",
    "event-type": "viewHome",
}


def _u(text: str, upper: bool = False) -> str:
    return "".join(f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}" for c in text)


def _lower_hex(text: str) -> str:
    return re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), text)


#: Every spelling a server may echo a credential in.
SPELL: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "json_slash": lambda s: s.replace("/", "\\/"),
    "json_u": _u,
    "json_u_upper": lambda s: _u(s, upper=True),
    "json_mixed": lambda s: "".join(_u(c) if i % 2 else c for i, c in enumerate(s)),
    "percent": lambda s: quote(s, safe=""),
    "percent_lower": lambda s: _lower_hex(quote(s, safe="")),
    "form": lambda s: quote_plus(s, safe=""),
}


def _basic(client_id: str, secret: str) -> list[str]:
    raw = f"{client_id}:{secret}".encode()
    forms = [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]
    return forms + [f.rstrip("=") for f in forms]


def _forbidden(*secrets: str) -> set[str]:
    """Every spelling of `secrets` (with the client secret, of its Basic form too)."""
    texts = [*secrets, *(_basic(CLIENT_ID, SECRET) if SECRET in secrets else ())]
    return {spell(t) for t in texts for spell in SPELL.values()}


def _json_string(text: str) -> bytes:
    """`text` inside a JSON string as a server wrote it (its escapes are kept)."""
    return b'"' + text.encode() + b'"'


@dataclass
class Echo:
    """A delivery host and token endpoint that echo credentials back."""

    url: str = ""
    delivery_calls: list[str] = field(default_factory=list)
    issue: str = ISSUED
    token_error: bytes | None = None  # answered (401) by the token endpoint instead

    async def token(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.token_error is not None:
            error = self.token_error.replace(b"{form}", body)
            return web.Response(status=401, body=error, content_type="text/plain")
        form = await request.post()
        if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, SECRET):
            return web.json_response({"error": "invalid_client"}, status=401)
        return web.json_response(
            {"access_token": self.issue, "token_type": "Bearer", "expires_in": 900}
        )

    async def delivery(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.delivery_calls.append(auth)
        token = auth.removeprefix("Bearer ")
        spelled = {name: spell(token) for name, spell in SPELL.items()}
        basic = _basic(CLIENT_ID, SECRET)[0]
        secret = {name: spell(SECRET) for name, spell in SPELL.items()}
        kind = request.query.get("page-id", "")
        if kind == "text":  # not JSON: the record holds it as a JSON string
            text = " ".join([*spelled.values(), basic, *secret.values(), f"Basic {basic}"])
            return web.Response(body=text.encode(), content_type="text/plain")
        if kind == "error":  # the server's message lands in the record's `error`
            message = f"bad token {spelled['json_u']} / {spelled['percent']} / {basic}"
            return web.Response(status=400, body=b'{"message":' + _json_string(message) + b"}")
        members = [
            b'"' + name.encode() + b'":' + _json_string(value)
            for name, value in (*spelled.items(), ("basic", basic))
        ]
        members += [b'"secret_' + n.encode() + b'":' + _json_string(v) for n, v in secret.items()]
        return web.Response(
            body=b'{"status":"OK",' + b",".join(members) + b"}",
            content_type="application/json",
        )


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    state = Echo()
    app = web.Application()
    app.router.add_post("/oauth2/token", state.token)
    app.router.add_get("/delivery", state.delivery)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def _cli(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ADBATCH_")}
    full.update(env, PYTHONPATH=str(ROOT))
    proc = await anyio.run_process(
        [sys.executable, "-m", "engine", "run", "--no-progress", *args],
        cwd=cwd,
        env=full,
        check=False,
    )
    assert proc.returncode is not None
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def _events(path: Path) -> Path:
    kinds = ["json", "text", "error"] * 3
    path.write_bytes(
        b"".join(
            orjson.dumps({**EVENT, "id": f"e{i}", "page-id": k}) + b"\n"
            for i, k in enumerate(kinds)
        )
    )
    return path


@pytest.mark.parametrize(
    ("auth", "client", "workers"),
    [
        pytest.param("client", "http1", "1", id="client-http1"),
        pytest.param("client", "session", "1", id="client-session"),
        pytest.param("client", "http1", "2", id="client-http1-workers"),
        pytest.param("client", "session", "2", id="client-session-workers"),
        pytest.param("static", "http1", "1", id="static-http1"),
        pytest.param("static", "session", "2", id="static-session-workers"),
    ],
)
async def test_no_spelling_of_a_secret_reaches_output_stderr_or_summary(
    echo: Echo, tmp_path: Path, auth: str, client: str, workers: str
) -> None:
    events, out, summary = (
        _events(tmp_path / "in.jsonl"),
        tmp_path / "out.jsonl",
        tmp_path / "s.json",
    )
    if auth == "client":
        env = {"ADBATCH_CLIENT_ID": CLIENT_ID, "ADBATCH_CLIENT_SECRET": SECRET}
        token = ISSUED
    else:
        env, token = {"ADBATCH_TOKEN": STATIC}, STATIC
    args = ["--endpoint", f"{echo.url}/delivery", "--token-url", f"{echo.url}/oauth2/token"]
    args += ["--http-client", client, "--workers", workers, "--summary", str(summary)]
    code, err = await _cli(*args, str(events), "-o", str(out), cwd=tmp_path, env=env)

    assert code == 1, err  # the "error" events failed (HTTP 400)
    assert echo.delivery_calls.count(f"Bearer {token}") == 9  # the server did echo it
    records = read_records(out)  # every line still JSON
    assert sorted(r["seq"] for r in records) == list(range(9))
    errors = [r["error"] for r in records if r["error"]]
    assert len(errors) == 3
    assert all(e.startswith("HTTP 400: bad token [redacted]") for e in errors)
    texts = {"output": out.read_text(), "stderr": err, "summary": summary.read_text()}
    for name, text in texts.items():
        # A static token's run does not know the client secret the server also echoes.
        for spelled in _forbidden(token, SECRET) if auth == "client" else _forbidden(token):
            assert spelled not in text, f"{name} holds {spelled!r}"
    assert "[redacted]" in texts["output"]


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_token_no_header_can_carry_is_a_refusal_never_sent(
    echo: Echo, tmp_path: Path, workers: str
) -> None:
    echo.issue = "abc\r\nX: y"
    events, out = _events(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    env = {"ADBATCH_CLIENT_ID": CLIENT_ID, "ADBATCH_CLIENT_SECRET": SECRET}
    args = ["--endpoint", f"{echo.url}/delivery", "--token-url", f"{echo.url}/oauth2/token"]
    code, err = await _cli(
        *args, "--workers", workers, str(events), "-o", str(out), cwd=tmp_path, env=env
    )
    assert code == 3, err
    assert echo.delivery_calls == []
    assert "Traceback" not in err
    assert "refused" in err
    assert "X: y" not in err


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"{form}", id="text"),
        pytest.param(b'{"error":"invalid_client","error_description":"got {form}"}', id="json"),
    ],
)
async def test_an_echoed_form_body_puts_no_secret_in_the_exit_3_message(
    echo: Echo, tmp_path: Path, answer: bytes
) -> None:
    echo.token_error = answer
    events, out = _events(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    env = {"ADBATCH_CLIENT_ID": CLIENT_ID, "ADBATCH_CLIENT_SECRET": SECRET}
    args = ["--endpoint", f"{echo.url}/delivery", "--token-url", f"{echo.url}/oauth2/token"]
    code, err = await _cli(*args, str(events), "-o", str(out), cwd=tmp_path, env=env)
    assert code == 3, err
    assert echo.delivery_calls == []
    assert "client_secret=[redacted]" in err  # the echo was there, and redacted
    for spelled in _forbidden(SECRET):
        assert spelled not in err, spelled


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("abc\r\nX: y", id="crlf"),
        pytest.param("abc\x00def", id="nul"),
        pytest.param("abc\x1bdef", id="esc"),
        pytest.param("tökén-1234", id="latin-1"),
        pytest.param("tok\u20acn-1234", id="not-latin-1"),
    ],
)
@pytest.mark.parametrize("how", ["option", "file", "env"])
def test_a_static_token_no_header_can_carry_is_exit_2(
    token: str,
    how: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("ADBATCH_TOKEN", raising=False)
    argv = ["run", "--endpoint", "http://127.0.0.1:9/delivery", "x.jsonl"]
    if how == "option":
        argv += ["--token", token]
    elif how == "file":
        (tmp_path / "token").write_text(token + "\n", encoding="utf-8")
        argv += ["--token-file", str(tmp_path / "token")]
    elif "\x00" in token:
        pytest.skip("no environment variable can hold a NUL")
    else:
        monkeypatch.setenv("ADBATCH_TOKEN", token)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "the static token" in err
    assert token.strip() not in err
    assert "X: y" not in err
