"""Which proxy a call goes through (pure): proxy URLs, the proxy variables and NO_PROXY.

Rules (curl's, where curl has one):
- A proxy is an `http://` URL; `host:port` alone means `http://host:port`, and the port
  defaults to 1080 (curl's). Other schemes (`https://`, `socks5://`) are refused with a
  one-line ConfigError naming where the URL came from.
- `user:password@` in a proxy URL (percent-decoded: UTF-8, else refused, as is a raw
  byte that is not UTF-8 anywhere in the URL) becomes `Proxy-Authorization: Basic`.
  Both are secrets: a proxy URL shown in a message (`ProxyURL.shown`) never carries them,
  and the run's redactor hunts the password and the Basic form (`Proxies.secrets`). A
  proxy's own words in a refusal (`refusal`) lose them whatever the password's length:
  only the proxy can quote them, and the run's redactor skips a password under 8
  characters (engine/core/secrets.py). `ProxyURL.quoting` is the one home of that
  rule: it hunts the password in every form a client reads the proxy's UTF-8 bytes in
  (http1 and aiohttp decode them as UTF-8, httpx drops what is not ASCII).
- The variables, for a call to a URL of scheme `s`: `s_proxy`, then `S_PROXY`, then
  `all_proxy`, then `ALL_PROXY`; an empty value counts as unset. Lowercase wins, as with
  curl; unlike curl, `HTTP_PROXY` in capitals is honoured too (the CGI concern that made
  curl ignore it does not apply to a batch tool).
- `--proxy URL` is used for every call instead of the variables; NO_PROXY still applies,
  as with curl's `-x`. `--no-proxy` reads no variable: every call goes direct.
- NO_PROXY (`no_proxy` first): a comma- or blank-separated list. `*` matches every host.
  A name matches itself and its subdomains (`example.com` and `.example.com` both match
  `example.com` and `www.example.com`, never `notexample.com`; a trailing dot and case
  are ignored; `*.example.com` is read as `.example.com`). An IP address matches that
  address, a CIDR block (`10.0.0.0/8`, `fd00::/8`) the addresses in it; names never match
  addresses (nothing is resolved). Beyond curl, which ignores ports, `name:port` and
  `[v6]:port` match that port only.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote

from engine.core.errors import ConfigError
from engine.core.records import ErrorKind
from engine.core.secrets import REDACTED, Secrets
from engine.core.urls import split_url
from engine.core.values import utf8_text

DEFAULT_PROXY_PORT = 1080
#: How an unreachable proxy's error starts (runtime/engine.py words its stop by it).
UNREACHABLE = "cannot connect to proxy "

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """One HTTP proxy. `user`/`password` are None when the URL carries none."""

    host: str
    port: int
    user: str | None = None
    password: str | None = None

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def shown(self) -> str:
        """The URL for messages: credentials replaced by `[redacted]`."""
        creds = f"{REDACTED}@" if self.user is not None else ""
        return f"http://{creds}{self.authority}"

    @property
    def authorization(self) -> str | None:
        """The Proxy-Authorization value, or None without credentials."""
        if self.user is None:
            return None
        pair = f"{self.user}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def quoting(self, text: str) -> str:
        """`text`, the proxy's own words, without this proxy's password and its
        Proxy-Authorization value in any spelling, whatever the password's length, as
        any client reads them (`_read_as`)."""
        if self.user is None or not self.password:
            return text
        own = Secrets(_read_as(self.password), min_length=1, basic=((self.user, self.password),))
        return own.redact(text)

    def __repr__(self) -> str:  # never the credentials, not even in a traceback
        return f"ProxyURL({self.shown!r})"


def parse_proxy_url(text: str, *, source: str) -> ProxyURL:
    """`text` as a proxy; raises ConfigError naming `source` (`--proxy`, `https_proxy`)."""
    raw = text.strip()
    if "://" not in raw:
        raw = "http://" + raw
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw):
        raise ConfigError(f"{source}: a proxy URL cannot hold blanks or control characters")
    utf8_text(f"{source}: the proxy URL", raw)  # a raw byte of argv or the environment
    parts = split_url(raw, source)
    scheme = parts.scheme.lower()
    shown = _shown(parts.hostname, parts.port if _port_ok(parts) else None, parts.username)
    if scheme != "http":
        raise ConfigError(
            f"{source}: only http:// proxies are supported, got {scheme}:// ({shown}); "
            "--no-proxy ignores the proxy variables"
        )
    if not parts.hostname:
        raise ConfigError(f"{source}: the proxy URL names no host")
    if not _port_ok(parts):
        raise ConfigError(f"{source}: the proxy URL has a bad port ({shown})")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{source}: a proxy URL is http://[user:password@]host[:port] only")
    try:
        user = None if parts.username is None else unquote(parts.username, errors="strict")
        password = None if parts.password is None else unquote(parts.password, errors="strict")
    except UnicodeDecodeError:  # %FF: unquote would send U+FFFD in its place
        raise ConfigError(
            f"{source}: the proxy URL's user or password is not UTF-8 once percent-decoded"
        ) from None
    return ProxyURL(parts.hostname, parts.port or DEFAULT_PROXY_PORT, user, password)


def _port_ok(parts: SplitResult) -> bool:
    try:
        port = parts.port
    except ValueError:
        return False
    return port is None or port > 0


def _shown(host: str | None, port: int | None, user: str | None) -> str:
    creds = f"{REDACTED}@" if user is not None else ""
    where = f"[{host}]" if host and ":" in host else (host or "")
    return f"{creds}{where}" + (f":{port}" if port else "")


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str | None = None  # a domain, lowercased, no leading or trailing dot
    network: _Network | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class NoProxy:
    """A NO_PROXY list, parsed once."""

    rules: tuple[_Rule, ...] = ()
    everything: bool = False

    @classmethod
    def parse(cls, text: str) -> NoProxy:
        rules: list[_Rule] = []
        for entry in text.replace(",", " ").split():
            if entry == "*":
                return cls((), everything=True)
            rule = _rule(entry)
            if rule is not None:
                rules.append(rule)
        return cls(tuple(rules))

    def matches(self, host: str, port: int) -> bool:
        """True when a call to `host:port` goes direct (`host`: an IPv6 one unbracketed)."""
        if self.everything:
            return True
        if not self.rules:
            return False
        address = _address(host)
        name = host.lower().rstrip(".")
        for rule in self.rules:
            if rule.port is not None and rule.port != port:
                continue
            if rule.network is not None:
                if address is not None and address in rule.network:
                    return True
            elif (
                address is None
                and rule.name
                and (name == rule.name or name.endswith("." + rule.name))
            ):
                return True
        return False


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _rule(entry: str) -> _Rule | None:
    """One NO_PROXY entry; None for one that can match nothing (ignored, as curl does)."""
    port: int | None = None
    if entry.startswith("["):  # [v6], [v6]:port, [v6/bits]
        inside, _, rest = entry[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
        entry = inside
    elif entry.count(":") == 1:  # name:port or v4:port (two or more: a bare IPv6)
        entry, _, digits = entry.partition(":")
        if not digits.isdigit():
            return None
        port = int(digits)
    try:
        return _Rule(network=ipaddress.ip_network(entry, strict=False), port=port)
    except ValueError:
        pass
    name = entry.lower().rstrip(".")
    name = name.removeprefix("*").lstrip(".")
    if not name or "/" in name:
        return None
    return _Rule(name=name, port=port)


@dataclass(frozen=True, slots=True)
class Proxies:
    """The run's proxies by the scheme of the URL called, and the hosts that go direct."""

    http: ProxyURL | None = None
    https: ProxyURL | None = None
    bypass: NoProxy = NoProxy()

    @property
    def any(self) -> bool:
        return self.http is not None or self.https is not None

    def route(self, scheme: str, host: str, port: int) -> ProxyURL | None:
        """The proxy for a call to `scheme://host:port`, or None to go direct."""
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None or self.bypass.matches(host, port):
            return None
        return proxy

    def secrets(self) -> tuple[str, ...]:
        """The passwords (and users) of the proxy URLs, for the run's redactor."""
        found = [p.password for p in (self.http, self.https) if p is not None and p.password]
        return tuple(dict.fromkeys(found))

    def basic(self) -> tuple[tuple[str, str], ...]:
        """(user, password) pairs, whose Basic form the redactor hunts too."""
        pairs = [
            (p.user, p.password or "")
            for p in (self.http, self.https)
            if p is not None and p.user is not None
        ]
        return tuple(dict.fromkeys(pairs))


