"""Proxies on the wire: the run's proxies from the environment, and the sockets to them.

Rules:
- Which proxy a call takes is decided in engine/core/proxies.py (curl's rules); this
  module reads the environment once per client (`run_proxies`) and opens sockets.
- `proxy_socket` returns a connected socket to the proxy: as it is for an `http://` call
  (the caller sends absolute-form requests on it), or tunnelled to the origin by
  `CONNECT` for an `https://` call (the caller then runs TLS over it with
  `create_connection(sock=...)`, so the TLS checks are the same as for a direct
  connection). Either way the socket carries one keep-alive connection's calls.
- Failures raise `ProxyError` (a kind and one line naming the proxy, its credentials
  redacted): unreachable is `connect` (retried, the run's fail-fast stop words it as
  the proxy's), a refusal is `proxy` (407, 403...), a 5xx answer to CONNECT is the proxy
  failing to reach the origin (`connect`).
- A cancel (the call's deadline) closes the socket: nothing half-open is left behind.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import yarl

from engine.config import Config
from engine.core.proxies import Proxies, ProxyURL, refusal, resolve_proxies, unreachable
from engine.core.records import ErrorKind

_P = TypeVar("_P", bound=asyncio.BaseProtocol)

#: The longest CONNECT answer head read (a proxy's error page may follow; it is not read).
_MAX_HEAD = 16 * 1024


class ProxyError(Exception):
    """No connection through the proxy; `kind` is an ErrorKind, `message` one line."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def run_proxies(config: Config) -> Proxies:
    """The proxies `config` asks for: --proxy, else the proxy variables (none with
    --no-proxy). Raises ConfigError for a proxy URL that cannot be used."""
    return resolve_proxies(os.environ, proxy=config.proxy, ignore_env=config.no_proxy)


async def dial(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], _P],
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    via: ProxyURL | None,
) -> _P:
    """A connection to `host:port` with `factory`'s protocol: direct, or through `via`
    (for TLS, inside its CONNECT tunnel: the same certificate checks as direct)."""
    name = host if tls is not None else None
    if via is None:
        _, proto = await loop.create_connection(factory, host, port, ssl=tls, server_hostname=name)
    else:
        sock = await proxy_socket(loop, via, None if tls is None else (host, port))
        _, proto = await loop.create_connection(factory, sock=sock, ssl=tls, server_hostname=name)
    return proto


def forwarded_headers(via: ProxyURL | None) -> str:
    """What an absolute-form request's head adds for the proxy `via` reads it."""
    authorization = None if via is None else via.authorization
    return "" if authorization is None else f"Proxy-Authorization: {authorization}\r\n"


async def proxy_socket(
    loop: asyncio.AbstractEventLoop, proxy: ProxyURL, tunnel_to: tuple[str, int] | None
) -> socket.socket:
    """A socket connected to `proxy`, tunnelled to `tunnel_to` (host, port) when given."""
    sock = await _connect(loop, proxy)
    if tunnel_to is None:
        return sock
    try:
        await _tunnel(loop, sock, proxy, tunnel_to)
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect(loop: asyncio.AbstractEventLoop, proxy: ProxyURL) -> socket.socket:
    try:
        infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ProxyError(ErrorKind.CONNECT, unreachable(proxy, _reason(exc))) from None
    last: OSError | None = None
    for family, kind, number, _, address in infos:
        sock = socket.socket(family, kind, number)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    reason = _reason(last) if last is not None else "no address"
    raise ProxyError(ErrorKind.CONNECT, unreachable(proxy, reason))


async def _tunnel(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    proxy: ProxyURL,
    target: tuple[str, int],
) -> None:
    host, port = target
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if (authorization := proxy.authorization) is not None:
        head += f"Proxy-Authorization: {authorization}\r\n"
    data = b""
    try:
        await loop.sock_sendall(sock, (head + "\r\n").encode("utf-8", "surrogateescape"))
        while b"\r\n\r\n" not in data:
            if len(data) > _MAX_HEAD:
                raise ProxyError(
                    ErrorKind.PROTOCOL, f"proxy {proxy.shown} sent an overlong answer to CONNECT"
                )
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                raise ProxyError(
                    ErrorKind.DISCONNECTED,
                    f"proxy {proxy.shown} closed the connection without answering CONNECT",
                )
            data += chunk
    except OSError as exc:
        raise ProxyError(
            ErrorKind.NETWORK, f"proxy {proxy.shown}: network error: {_reason(exc)}"
        ) from None
    status, reason = _status_line(data)
    if status is None:
        raise ProxyError(
            ErrorKind.PROTOCOL, f"proxy {proxy.shown} sent a malformed answer to CONNECT"
        )
    if not 200 <= status < 300:
        raise ProxyError(*refusal(proxy, status, reason, authority))
    if not data.endswith(b"\r\n\r\n"):
        # Bytes past the head before TLS has even started: not a tunnel we can trust.
        raise ProxyError(
            ErrorKind.PROTOCOL, f"proxy {proxy.shown} sent data after its answer to CONNECT"
        )


def _status_line(data: bytes) -> tuple[int | None, str]:
    # As aiohttp reads it (UTF-8, a byte that is not as U+FFFD): a proxy quoting the
    # credentials it got quotes their UTF-8, which the redaction then finds as written.
    line = data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        return None, ""
    return int(code), reason


def _reason(exc: OSError) -> str:
    # asyncio's sock_connect words a refusal "Connect call failed (addr)": the errno's
    # own words are shorter and the same as a direct connection's.
    if exc.errno and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


def aiohttp_proxy(via: ProxyURL | None) -> yarl.URL | None:
    """`via` as aiohttp's `proxy=` (its credentials become Proxy-Authorization)."""
    if via is None:
        return None
    import yarl

    return yarl.URL.build(
        scheme="http",
        user=_latin1(via.user),
        password=_latin1(via.password),
        host=via.host,
        port=via.port,
    )


def _latin1(text: str | None) -> str | None:
    """`text`'s UTF-8 bytes as latin-1 characters: aiohttp encodes a proxy URL's
    credentials as latin-1 (`BasicAuth.from_url`), so a `€` raised UnicodeEncodeError on
    every call and an `ä` went out as one byte; so the wire carries their UTF-8, as the
    other clients send it (ProxyURL.authorization)."""
    return None if text is None else text.encode("utf-8").decode("latin-1")
