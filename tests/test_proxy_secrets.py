"""A proxy's credentials never reach a message, whatever the password's length; the
providers keep the tokens an answer may still echo for the redactor (engine/core/kept.py).

The proxy is tests/scripted_server.py on 127.0.0.1: a hostile one that quotes the
credentials it was sent (the password, the Proxy-Authorization value) in its status
line or its body, to the token client's requests (absolute-form for an http:// token
URL, CONNECT for an https:// one) and to the delivery calls.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import orjson
import pytest
from fake_clock import FakeClock
from scripted_server import Answer, ScriptedServer, running_server

from engine.core.proxies import Proxies, ProxyURL, refusal
from engine.core.tokenwindow import TokenFailure, TokenGrant
from engine.net.auth import Lease
from engine.net.oauth import OAuthToken
from engine.net.token_client import TokenClient

USER = "puser"
_HTTP2 = all(importlib.util.find_spec(name) is not None for name in ("httpx", "h2"))
CLIENTS = ["http1", "session", *(["http2"] if _HTTP2 else [])]
LONG, SHORT = "pRoXyPaSs42", "hunter2"
#: Nothing listens there: only the proxy answers.
TOKEN_URLS = ("http://127.0.0.2:9/oauth2/token", "https://127.0.0.2:9/oauth2/token")


def _basic(password: str) -> str:
    """The Proxy-Authorization value's base64, without its `=` padding."""
    return base64.b64encode(f"{USER}:{password}".encode()).decode().rstrip("=")


def _quotes(password: str) -> list[Answer]:
    """A proxy's answers that quote the credentials it was sent."""
    basic = _basic(password).encode()
    pw = password.encode()
    return [
        Answer(b"407", b"Bad " + pw, body=b""),
        Answer(b"407", b"Proxy Authentication Required", body=b"bad credentials " + pw),
        Answer(b"403", b"Forbidden for Basic " + basic, body=b"denied " + pw),
        Answer(b"502", b"cannot reach upstream as puser:" + pw, body=b""),
        Answer(b"502", b"Bad Gateway", body=b"upstream failed; you sent Basic " + basic),
    ]


def _leaks(text: str, password: str) -> list[str]:
    return [s for s in (password, _basic(password)) if s in text]


@pytest.fixture(scope="module")
def proxy() -> Iterator[ScriptedServer]:
    with running_server() as server:
        yield server


# -- the pure rule: a proxy's refusal never quotes its own credentials ------------------


@pytest.mark.parametrize(
    "reason",
    [
        pytest.param("Bad {pw}", id="raw"),
        pytest.param("Bad {pct}", id="percent"),
        pytest.param("you sent Basic {basic}", id="basic"),
        pytest.param("{pw} " + "x" * 90, id="before-the-cut"),
    ],
)
@pytest.mark.parametrize("password", [LONG, SHORT, "a1"])
@pytest.mark.parametrize("status", [407, 403, 502])
def test_refusal_never_quotes_the_proxy_credentials(
    reason: str, password: str, status: int
) -> None:
    via = ProxyURL("127.0.0.1", 3128, USER, password)
    pct = "".join(f"%{b:02X}" for b in password.encode())
    said = reason.format(pw=password, pct=pct, basic=_basic(password))
    _, message = refusal(via, status, said, "example.com:443")
    assert _leaks(message, password) == [], message
    assert pct not in message
    assert "[redacted]" in message


def test_refusal_of_a_proxy_without_credentials_keeps_its_words() -> None:
    _, message = refusal(ProxyURL("127.0.0.1", 3128), 407, "Proxy Authentication Required", "")
    assert message.endswith("(HTTP 407 Proxy Authentication Required); give them in the "
                            "proxy URL: http://user:password@host:port")  # fmt: skip


# -- a UTF-8 password, as each client reads the proxy's bytes -----------------------------

