"""How an option's value may be shown (pure): `config --show`, and the options a
`--series` header records for `adbatch report` (and so its HTML page and --summary).

Rules:
- The token and the client secret are [redacted] whatever they hold.
- A header shows its name, never its value (an `X-Api-Key`).
- A storage option shows its value unless its name says credential (`shown_option`).
- A URL (the endpoint, the token URL) shows without its password or query values
  (`without_credentials`); a proxy as every message shows it (`ProxyURL.shown`), and
  [redacted] whole when it cannot be read.
One home: the two views drifted once (the series header wrote the endpoint's password,
the token URL's and the storage options' secrets in clear).
"""

from __future__ import annotations

from engine.core.errors import ConfigError
from engine.core.proxies import parse_proxy_url
from engine.core.urls import REDACTED, shown_option, without_credentials

#: Options whose value is a secret, whatever it is.
SECRETS = frozenset({"token", "client_secret"})
#: URLs whose user:password and query values are not shown (a key may sit there).
URLS = frozenset({"endpoint", "token_url"})


def shown_value(name: str, value: object) -> object:
    """`value` of the option `name` as it may be shown: the module's rules."""
    if value is None:
        return None
    if name in SECRETS:
        return REDACTED
    if name == "headers" and isinstance(value, tuple | list):
        return [f"{str(h).partition(':')[0]}: {REDACTED}" for h in value]
    if name == "storage_options" and isinstance(value, tuple | list):
        return [shown_option(str(k), str(v)) for k, v in value]
    if name in URLS and isinstance(value, str):
        return without_credentials(value)
    if name == "proxy" and isinstance(value, str):
        try:
            return parse_proxy_url(value, source="--proxy").shown
        except ConfigError:
            return REDACTED  # cannot tell its credentials apart: show none of it
    return value