DIRECT = Proxies()


def resolve_proxies(
    env: Mapping[str, str], *, proxy: str | None = None, ignore_env: bool = False
) -> Proxies:
    """The proxies of a run: `proxy` (--proxy) for every scheme, else the variables in
    `env`; none with `ignore_env` (--no-proxy) unless `proxy` is given."""
    bypass = NoProxy() if ignore_env else NoProxy.parse(_variable(env, "no_proxy")[1] or "")
    if proxy is not None:
        given = parse_proxy_url(proxy, source="--proxy")
        return Proxies(given, given, bypass)
    if ignore_env:
        return DIRECT
    found: dict[str, ProxyURL | None] = {}
    for scheme in ("http", "https"):
        name, value = _variable(env, f"{scheme}_proxy")
        if value is None:
            name, value = _variable(env, "all_proxy")
        found[scheme] = None if value is None else parse_proxy_url(value, source=name)
    return Proxies(found["http"], found["https"], bypass)


def _variable(env: Mapping[str, str], lower: str) -> tuple[str, str | None]:
    for name in (lower, lower.upper()):
        value = env.get(name)
        if value and value.strip():
            return name, value
    return lower, None


# -- a proxy that answers but will not carry the call --------------------------------------


def refusal(proxy: ProxyURL, status: int, reason: str, target: str) -> tuple[str, str]:
    """(error kind, one-line message) for a proxy that answered `status` instead of
    carrying a call to `target` (`host:port`): 407 and the other refusals are `proxy`
    (final; the run stops), a 5xx is the proxy failing to reach `target`: `connect`.
    Called for any answer to CONNECT, and for a 407 to an absolute-form request."""
    # Redacted before it is cut short: a cut secret would escape its redaction.
    said = f"HTTP {status}" + (f" {words}" if (words := _words(proxy.quoting(reason))) else "")
    # A proxy's 401 to CONNECT is about its credentials too: tinyproxy up to 1.11 answers
    # wrong ones so (its issue 532). To an absolute-form GET, a 401 is the server's.
    if status in (401, 407):
        if proxy.user is not None:
            return ErrorKind.PROXY, f"proxy {proxy.shown} refused the credentials ({said})"
        return ErrorKind.PROXY, (
            f"proxy {proxy.shown} asks for credentials ({said}); "
            "give them in the proxy URL: http://user:password@host:port"
        )
    if status >= 500:
        return ErrorKind.CONNECT, f"proxy {proxy.shown} could not reach {target} ({said})"
    return ErrorKind.PROXY, f"proxy {proxy.shown} refused to carry the call to {target} ({said})"


