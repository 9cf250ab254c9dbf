"""How an option's value may be shown (pure): `config --show`, and the options a
`--series` header records for `adbatch report` (and so its HTML page and --summary).

Rules:
- The token and the client secret are [redacted] whatever they hold.
- A header shows its name, never its value (an `X-Api-Key`); one without a colon shows
  none of it (all of it may be the value: `X-Api-Key 123`).
- A storage option shows its value unless its name says credential (`shown_option`).
- A URL (the endpoint, the token URL) shows without its password, query values or
  http(s) fragment (`without_credentials`, the one home of that rule); a proxy as every
  message shows it (`ProxyURL.shown`), and [redacted] whole when it cannot be read. Any
  other URL (an input, -o) shows by the same rule; a local path as given.
- Any other value (a --rate, a --timeout, a --metrics-addr, a --threshold...) shows by
  the URL rule too (`shown_text`, `quoted`), whether or not it reads as a URL: what may
  be `user:password` before an '@' (`u:pw@h/d`, `https//u:pw@h`) and a query's values
  never show. Every message that quotes a bad option value quotes it so (core/units,
  core/addresses, core/thresholds, core/shard, config.py, the CLI's argument types).
- A value as a config file or a variable gave it (`shown_given`: an array, a table, nested,
  of the wrong type or form) by the same rules, item by item; a table's entry under a
  credential's name (a storage option's, any other key holding key, secret, token or
  password...) shows [redacted]. Config-file and ADBATCH_* messages quote values so
  (engine/cli/config_file.py): they once printed `proxy = [URL]` whole, password and all.
One home: the two views drifted once (the series header wrote the endpoint's password,
the token URL's and the storage options' secrets in clear).
"""

from __future__ import annotations

from engine.core.errors import ConfigError
from engine.core.proxies import parse_proxy_url
from engine.core.urls import (
    REDACTED,
    check_option,
    secret_option,
    shown_option,
    without_credentials,
    written,
)

#: Options whose value is a secret, whatever it is.
SECRETS = frozenset({"token", "client_secret"})
#: URLs whose user:password and query values are not shown (a key may sit there).
URLS = frozenset({"endpoint", "token_url"})
#: Local paths (or URLs: `written`): shown as given, an '@' in a file's name included.
PATHS = frozenset({"inputs", "output", "summary", "series", "cacert", "client_cert", "client_key"})


def shown_text(text: str) -> str:
    """An option's value as a message may show it: the URL rule, read as a URL or not."""
    return without_credentials(text)


def quoted(value: object) -> str:
    """A bad option value (a text, or a config file's array or table) as a message quotes
    it: by the rules of `shown_given`, in quotes; [redacted] bare when none of it shows."""
    shown = shown_given("", value)
    return shown if shown == REDACTED else repr(shown)


def _header(text: str) -> str:
    """`Name: value` as shown; without a colon, all of it may be the value."""
    name, colon, _ = text.partition(":")
    return f"{name}: {REDACTED}" if colon else REDACTED


def shown_value(name: str, value: object) -> object:
    """`value` of the option `name` as it may be shown: the module's rules."""
    if value is None:
        return None
    if name in SECRETS:
        return REDACTED
    if name == "headers" and isinstance(value, str):
        return _header(value)
    if name == "headers" and isinstance(value, tuple | list):
        return [_header(str(h)) for h in value]
    if name == "storage_options" and isinstance(value, tuple | list):
        return [shown_option(str(k), str(v)) for k, v in value]
    if name in URLS and isinstance(value, str):
        return without_credentials(value)
    if name == "proxy" and isinstance(value, str):
        try:
            return parse_proxy_url(value, source="--proxy").shown
        except ConfigError:
            return REDACTED  # cannot tell its credentials apart: show none of it
    shown = written if name in PATHS else shown_text
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, tuple | list):
        return [shown(v) if isinstance(v, str) else v for v in value]
    return value


def shown_given(name: str, value: object) -> object:
    """`value` as given for the option `name` (a TOML value of any shape, or a variable's
    text), as a message may show it: the module's rules, in every array and table."""
    if name in SECRETS:
        return REDACTED
    if isinstance(value, list | tuple):
        return [shown_given(name, item) for item in value]
    if isinstance(value, dict):
        if name == "storage_options":
            return {k: shown_stored(str(k), v) for k, v in value.items()}
        return {
            k: REDACTED if name == "headers" or secret_option(str(k)) else shown_given(name, v)
            for k, v in value.items()
        }
    if not isinstance(value, str):
        return value
    if name == "storage_options":  # `key=value`; without a '=', all of it may be the value
        key, eq, item = value.partition("=")
        try:
            check_option(key.strip())
        except ConfigError:
            return REDACTED  # no option's name before a '=': a URL's password may be there
        return shown_option(key, item) if eq else REDACTED
    return shown_value(name, value)


def shown_stored(key: str, value: object) -> object:
    """A storage option's value of any TOML shape, given under `key` (a table's entry:
    `client_kwargs = {password = ...}` is under client_kwargs.password), as shown."""
    if secret_option(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: shown_stored(f"{key}.{k}", v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shown_stored(key, item) for item in value]
    if isinstance(value, str):
        return shown_option(key, value).partition("=")[2]
    return value
