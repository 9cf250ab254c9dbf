"""`HOST:PORT` of a server adbatch serves itself (--metrics-addr, --dashboard) (pure).

Rules: a bare `:PORT` is loopback (127.0.0.1): nothing is exposed beyond the machine
unless a host says so; an IPv6 host goes in brackets (`[::1]:9100`); port 0 takes a
free port (the URL is printed when the server starts).
"""

from __future__ import annotations

from engine.core.errors import ConfigError
from engine.core.shown import quoted

LOOPBACK = "127.0.0.1"


def parse_listen(text: str, option: str) -> tuple[str, int]:
    """(host, port) of `text`; a ConfigError naming `option` when it is not HOST:PORT."""
    host, sep, port_text = text.rpartition(":")
    bad = ConfigError(f"{option} must be HOST:PORT or :PORT (e.g. :9100), got {quoted(text)}")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise bad
    port = int(port_text)
    if port > 65535:
        raise bad
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host or ":" not in host:
            raise bad
    elif ":" in host:
        raise bad  # an IPv6 address without brackets is ambiguous
    if not host:
        host = LOOPBACK
    if not host.isascii() or not host.isprintable() or " " in host or "/" in host:
        raise bad
    return host, port


def url_host(host: str) -> str:
    """`host` as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host
