"""aiohttp.web handlers of the mock delivery host and OAuth2 token endpoint.

Rules:
- The delivery handler is the benchmarks' server: no logging, no access log, no
  per-request allocation beyond what the answer needs; recording is opt-in.
- Order on a delivery call: count -> record -> auth (401) -> fault -> latency ->
  parameter check (400) -> 200.
- Secrets are compared, never logged or echoed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web

from .bodies import UNAUTHORIZED, delivery_body, error_body, token_body, token_error_body
from .params import problems
from .state import MockConfig, MockState, RecordedRequest, TokenCheck

__all__ = ["DELIVERY_PATH", "STATE_KEY", "TOKEN_PATH", "make_app"]

DELIVERY_PATH = "/delivery/retailmedia"
TOKEN_PATH = "/oauth2/token"
STATE_KEY: web.AppKey[MockState] = web.AppKey("adbatch_mock_state", MockState)

_JSON = "application/json"
_RECORDED_HEADERS = ("User-Agent", "X-Forwarded-For", "Referer", "Authorization")
_UNAVAILABLE = token_error_body("temporarily_unavailable")
_BAD_GRANT = token_error_body("unsupported_grant_type")
_BAD_CLIENT = token_error_body("invalid_client", "Client authentication failed")
_FAULT_500 = b'{"status":"Error","messages":["Internal server error"]}'
_FAULT_503 = b'{"status":"Error","messages":["Service unavailable"]}'
_FAULT_429 = b'{"status":"Error","messages":["Too many requests"]}'


def _answer(state: MockState, status: int, body: bytes, **headers: str) -> web.Response:
    state.status_counts[status] += 1
    return web.Response(status=status, body=body, content_type=_JSON, headers=headers or None)


def _record(state: MockState, request: web.Request) -> None:
    raw = request.rel_url.raw_query_string
    hdrs = request.headers
    state.requests.append(
        RecordedRequest(
            path=request.path,
            query=tuple(parse_qsl(raw, keep_blank_values=True)),
            raw_query=raw,
            headers={k: hdrs[k] for k in _RECORDED_HEADERS if k in hdrs},
            received_at=time.time(),
        )
    )


async def _delivery(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    config = state.config
    state.delivery_requests += 1
    if config.record_requests:
        _record(state, request)

    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    check = state.check_token(token.strip()) if scheme.lower() == "bearer" else TokenCheck.INVALID
    if check is not TokenCheck.OK:
        if check is TokenCheck.EXPIRED:
            state.expired_token_uses += 1
        state.unauthorized += 1
        return _answer(state, 401, UNAUTHORIZED)

    if config.any_faults:
        fault = state.draw_fault(request.rel_url.raw_query_string)
        if fault is not None:
            state.faults_injected[fault] += 1
            if fault == "drop":
                # Abort the TCP connection without a byte of answer; the client
                # sees a disconnect. aiohttp then fails to write the dummy answer
                # below with a ConnectionError, which it swallows quietly.
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=500)
            if fault == "fail_500":
                return _answer(state, 500, _FAULT_500)
            if fault == "fail_503":
                return _answer(state, 503, _FAULT_503, **{"Retry-After": config.retry_after})
            if fault == "fail_429":
                return _answer(state, 429, _FAULT_429, **{"Retry-After": config.retry_after})
            await asyncio.sleep(config.slow_seconds)  # "slow", then a normal answer

    if config.latency or config.latency_jitter:
        await asyncio.sleep(state.delay())

    query = request.query
    messages = problems(query)
    if messages:
        return _answer(state, 400, error_body(messages))
    if config.fixed_body is not None:
        return _answer(state, 200, config.fixed_body)
    return _answer(state, 200, delivery_body(tuple(query.items())))


def _client_credentials(request: web.Request, form: dict[str, str]) -> tuple[str, str] | None:
    if "client_id" in form or "client_secret" in form:
        return form.get("client_id", ""), form.get("client_secret", "")
    header = request.headers.get("Authorization", "")
    if header[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (ValueError, binascii.Error):
            return None
        client_id, sep, secret = decoded.partition(":")
        return (client_id, secret) if sep else None
    return None


def _known_client(config: MockConfig, creds: tuple[str, str]) -> bool:
    client_id, secret = creds
    # RFC 6749 2.3.1 says Basic credentials are form-encoded first; accept both.
    candidates = {(client_id, secret), (unquote_plus(client_id), unquote_plus(secret))}
    return any(
        hmac.compare_digest(cid.encode(), known_id.encode())
        and hmac.compare_digest(sec.encode(), known_secret.encode())
        for cid, sec in candidates
        for known_id, known_secret in config.clients
    )


async def _token(request: web.Request) -> web.Response:
    answer = await _token_answer(request)
    latency = request.app[STATE_KEY].config.token_latency
    if latency:  # after issuing: the token's life has begun while its answer travels
        await asyncio.sleep(latency)
    return answer


async def _token_answer(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    config = state.config
    state.token_requests += 1
    state.token_request_times.append(time.monotonic())
    if config.token_down or (
        config.token_fail_every > 0 and state.token_requests % config.token_fail_every == 0
    ):
        state.token_failures += 1
        return web.Response(status=503, body=_UNAVAILABLE, content_type=_JSON)

    post = await request.post()
    form = {k: v for k, v in post.items() if isinstance(v, str)}
    if form.get("grant_type") != "client_credentials":
        return web.Response(status=400, body=_BAD_GRANT, content_type=_JSON)
    creds = _client_credentials(request, form)
    if creds is None or not _known_client(config, creds):
        return web.Response(
            status=401,
            body=_BAD_CLIENT,
            content_type=_JSON,
            headers={"WWW-Authenticate": 'Basic realm="oauth2"'},
        )
    return web.Response(
        status=200,
        body=token_body(state.issue_token(), config.token_lifetime),
        content_type=_JSON,
        headers={"Cache-Control": "no-store"},
    )


def make_app(config: MockConfig | None = None) -> web.Application:
    """A fresh mock app; its ``MockState`` is at ``app[STATE_KEY]``."""
    app = web.Application()
    app[STATE_KEY] = MockState(config=config or MockConfig())
    app.router.add_get(DELIVERY_PATH, _delivery)
    app.router.add_post(TOKEN_PATH, _token)
    return app