UTF8 = "päss€word"  # the adversarial tester's: http1 showed `pÃ¤ssâ\x82¬word`, http2 `pssword`
#: Every form the password reaches a client's text in (UTF-8, its bytes as latin-1, ASCII).
UTF8_FORMS = (UTF8, UTF8.encode().decode("latin-1"), "pssword")


@pytest.mark.parametrize("form", UTF8_FORMS, ids=["utf8", "latin1", "ascii"])
@pytest.mark.parametrize("status", [407, 403])
def test_refusal_never_quotes_a_utf8_password_in_any_reading(form: str, status: int) -> None:
    via = ProxyURL("127.0.0.1", 3128, USER, UTF8)
    _, message = refusal(via, status, f"Bad creds {USER}:{form}", "example.com:443")
    assert f"Bad creds {USER}:[redacted]" in message, message
    assert [f for f in UTF8_FORMS if f in message] == [], message


@pytest.mark.anyio
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("status", [b"407", b"403"])
async def test_each_client_s_refusal_is_redacted_of_a_utf8_password(
    proxy: ScriptedServer, client: str, status: bytes
) -> None:
    """The proxy quotes the password's UTF-8 raw in its answer to CONNECT."""
    from engine.core.query import Request
    from engine.net.transport import open_transport

    via = ProxyURL("127.0.0.1", proxy.port, USER, UTF8)
    proxy.play([Answer(status, f"Bad creds {USER}:{UTF8}".encode(), body=b"")])
    async with open_transport(
        concurrency=1, timeout=5.0, client=client, proxies=Proxies(via, via)
    ) as transport:
        response = await transport.send(Request("https://127.0.0.2:9/d", {}), "Bearer tok")
    assert proxy.served >= 1
    assert response.error is not None
    assert f"Bad creds {USER}:[redacted]" in response.error, response.error
    assert [f for f in UTF8_FORMS if f in response.error] == [], response.error


# -- the token client: every message it returns is clean ---------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("url", TOKEN_URLS, ids=["http", "https"])
@pytest.mark.parametrize("password", [LONG, SHORT])
async def test_token_client_messages_never_carry_the_proxy_credentials(
    proxy: ScriptedServer, url: str, password: str
) -> None:
    via = ProxyURL("127.0.0.1", proxy.port, USER, password)
    answers = _quotes(password)
    seen = []
    async with TokenClient(
        url, client_id="cid", client_secret="sec-ZYXWVUTS12345", timeout=5,
        proxies=Proxies(via, via),
    ) as client:  # fmt: skip
        for answer in answers:
            proxy.play([answer])
            outcome = await client.fetch()
            assert isinstance(outcome, TokenFailure), outcome
            assert proxy.served == 1  # the proxy's answer, not a network error
            seen.append(outcome.message)
    for message in seen:
        assert _leaks(message, password) == [], message
    # Each answer quoted the credentials where the message shows the proxy's words.
    assert sum("[redacted]" in m for m in seen) >= 3, seen


# -- the run: stderr and records ---------------------------------------------------------


