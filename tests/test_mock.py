"""The embedded mock, tested through aiohttp's client against the real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from base64 import b64encode
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from yarl import URL

from engine.mock import (
    ALWAYS_REQUIRED,
    REQUIRED_BY_TYPE,
    STATE_KEY,
    MockConfig,
    MockHandle,
    make_app,
    running_mock,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
AUTH = {"Authorization": "Bearer mock-token"}
RESERVED = {"id", "timestamp", "user-agent", "referer", "ip"}

#: A valid value for every parameter any event type requires.
VALUES = {
    "criteo-partner-id": "12345",
    "retailer-visitor-id": "rv-1",
    "keywords": "jeans",
    "category": "123>4567>89012",
    "item": "sku-1",
    "price": "9.99",
    "quantity": "1",
    "page-uid": "pu-1",
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


def params_for(event_type: str, **extra: str) -> dict[str, str]:
    names = ALWAYS_REQUIRED + REQUIRED_BY_TYPE.get(event_type, ())
    params = {n: VALUES.get(n, "") for n in names}
    params["event-type"] = event_type
    params["page-id"] = f"{event_type}_API_desktop"
    params.update(extra)
    return params


def url_of(mock: MockHandle, params: Mapping[str, str]) -> str:
    return f"{mock.delivery_url}?{urlencode(params)}"


async def get(
    session: aiohttp.ClientSession,
    url: str | URL,
    headers: Mapping[str, str] | None = AUTH,
) -> tuple[int, bytes, Mapping[str, str]]:
    async with session.get(url, headers=headers) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def fetch_token(
    session: aiohttp.ClientSession,
    mock: MockHandle,
    data: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, dict[str, Any]]:
    if data is None:
        data = {
            "grant_type": "client_credentials",
            "client_id": "mock-client",
            "client_secret": "mock-secret",
        }
    async with session.post(mock.token_url, data=data, **kwargs) as resp:
        body: dict[str, Any] = orjson.loads(await resp.read())
        return resp.status, body


# --- delivery: auth -----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Bearer nope"}, id="bad-token"),
        pytest.param({"Authorization": "Basic mock-token"}, id="wrong-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-token"),
    ],
)
async def test_delivery_rejects_missing_or_bad_token(
    session: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    async with running_mock() as mock:
        status, body, hdrs = await get(session, url_of(mock, params_for("viewHome")), headers)
        assert status == 401
        assert body == b'{"Status Message":"Unauthorized"}'
        assert hdrs["Content-Type"].startswith("application/json")
        assert mock.state.unauthorized == 1
        assert mock.state.status_counts[401] == 1


# --- delivery: the 200 body ---------------------------------------------------------


def check_shape(body: dict[str, Any], page_id: str) -> None:
    assert body["status"] == "OK"
    assert isinstance(body["page-uid"], str)
    assert body["page-uid"]
    assert body["onLoadBeacon"].startswith("//b.us5.us.criteo.com/rm?")
    assert 1 <= len(body["placements"]) <= 2
    for placement in body["placements"]:
        ((key, ads),) = placement.items()
        assert key.startswith(page_id + "-")
        for ad in ads:
            assert {"format", "products", "rendering"} <= ad.keys()
            assert 1 <= len(ad["products"]) <= 4
            for product in ad["products"]:
                assert isinstance(json.loads(product["RenderingAttributes"]), dict)
                for beacon in (
                    "OnLoadBeacon",
                    "OnViewBeacon",
                    "OnClickBeacon",
                    "OnBasketChangeBeacon",
                    "OnWishlistBeacon",
                ):
                    assert product[beacon] == "" or product[beacon].startswith("//")
                for name in ("ProductId", "ParentSKU", "ProductName", "Image", "Price"):
                    assert product[name]
                assert "ComparePrice" in product
                assert "Rating" in product
                assert "ProductPage" in product


@pytest.mark.anyio
async def test_delivery_ok_shape_with_static_token(session: aiohttp.ClientSession) -> None:
    async with running_mock() as mock:
        params = params_for("viewItem", item="sku-42|sku-43")
        status, raw, hdrs = await get(session, url_of(mock, params))
        assert status == 200
        assert hdrs["Content-Type"].startswith("application/json")
        body = orjson.loads(raw)
        check_shape(body, "viewItem_API_desktop")
        first_ad = next(iter(body["placements"][0].values()))[0]
        assert first_ad["products"][0]["ProductId"] == "sku-42"
        assert mock.state.delivery_requests == 1
        assert mock.state.status_counts[200] == 1


@pytest.mark.anyio
async def test_delivery_body_is_deterministic_per_query(session: aiohttp.ClientSession) -> None:
    async with running_mock() as mock:
        params = params_for("viewHome")
        _, one, _ = await get(session, url_of(mock, params))
        # Same pairs in another order: same answer.
        _, again, _ = await get(session, url_of(mock, dict(reversed(params.items()))))
        _, other, _ = await get(session, url_of(mock, {**params, "retailer-visitor-id": "rv-2"}))
        assert one == again
        assert one != other
        assert orjson.loads(one)["page-uid"] != orjson.loads(other)["page-uid"]


@pytest.mark.anyio
async def test_delivery_echoes_page_uid(session: aiohttp.ClientSession) -> None:
    async with running_mock() as mock:
        _, raw, _ = await get(session, url_of(mock, params_for("viewHome", **{"page-uid": "pu-9"})))
        assert orjson.loads(raw)["page-uid"] == "pu-9"


@pytest.mark.anyio
async def test_unknown_event_type_needs_only_the_four(session: aiohttp.ClientSession) -> None:
    async with running_mock() as mock:
        status, raw, _ = await get(session, url_of(mock, params_for("viewSomethingNew")))
        assert status == 200
        check_shape(orjson.loads(raw), "viewSomethingNew_API_desktop")


@pytest.mark.anyio
async def test_fixed_body(session: aiohttp.ClientSession) -> None:
    async with running_mock(MockConfig(fixed_body=b'{"status":"OK"}')) as mock:
        status, raw, _ = await get(session, url_of(mock, params_for("viewHome")))
        assert (status, raw) == (200, b'{"status":"OK"}')


# --- delivery: 400 --------------------------------------------------------------------

MISSING_CASES = [
    pytest.param(event_type, name, id=f"{event_type}-{name}")
    for event_type, extra in REQUIRED_BY_TYPE.items()
    for name in (*ALWAYS_REQUIRED, *extra)
    if name != "event-type"
] + [pytest.param("viewHome", "event-type", id="event-type")]


@pytest.mark.anyio
@pytest.mark.parametrize(("event_type", "missing"), MISSING_CASES)
@pytest.mark.parametrize("how", ["absent", "empty"])
async def test_missing_required_parameter_is_400(
    session: aiohttp.ClientSession, event_type: str, missing: str, how: str
) -> None:
    async with running_mock() as mock:
        params = params_for(event_type)
        if how == "absent":
            del params[missing]
        else:
            params[missing] = ""
        status, raw, _ = await get(session, url_of(mock, params))
        assert status == 400
        assert orjson.loads(raw) == {
            "status": "Error",
            "messages": [f"Missing required parameter {missing}"],
        }


@pytest.mark.anyio
async def test_valid_params_per_event_type_are_200(session: aiohttp.ClientSession) -> None:
    async with running_mock() as mock:
        for event_type in REQUIRED_BY_TYPE:
            status, _, _ = await get(session, url_of(mock, params_for(event_type)))
            assert status == 200, event_type


@pytest.mark.anyio
@pytest.mark.parametrize("partner", ["abc", "12.5", "-3", "\uff11\uff12"])
async def test_partner_id_must_be_an_integer(session: aiohttp.ClientSession, partner: str) -> None:
    async with running_mock() as mock:
        params = params_for("viewHome", **{"criteo-partner-id": partner})
        status, raw, _ = await get(session, url_of(mock, params))
        assert status == 400
        body = orjson.loads(raw)
        assert body["status"] == "Error"
        assert "criteo-partner-id" in body["messages"][0]


# --- token endpoint -------------------------------------------------------------------


@pytest.mark.anyio
async def test_token_success_and_use(session: aiohttp.ClientSession) -> None:
    async with running_mock() as mock:
        status, body = await fetch_token(session, mock)
        assert status == 200
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 900
        assert len(body["access_token"]) >= 40
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        status, _, _ = await get(session, url_of(mock, params_for("viewHome")), headers)
        assert status == 200
        assert mock.state.tokens_issued == 1
        assert mock.state.issued_tokens == 1
        assert mock.state.token_requests == 1
        assert len(mock.state.token_request_times) == 1


@pytest.mark.anyio
async def test_token_accepts_basic_auth(session: aiohttp.ClientSession) -> None:
    async with running_mock() as mock:
        status, body = await fetch_token(
            session,
            mock,
            {"grant_type": "client_credentials"},
            headers={"Authorization": "Basic " + b64encode(b"mock-client:mock-secret").decode()},
        )
        assert status == 200
        assert body["access_token"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        pytest.param(
            {"grant_type": "client_credentials", "client_id": "mock-client", "client_secret": "x"},
            401,
            "invalid_client",
            id="wrong-secret",
        ),
        pytest.param(
            {
                "grant_type": "client_credentials",
                "client_id": "who",
                "client_secret": "mock-secret",
            },
            401,
            "invalid_client",
            id="unknown-client",
        ),
        pytest.param({"grant_type": "client_credentials"}, 401, "invalid_client", id="no-creds"),
        pytest.param(
            {"grant_type": "password", "client_id": "mock-client", "client_secret": "mock-secret"},
            400,
            "unsupported_grant_type",
            id="wrong-grant",
        ),
    ],
)
async def test_token_errors(
    session: aiohttp.ClientSession, data: dict[str, str], status: int, error: str
) -> None:
    async with running_mock() as mock:
        got_status, body = await fetch_token(session, mock, data)
        assert got_status == status
        assert body["error"] == error
        assert "mock-secret" not in json.dumps(body)
        assert mock.state.tokens_issued == 0


@pytest.mark.anyio
async def test_token_fail_every(session: aiohttp.ClientSession) -> None:
    async with running_mock(MockConfig(token_fail_every=3)) as mock:
        statuses = [(await fetch_token(session, mock))[0] for _ in range(7)]
        assert statuses == [200, 200, 503, 200, 200, 503, 200]
        assert mock.state.token_failures == 2
        assert mock.state.tokens_issued == 5
        _, body = await fetch_token(session, mock)  # the 8th
        assert body["access_token"]


@pytest.mark.anyio
async def test_token_down(session: aiohttp.ClientSession) -> None:
    async with running_mock(MockConfig(token_down=True)) as mock:
        status, body = await fetch_token(session, mock)
        assert (status, body) == (503, {"error": "temporarily_unavailable"})
        assert mock.state.token_failures == 1


@pytest.mark.anyio
async def test_issued_token_expires(session: aiohttp.ClientSession) -> None:
    async with running_mock(MockConfig(token_lifetime=0.2)) as mock:
        _, body = await fetch_token(session, mock)
        assert body["expires_in"] == 0.2
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        url = url_of(mock, params_for("viewHome"))
        assert (await get(session, url, headers))[0] == 200
        await asyncio.sleep(0.25)
        assert (await get(session, url, headers))[0] == 401
        assert mock.state.expired_token_uses == 1
        assert mock.state.unauthorized == 1
        # The static token never expires.
        assert (await get(session, url))[0] == 200


@pytest.mark.anyio
async def test_revoke_all_tokens(session: aiohttp.ClientSession) -> None:
    async with running_mock() as mock:
        _, before = await fetch_token(session, mock)
        old = {"Authorization": f"Bearer {before['access_token']}"}
        url = url_of(mock, params_for("viewHome"))
        assert (await get(session, url, old))[0] == 200

        mock.state.revoke_all_tokens()
        assert mock.state.issued_tokens == 0
        assert (await get(session, url, old))[0] == 401
        assert (await get(session, url))[0] == 401  # static, revoked too
        assert mock.state.expired_token_uses == 0

        _, after = await fetch_token(session, mock)
        new = {"Authorization": f"Bearer {after['access_token']}"}
        assert (await get(session, url, new))[0] == 200
        assert (await get(session, url))[0] == 401  # static stays revoked
        assert mock.state.tokens_issued == 2


# --- delivery: faults -----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "status"),
    [
        pytest.param("fail_429", 429, id="429"),
        pytest.param("fail_503", 503, id="503"),
        pytest.param("fail_500", 500, id="500"),
    ],
)
async def test_fault_then_normal_answer_on_repeat(
    session: aiohttp.ClientSession, fault: str, status: int
) -> None:
    config = MockConfig(**{fault: 1.0}, retry_after="2")  # type: ignore[arg-type]
    async with running_mock(config) as mock:
        url = url_of(mock, params_for("viewHome"))
        got, _, headers = await get(session, url)
        assert got == status
        if status in (429, 503):
            assert headers["Retry-After"] == "2"
        else:
            assert "Retry-After" not in headers
        assert (await get(session, url))[0] == 200  # faults_first_attempt_only
        other = url_of(mock, params_for("viewHome", **{"retailer-visitor-id": "rv-2"}))
        assert (await get(session, other))[0] == status
        assert mock.state.faults_injected[fault] == 2


@pytest.mark.anyio
async def test_faults_on_every_attempt_when_asked(session: aiohttp.ClientSession) -> None:
    config = MockConfig(fail_429=1.0, faults_first_attempt_only=False)
    async with running_mock(config) as mock:
        url = url_of(mock, params_for("viewHome"))
        assert [(await get(session, url))[0] for _ in range(3)] == [429, 429, 429]


@pytest.mark.anyio
async def test_auth_comes_before_faults(session: aiohttp.ClientSession) -> None:
    async with running_mock(MockConfig(fail_500=1.0)) as mock:
        assert (await get(session, url_of(mock, params_for("viewHome")), {}))[0] == 401
        assert not mock.state.faults_injected


@pytest.mark.anyio
async def test_drop_gives_a_connection_error(session: aiohttp.ClientSession) -> None:
    async with running_mock(MockConfig(drop=1.0, faults_first_attempt_only=False)) as mock:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await get(session, url_of(mock, params_for("viewHome")))
        assert mock.state.faults_injected["drop"] >= 1
        assert not mock.state.status_counts


@pytest.mark.anyio
async def test_drop_once_is_hidden_by_aiohttp_retry(session: aiohttp.ClientSession) -> None:
    # aiohttp's client silently retries an idempotent request once after a
    # disconnect, so a single dropped attempt shows up as two server requests.
    async with running_mock(MockConfig(drop=1.0)) as mock:
        assert (await get(session, url_of(mock, params_for("viewHome"))))[0] == 200
        assert mock.state.delivery_requests == 2
        assert mock.state.faults_injected["drop"] == 1


@pytest.mark.anyio
async def test_slow_exceeds_client_timeout(session: aiohttp.ClientSession) -> None:
    async with running_mock(MockConfig(slow=1.0, slow_seconds=1.0)) as mock:
        timeout = aiohttp.ClientTimeout(total=0.1)
        with pytest.raises(asyncio.TimeoutError):
            async with session.get(
                url_of(mock, params_for("viewHome")), headers=AUTH, timeout=timeout
            ) as resp:
                await resp.read()
        assert mock.state.faults_injected["slow"] == 1


@pytest.mark.anyio
async def test_fault_draws_follow_the_seed(session: aiohttp.ClientSession) -> None:
    async def statuses(seed: int) -> list[int]:
        async with running_mock(MockConfig(fail_500=0.5, seed=seed)) as mock:
            return [
                (await get(session, url_of(mock, params_for("viewHome", x=str(i)))))[0]
                for i in range(20)
            ]

    first = await statuses(1)
    assert first == await statuses(1)
    assert {200, 500} == set(first)


@pytest.mark.anyio
async def test_latency(session: aiohttp.ClientSession) -> None:
    async with running_mock(MockConfig(latency=0.1, latency_jitter=0.05)) as mock:
        start = time.monotonic()
        assert (await get(session, url_of(mock, params_for("viewHome"))))[0] == 200
        # 0.1-0.15 s added; the upper bound only tells a delay from a hang, wide for a
        # busy shared 2-core machine (the answer itself is checked, not its speed).
        assert 0.1 <= time.monotonic() - start < 2.0


def test_config_rejects_bad_probabilities() -> None:
    with pytest.raises(ValueError, match="fail_500"):
        MockConfig(fail_500=1.5)
    with pytest.raises(ValueError, match="add up"):
        MockConfig(fail_500=0.6, drop=0.6)


# --- recording ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_record_requests_decodes_raw_query(session: aiohttp.ClientSession) -> None:
    raw = (
        "criteo-partner-id=12345&retailer-visitor-id=rv-1&event-type=viewSearchResult"
        "&page-id=viewSearchResult_API_desktop"
        "&keywords=caf%C3%A9+cr%C3%A8me&filters=(brand,eq,a%2Bb)&item=s1%7Cs2"
        "&k2=%E5%8C%97%E4%BA%AC%20x&blank="
    )
    headers = {
        **AUTH,
        "User-Agent": "Mozilla/5.0 test",
        "X-Forwarded-For": "203.0.113.7",
        "Referer": "https://shop.example/search",
    }
    async with running_mock(MockConfig(record_requests=True)) as mock:
        url = URL(f"{mock.delivery_url}?{raw}", encoded=True)
        assert (await get(session, url, headers))[0] == 200
        (rec,) = mock.state.requests
        assert rec.path == "/delivery/retailmedia"
        assert rec.raw_query == raw
        assert rec.query == (
            ("criteo-partner-id", "12345"),
            ("retailer-visitor-id", "rv-1"),
            ("event-type", "viewSearchResult"),
            ("page-id", "viewSearchResult_API_desktop"),
            ("keywords", "café crème"),
            ("filters", "(brand,eq,a+b)"),
            ("item", "s1|s2"),
            ("k2", "北京 x"),
            ("blank", ""),
        )
        assert rec.headers == headers
        assert abs(rec.received_at - time.time()) < 5


@pytest.mark.anyio
async def test_recording_is_off_by_default(session: aiohttp.ClientSession) -> None:
    async with running_mock() as mock:
        await get(session, url_of(mock, params_for("viewHome")))
        assert mock.state.requests == []


def test_make_app_stores_state() -> None:
    config = MockConfig(token_lifetime=5.0)
    app = make_app(config)
    assert app[STATE_KEY].config is config
    assert app[STATE_KEY].delivery_requests == 0


# --- examples -------------------------------------------------------------------------


def load_examples() -> list[dict[str, Any]]:
    lines = (EXAMPLES / "pageviews.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def as_text(value: Any) -> str:
    if isinstance(value, list):
        return "|".join(str(v) for v in value)
    return str(value)


def test_examples_cover_every_event_type_and_match_csv() -> None:
    events = load_examples()
    assert 30 <= len(events) <= 60
    assert {e["event-type"] for e in events} >= set(REQUIRED_BY_TYPE)
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps)
    assert 30 <= stamps[-1] - stamps[0] <= 90
    with (EXAMPLES / "pageviews.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(events)
    for event, row in zip(events, rows, strict=True):
        assert {k: v for k, v in row.items() if v != ""} == {
            k: as_text(v) for k, v in event.items()
        }


@pytest.mark.anyio
async def test_examples_are_all_valid_for_the_mock(session: aiohttp.ClientSession) -> None:
    async with running_mock() as mock:
        for event in load_examples():
            params = {k: as_text(v) for k, v in event.items() if k not in RESERVED}
            headers = {**AUTH, "User-Agent": event["user-agent"], "X-Forwarded-For": event["ip"]}
            status, raw, _ = await get(session, url_of(mock, params), headers)
            assert status == 200, (event["id"], raw)


# --- serve() --------------------------------------------------------------------------


def test_serve_prints_its_port_and_stops_quietly_on_sigint() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from engine.mock import serve; serve(port=0)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        prefix = "adbatch mock: delivery http://127.0.0.1:"
        assert line.startswith(prefix), line
        port = int(line[len(prefix) :].split("/", 1)[0])
        assert port > 0
        assert line.endswith(f"  token http://127.0.0.1:{port}/oauth2/token")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert err == ""


# --- adbatch mock: the command -------------------------------------------------------


def _adbatch(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli.main", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _start_mock(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    """`adbatch mock ARGS` in a process, and the delivery URL it printed."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("adbatch mock: delivery "):
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the mock did not start: {line!r} {err!r}")
    return proc, line.split()[3]


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--port", "99999"], "--port: expected a port 0..65535", id="port"),
        pytest.param(["--port", "http"], "--port: expected a port 0..65535", id="word"),
        pytest.param(["--host", "a b"], "--host: expected a host name", id="host"),
        pytest.param(["--p503", "1.5"], "--p503: expected a probability", id="p"),
        pytest.param(["--reset", "nan"], "--reset: expected a probability", id="nan"),
        pytest.param(["--latency", "-1"], "--latency: expected a duration", id="latency"),
        pytest.param(["--slow-seconds", "2x"], "--slow-seconds: expected a duration", id="unit"),
        pytest.param(["--p500", "0.6", "--slow", "0.6"], "add up to more than 1", id="sum-over-1"),
    ],
)
def test_mock_options_are_checked_in_one_line(args: list[str], message: str) -> None:
    done = subprocess.run(
        _adbatch("mock", *args), capture_output=True, text=True, env=_env(), timeout=30
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""


def test_mock_on_a_busy_port_is_one_line_exit_2() -> None:
    first, url = _start_mock(_adbatch("mock", "--port", "0"))
    try:
        port = URL(url).port
        done = subprocess.run(
            _adbatch("mock", "--port", str(port)),
            capture_output=True,
            text=True,
            env=_env(),
            timeout=30,
        )
    finally:
        _stop(first)
    assert done.returncode == 2
    busy = f"adbatch: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert done.stderr == busy


@pytest.mark.parametrize(
    ("option", "status"),
    [
        pytest.param("--p500", 500, id="p500"),
        pytest.param("--p503", 503, id="p503"),
        pytest.param("--p429", 429, id="p429"),
    ],
)
@pytest.mark.anyio
async def test_mock_fault_options_answer_as_asked(
    option: str, status: int, session: aiohttp.ClientSession
) -> None:
    proc, url = _start_mock(_adbatch("mock", "--port", "0", option, "1"))
    try:
        query = urlencode(params_for("viewHome"))
        first, _, _ = await get(session, f"{url}?{query}", AUTH)
        again, _, _ = await get(session, f"{url}?{query}", AUTH)
    finally:
        _stop(proc)
    assert (first, again) == (status, 200)  # a fault on a query's first call only


@pytest.mark.anyio
async def test_mock_reset_every_call_and_token_lifetime(
    session: aiohttp.ClientSession,
) -> None:
    proc, url = _start_mock(
        _adbatch("mock", "--port", "0", "--reset", "1", "--every-call", "--token-lifetime", "7")
    )
    try:
        query = urlencode(params_for("viewHome"))
        for _ in range(2):
            with pytest.raises(aiohttp.ClientError):
                await get(session, f"{url}?{query}", AUTH)
        token_url = url.replace("/delivery/retailmedia", "/oauth2/token")
        form = {"grant_type": "client_credentials", "client_id": "mock-client"}
        form["client_secret"] = "mock-secret"
        async with session.post(token_url, data=form) as resp:
            body = await resp.json()
    finally:
        _stop(proc)
    assert body["expires_in"] == 7


@pytest.mark.slow
def test_readme_mock_commands_run_as_written(tmp_path: Path) -> None:
    """The README's load test against `adbatch mock` with faults on (the docs figure),
    on a free port instead of 8080."""
    text = (ROOT / "README.md").read_text()
    block = text.split("### The embedded mock", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = block.strip().splitlines()
    assert lines[0].startswith("adbatch mock --port 8080 ")
    assert lines[0].endswith(" &")
    assert lines[-1] == "kill %1"
    mock_argv = lines[0][: -len(" &")].split()
    mock_argv[mock_argv.index("--port") + 1] = "0"
    proc, url = _start_mock(_adbatch(*mock_argv[1:]))
    try:
        port = str(URL(url).port)
        results = []
        for line in lines[1:-1]:
            argv = shlex.split(line.replace("127.0.0.1:8080", f"127.0.0.1:{port}"), comments=True)
            assert argv[0] == "adbatch"
            argv = [str(ROOT / a) if a.startswith("examples/") else a for a in argv[1:]]
            results.append(
                subprocess.run(
                    _adbatch(*argv), capture_output=True, text=True, env=_env(), cwd=tmp_path
                )
            )
    finally:
        err = _stop(proc)
    load, report = results
    assert load.returncode == 1, load.stderr  # the faults fail some calls
    assert "http_503" in load.stderr
    assert report.returncode == 0, report.stderr
    assert "503" in report.stdout
    assert (tmp_path / "report.html").stat().st_size > 0
    assert err == ""
