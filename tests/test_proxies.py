"""engine/core/proxies.py: proxy URLs, the proxy variables and NO_PROXY by curl's rules
(pure, table-driven), and the Config options --proxy / --no-proxy."""

from __future__ import annotations

import pytest

from engine.config import Config
from engine.core.errors import ConfigError
from engine.core.proxies import (
    DIRECT,
    NoProxy,
    ProxyURL,
    parse_proxy_url,
    refusal,
    resolve_proxies,
)
from engine.core.records import ErrorKind, is_transient
from engine.core.retry import retry_reason
from engine.core.secrets import Secrets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("http://proxy:3128", ProxyURL("proxy", 3128), id="plain"),
        pytest.param("proxy.corp:8080", ProxyURL("proxy.corp", 8080), id="no-scheme-is-http"),
        pytest.param("http://proxy", ProxyURL("proxy", 1080), id="curl-default-port"),
        pytest.param("HTTP://Proxy:1/", ProxyURL("proxy", 1), id="case-and-slash"),
        pytest.param("http://[::1]:3128", ProxyURL("::1", 3128), id="ipv6"),
        pytest.param(
            "http://me%40corp:p%3Ass%20w@proxy:3128",
            ProxyURL("proxy", 3128, "me@corp", "p:ss w"),
            id="credentials-percent-decoded",
        ),
        pytest.param("http://me@proxy:3128", ProxyURL("proxy", 3128, "me", None), id="user-only"),
    ],
)
def test_proxy_urls_parse(text: str, expected: ProxyURL) -> None:
    assert parse_proxy_url(text, source="--proxy") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("socks5://h:1080", "only http:// proxies", id="socks"),
        pytest.param("https://h:443", "only http:// proxies", id="https-proxy"),
        pytest.param("http://:3128", "names no host", id="no-host"),
        pytest.param("http://h:99999", "bad port", id="bad-port"),
        pytest.param("http://h:3128/path", "host[:port] only", id="path"),
        pytest.param("http://h:31\n28", "control characters", id="newline"),
    ],
)
def test_bad_proxy_urls_are_one_line_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^https_proxy: ") as caught:
        parse_proxy_url(text, source="https_proxy")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_credentials_never_shown() -> None:
    proxy = parse_proxy_url("http://alice:s3cret-pw@proxy:3128", source="--proxy")
    assert proxy.shown == "http://[redacted]@proxy:3128"
    assert "s3cret" not in repr(proxy)
    assert "alice" not in repr(proxy)
    assert proxy.authorization == "Basic YWxpY2U6czNjcmV0LXB3"  # base64("alice:s3cret-pw")
    with pytest.raises(ConfigError) as caught:
        parse_proxy_url("socks5://alice:s3cret-pw@proxy:1080", source="ALL_PROXY")
    assert "s3cret" not in str(caught.value)
    assert "alice" not in str(caught.value)
    # The run's redactor finds the password and the header's Basic form.
    proxies = resolve_proxies({"HTTPS_PROXY": "http://alice:s3cret-pw@proxy:3128"})
    secrets = Secrets(proxies.secrets(), basic=proxies.basic())
    line = f"echo: s3cret-pw {proxy.authorization} s3cret%2Dpw"
    assert secrets.redact(line) == "echo: [redacted] Basic [redacted] [redacted]"


# -- the variables ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "http", "https"),
    [
        pytest.param({}, None, None, id="none"),
        pytest.param({"http_proxy": "h1:1"}, "h1", None, id="http-only"),
        pytest.param({"HTTP_PROXY": "h1:1"}, "h1", None, id="HTTP_PROXY-capitals-too"),
        pytest.param({"http_proxy": "low:1", "HTTP_PROXY": "UP:1"}, "low", None, id="lower-wins"),
        pytest.param({"HTTPS_PROXY": "s:1"}, None, "s", id="https-only"),
        pytest.param(
            {"https_proxy": "low:1", "HTTPS_PROXY": "up:1"}, None, "low", id="https-lower-wins"
        ),
        pytest.param({"ALL_PROXY": "a:1"}, "a", "a", id="all"),
        pytest.param({"all_proxy": "a:1", "https_proxy": "s:1"}, "a", "s", id="scheme-beats-all"),
        pytest.param({"http_proxy": "", "HTTP_PROXY": "up:1"}, "up", None, id="empty-is-unset"),
        pytest.param({"https_proxy": "  "}, None, None, id="blank-is-unset"),
    ],
)
def test_variables(env: dict[str, str], http: str | None, https: str | None) -> None:
    proxies = resolve_proxies(env)
    assert (proxies.http and proxies.http.host) == http
    assert (proxies.https and proxies.https.host) == https


def test_option_overrides_variables_and_no_proxy_ignores_them() -> None:
    env = {"HTTPS_PROXY": "env:1", "HTTP_PROXY": "env:1", "NO_PROXY": "direct.example"}
    given = resolve_proxies(env, proxy="http://given:2")
    assert given.route("https", "api.example", 443) == ProxyURL("given", 2)
    assert given.route("http", "api.example", 80) == ProxyURL("given", 2)
    assert given.route("https", "direct.example", 443) is None  # NO_PROXY still applies
    assert resolve_proxies(env, ignore_env=True) == DIRECT
    assert resolve_proxies(env, ignore_env=True).route("https", "api.example", 443) is None
    assert resolve_proxies(env, proxy="given:2", ignore_env=True).route(
        "https", "direct.example", 443
    ) == ProxyURL("given", 2)


