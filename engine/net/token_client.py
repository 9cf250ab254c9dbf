"""OAuth2 client-credentials requests over HTTP (the token side of the client's aiohttp use).

Rules:
- Its own small session and connector: a delivery pool saturated by thousands of calls
  in flight never delays a renewal, and a slow token endpoint never takes a delivery slot.
- `fetch()` never raises for a network or server failure: it returns a `TokenFailure`
  (failures are data); the provider in engine/net/oauth.py decides about retries.
- The secret goes in the form body only (Criteo's documented form; no Basic header, which
  would need aiohttp.BasicAuth).
- Every message `fetch()` returns is redacted, whatever the length of each secret, of the
  client secret, the proxy's password and Proxy-Authorization value (a proxy may quote
  them in its answer) and the tokens this client was granted: it is clean wherever it is
  printed.
- An answer is read through engine.net.bodies under `max_bytes` (TOKEN_MAX_BYTES, or
  --max-response-bytes when smaller): a larger one, or one that cannot be decoded, is a
  failed request ("unavailable"), never a crash or a held gigabyte.
"""

from __future__ import annotations

import ssl
import time
from types import TracebackType

import aiohttp
import yarl

from engine.core.kept import KeptTokens
from engine.core.proxies import DIRECT, Proxies, refusal, unreachable
from engine.core.records import ErrorKind
from engine.core.retry import parse_retry_after
from engine.core.secrets import Secrets
from engine.core.tokenwindow import TokenFailure, TokenGrant, endpoint_message, parse_token_answer
from engine.core.urls import without_credentials
from engine.net.aiohttp_words import client_error_text
from engine.net.bodies import ACCEPT_ENCODING, BodyError, read_body
from engine.net.proxy import aiohttp_proxy
from engine.net.tls import client_context, tls_failure

_POOL = 2  # one renewal at a time, plus one spare connection
DEFAULT_TOKEN_TIMEOUT = 10.0
#: A token answer is a few hundred bytes (a few KB for a JWT with many claims).
TOKEN_MAX_BYTES = 64 * 1024


class TokenClient:
    """Asks `url` for client-credentials tokens (a `TokenSource`)."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        client_secret: str,
        timeout: float = DEFAULT_TOKEN_TIMEOUT,
        verify_tls: bool = True,
        max_bytes: int = TOKEN_MAX_BYTES,
        tls: ssl.SSLContext | None = None,
        proxies: Proxies | None = None,
    ) -> None:
        self.url = url
        # The proxy the token requests go through (the proxy variables or --proxy).
        target = yarl.URL(url)
        self._via = None
        if proxies is not None and target.host is not None and target.port is not None:
            self._via = proxies.route(target.scheme, target.host, target.port)
        self._max_bytes = max_bytes
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        }
        # Whatever their length, the client secret, the proxy's credentials and the tokens
        # this client was given never reach a message (an endpoint may quote a token it
        # revoked, a proxy the credentials it refused, at any time: they are kept up to
        # engine/core/kept.py's cap, not for a --timeout).
        self._issued = KeptTokens()
        via = proxies or DIRECT
        self._secrets = Secrets(
            (client_secret, *via.secrets()),
            issued=self._issued.texts,
            min_length=1,
            basic=((client_id, client_secret), *via.basic()),
        )
        self._timeout = timeout
        # net/tls.py's: the delivery calls' CAs and client certificate
        self._tls = tls if tls is not None else client_context(verify=verify_tls)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> TokenClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=_POOL, ssl=self._tls),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            auto_decompress=False,  # engine.net.bodies decompresses, under the limit
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self) -> TokenGrant | TokenFailure:
        answer = await self._post()
        if isinstance(answer, TokenFailure):  # the words of the network, a proxy or TLS
            return TokenFailure(answer.kind, self._secrets.redact(answer.message))
        status, body, retry_after = answer
        outcome = parse_token_answer(
            status,
            body,
            secrets=self._secrets,
            retry_after=parse_retry_after(retry_after, now=time.time()),
        )
        if isinstance(outcome, TokenGrant):
            self._issued.add(outcome.access_token)
        return outcome

    async def _post(self) -> tuple[int, bytes, str | None] | TokenFailure:
        """One token request: the answer's status, body and Retry-After, or why there is
        none (its message redacted by `fetch`, for every way out)."""
        assert self._session is not None, "use the token client inside `async with`"
        try:
            async with self._session.post(
                self.url,
                data=self._form,
                headers={"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING},
                allow_redirects=False,
                proxy=aiohttp_proxy(self._via),
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                if status == 407 and self._via is not None:
                    _, message = refusal(self._via, 407, resp.reason or "", "")
                    return TokenFailure("refused", message)
                try:
                    body = await read_body(
                        resp.content, resp.headers.get("Content-Encoding"), self._max_bytes
                    )
                except BodyError as exc:
                    resp.close()  # the rest is still on the wire
                    return TokenFailure("unavailable", self._unreadable(status, exc))
        except TimeoutError:
            return TokenFailure("unavailable", f"no answer within {self._timeout:g}s")
        except aiohttp.ClientHttpProxyError as exc:  # CONNECT answered non-2xx
            if self._via is None:
                return TokenFailure("unavailable", f"proxy answered HTTP {exc.status}")
            kind, message = refusal(self._via, exc.status, exc.message, self._authority())
            return TokenFailure("refused" if kind == ErrorKind.PROXY else "unavailable", message)
        except aiohttp.ClientConnectorError as exc:
            if (failure := tls_failure(exc, f"{exc.host}:{exc.port}")) is not None:
                return TokenFailure("tls", failure)  # not retried: AuthError at once
            reason = getattr(exc.os_error, "strerror", None) or str(exc.os_error)
            if self._via is not None and isinstance(exc, aiohttp.ClientProxyConnectionError):
                return TokenFailure("unavailable", unreachable(self._via, reason))
            return TokenFailure("unavailable", f"cannot connect: {reason}")
        except aiohttp.ClientError as exc:
            # an alert after TLS 1.3's handshake
            if (failure := tls_failure(exc, without_credentials(self.url))) is not None:
                return TokenFailure("tls", failure)
            text = client_error_text(exc)  # cut short (redacted first)
            return TokenFailure("unavailable", endpoint_message(text, self._secrets))
        except OSError as exc:
            text = f"network error: {exc.strerror or exc}"
            return TokenFailure("unavailable", endpoint_message(text, self._secrets))
        return status, body, retry_after

    def _authority(self) -> str:
        target = yarl.URL(self.url)
        return f"{target.host}:{target.port}"

    def _unreadable(self, status: int, exc: BodyError) -> str:
        if exc.kind == ErrorKind.TOO_LARGE:
            return f"HTTP {status}: token answer larger than {self._max_bytes} bytes; not read"
        return endpoint_message(f"HTTP {status}: {exc.message}", self._secrets)