async def _adbatch(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[int, str, str]:
    events = tmp_path / "events.jsonl"
    row = {"id": "e", "criteo-partner-id": 1, "retailer-visitor-id": "v",
           "event-type": "viewHome", "page-id": "viewHome_API_desktop"}  # fmt: skip
    events.write_bytes(orjson.dumps(row) + b"\n")
    out = tmp_path / "out.jsonl"
    clean = {k: v for k, v in os.environ.items() if not k.upper().endswith("PROXY")}
    clean = {k: v for k, v in clean.items() if not k.startswith("ADBATCH_")}
    argv = [sys.executable, "-m", "engine", "run", str(events), "-o", str(out),
            "--no-progress", "--retries", "0", *args]  # fmt: skip
    done = await anyio.run_process(argv, env=clean | env, check=False)
    records = out.read_text() if out.exists() else ""
    return done.returncode, done.stderr.decode(errors="replace"), records


@pytest.mark.anyio
@pytest.mark.slow  # one interpreter start-up each
@pytest.mark.parametrize("calls", ["token", "delivery"])
async def test_a_refusing_proxy_s_quotes_never_reach_stderr_or_records(
    proxy: ScriptedServer, tmp_path: Path, calls: str
) -> None:
    """The adversarial reproducer: `HTTP 407 Bad <password>` on stderr, through the token
    client (a long password and its Basic form) and the delivery calls (a short one)."""
    password = LONG if calls == "token" else SHORT
    proxy.play([Answer(b"407", f"Bad {password} Basic {_basic(password)}".encode(), body=b"")])
    url = f"http://{USER}:{password}@127.0.0.1:{proxy.port}"
    env = {"HTTP_PROXY": url, "HTTPS_PROXY": url}
    # https: the proxy's status line to a CONNECT is what the delivery clients quote.
    args = ["--endpoint", "https://127.0.0.2:9/delivery"]
    if calls == "token":
        env |= {"ADBATCH_CLIENT_ID": "cid", "ADBATCH_CLIENT_SECRET": "sec-ZYXWVUTS12345"}
        args += ["--token-url", "http://127.0.0.2:9/oauth2/token", "--token-wait", "2"]
    else:
        env["ADBATCH_TOKEN"] = "tok-ABCDEFGH12345"
    code, stderr, records = await _adbatch(tmp_path, *args, env=env)
    assert code == 3, stderr
    assert "refused the credentials (HTTP 407 Bad [redacted] Basic [redacted]" in stderr
    assert _leaks(stderr + records, password) == []
    assert "Traceback" not in stderr


# -- the providers keep the tokens an answer may still echo --------------------------------


class _Endpoint:
    """A token source that grants a new token at each request."""

    url = "http://127.0.0.1:9/oauth2/token"

    def __init__(self) -> None:
        self.granted: list[str] = []

    async def fetch(self) -> TokenGrant | TokenFailure:
        self.granted.append(f"token-{len(self.granted):04d}-abcdefgh")
        return TokenGrant(self.granted[-1], 900.0)


@pytest.mark.anyio
async def test_oauth_provider_keeps_each_token_while_its_calls_may_be_answered() -> None:
    endpoint = _Endpoint()
    clock = FakeClock()
    tokens = OAuthToken(endpoint, clock=clock, rng=random.Random(1), min_401_interval=0, keep=12.0)
    await tokens.start()
    for _ in range(24):  # 24 renewals within one call's --timeout: 8 kept let 17 go
        header = tokens.authorization()
        async with anyio.create_task_group() as tg:
            tg.start_soon(tokens.maintain)
            assert await tokens.refresh_after_401(header)
            tg.cancel_scope.cancel()
        clock.advance(0.25)
    assert len(endpoint.granted) == 25
    assert tokens.secrets() == tuple(endpoint.granted)
    assert tokens.authorization() == f"Bearer {endpoint.granted[-1]}"
    clock.advance(12.0 - 0.25)  # the last one replaced `keep` seconds ago goes too
    assert tokens.secrets() == (endpoint.granted[-1],)


def test_follower_keeps_each_token_while_its_calls_may_be_answered() -> None:
    from engine.net.auth import FollowerToken

    async def never(used: str | None) -> tuple[bool, Lease]:
        raise AssertionError("not asked")

    clock = FakeClock()
    follower = FollowerToken(Lease(None), never, clock=clock, keep=12.0)
    pushed = [f"token-{i:04d}-abcdefgh" for i in range(24)]
    for token in pushed:
        follower.set(Lease(f"Bearer {token}", 60.0))
        clock.advance(0.25)
    assert follower.secrets() == tuple(pushed)
    clock.advance(12.0 - 0.25 * 2)  # pushed[-3] was replaced 12 s ago, pushed[-2] since
    assert follower.secrets() == tuple(pushed[-2:])