def test_the_variable_at_fault_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^HTTPS_PROXY: only http://"):
        resolve_proxies({"HTTPS_PROXY": "socks5://s:1", "http_proxy": "ok:1"})
    with pytest.raises(ConfigError, match=r"^all_proxy: "):
        resolve_proxies({"all_proxy": "socks5h://s:1"})
    assert resolve_proxies({"ALL_PROXY": "socks5://s:1"}, ignore_env=True) == DIRECT


# -- NO_PROXY --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "direct"),
    [
        pytest.param("", "a.example", 443, False, id="empty"),
        pytest.param("*", "anything", 443, True, id="star"),
        pytest.param("x.test, *", "anything", 443, True, id="star-in-a-list"),
        pytest.param("example.com", "example.com", 443, True, id="exact"),
        pytest.param("example.com", "www.example.com", 443, True, id="subdomain"),
        pytest.param("example.com", "notexample.com", 443, False, id="not-a-suffix-match"),
        pytest.param("example.com", "example.com.org", 443, False, id="not-a-prefix-match"),
        pytest.param(".example.com", "example.com", 443, True, id="leading-dot-self"),
        pytest.param(".example.com", "a.b.example.com", 443, True, id="leading-dot-sub"),
        pytest.param("*.example.com", "a.example.com", 443, True, id="star-dot"),
        pytest.param("Example.COM.", "www.example.com.", 443, True, id="case-trailing-dots"),
        pytest.param("a.test,b.test", "b.test", 80, True, id="comma-list"),
        pytest.param(" a.test  b.test ", "b.test", 80, True, id="blank-list"),
        pytest.param("a.test,,", "c.test", 80, False, id="empty-entries"),
        pytest.param("localhost", "127.0.0.1", 80, False, id="names-never-match-addresses"),
        pytest.param("127.0.0.1", "127.0.0.1", 80, True, id="ipv4"),
        pytest.param("127.0.0.1", "127.0.0.2", 80, False, id="ipv4-other"),
        pytest.param("10.0.0.0/8", "10.20.30.40", 443, True, id="cidr4"),
        pytest.param("10.0.0.0/8", "11.0.0.1", 443, False, id="cidr4-outside"),
        pytest.param("192.168.1.7/16", "192.168.200.1", 443, True, id="cidr4-host-bits"),
        pytest.param("::1", "::1", 443, True, id="ipv6-bare"),
        pytest.param("[::1]", "::1", 443, True, id="ipv6-bracketed"),
        pytest.param("fd00::/8", "fd12::3", 443, True, id="cidr6"),
        pytest.param("fd00::/8", "fe80::1", 443, False, id="cidr6-outside"),
        pytest.param("example.com:8443", "api.example.com", 8443, True, id="port-match"),
        pytest.param("example.com:8443", "api.example.com", 443, False, id="port-other"),
        pytest.param("127.0.0.1:8080", "127.0.0.1", 8080, True, id="ipv4-port"),
        pytest.param("127.0.0.1:8080", "127.0.0.1", 80, False, id="ipv4-port-other"),
        pytest.param("[::1]:8080", "::1", 8080, True, id="ipv6-port"),
        pytest.param("[::1]:8080", "::1", 80, False, id="ipv6-port-other"),
        pytest.param("example.com:x", "example.com", 80, False, id="bad-port-ignored"),
    ],
)
def test_no_proxy(no_proxy: str, host: str, port: int, direct: bool) -> None:
    assert NoProxy.parse(no_proxy).matches(host, port) is direct
    proxies = resolve_proxies({"https_proxy": "p:1", "http_proxy": "p:1", "no_proxy": no_proxy})
    scheme = "https" if port == 443 else "http"
    assert (proxies.route(scheme, host, port) is None) is direct


def test_no_proxy_lowercase_wins() -> None:
    env = {"https_proxy": "p:1", "no_proxy": "a.test", "NO_PROXY": "b.test"}
    proxies = resolve_proxies(env)
    assert proxies.route("https", "a.test", 443) is None
    assert proxies.route("https", "b.test", 443) is not None


# -- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "user", "kind", "words"),
    [
        pytest.param(407, "u", ErrorKind.PROXY, "refused the credentials", id="407-with-creds"),
        pytest.param(407, None, ErrorKind.PROXY, "asks for credentials", id="407-without"),
        pytest.param(401, "u", ErrorKind.PROXY, "refused the credentials", id="401-tinyproxy"),
        pytest.param(403, None, ErrorKind.PROXY, "refused to carry the call to h:443", id="403"),
        pytest.param(502, None, ErrorKind.CONNECT, "could not reach h:443", id="502"),
    ],
)
def test_refusals(status: int, user: str | None, kind: str, words: str) -> None:
    proxy = ProxyURL("proxy", 3128, user, "pw" if user else None)
    got_kind, message = refusal(proxy, status, "Some\r\nReason", "h:443")
    assert got_kind == kind
    assert words in message
    assert message.startswith(f"proxy {proxy.shown} ")
    assert f"(HTTP {status} Some Reason)" in message  # the proxy's words on one line


def test_a_proxy_refusal_is_final_for_the_call_but_sent_again_by_resume() -> None:
    assert retry_reason(None, ErrorKind.PROXY) is None
    assert is_transient(None, ErrorKind.PROXY)


# -- Config ------------------------------------------------------------------------------


def test_config_options() -> None:
    base = Config(endpoint="https://api.example/x", token="t" * 12)
    assert base.with_changes(proxy="http://p:3128").validated().proxy == "http://p:3128"
    assert "pw-secret" not in repr(base.with_changes(proxy="http://u:pw-secret@p:3128"))
    with pytest.raises(ConfigError, match=r"^--proxy: only http://"):
        base.with_changes(proxy="socks5://p:1").validated()
    with pytest.raises(ConfigError, match="--proxy or --no-proxy, not both"):
        base.with_changes(proxy="http://p:1", no_proxy=True).validated()