def unreachable(proxy: ProxyURL, reason: str) -> str:
    return f"{UNREACHABLE}{proxy.shown}: {_words(reason) or 'failed'}"


def _read_as(password: str) -> tuple[str, ...]:
    """The password as a client may have read the proxy's bytes quoting it (the wire
    carries its UTF-8): as UTF-8 (http1, session, the token client), each byte as a
    latin-1 character (a status line read so), and without its non-ASCII characters
    (httpx, --http-client http2, reads a CONNECT's reason as ASCII, dropping the rest)."""
    raw = password.encode("utf-8", "surrogatepass")
    return (password, raw.decode("latin-1"), password.encode("ascii", "ignore").decode())


def _words(text: str) -> str:
    """A proxy's own words, made safe for one line of a record (printable, short)."""
    kept = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(kept.split())[:80]


_CHECK = (
    "check --proxy or HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY (--no-proxy ignores them)"
)


def refused_stop(error: str | None) -> str:
    """Why a run stops on a record of kind `proxy` (a refusal will not pass by itself)."""
    return f"{error}; {_CHECK}; --resume sends the rest"


def unreachable_stop(error: str | None) -> str | None:
    """Why a run stops when its first failures were `error`, if that is an unreachable
    proxy (None otherwise: the endpoint's own words apply)."""
    if error is None or not error.startswith(UNREACHABLE):
        return None
    return f"{error}; {_CHECK}, and that the proxy is up"
