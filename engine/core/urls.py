"""How a URL or a storage option is shown in a message (pure): never its credentials.

Rules:
- A URL's password (`user:password@`) and its query's values (a signed URL's signature,
  an `?sig=` or `?X-Amz-Signature=`) become [redacted]; the scheme, host and path stay, so
  the message still says which object.
- A text with an '@' that urlsplit reads with no host part, its scheme mistyped
  (`https//u:pw@h/d`, `https:/u:pw@h/d`, `u:pw@h/d`), may hold `user:password` before
  its last '@' whatever precedes it: shown as the scheme as typed, the user's name and
  [redacted] (`https//u:[redacted]@h/d`). Not `file:///a@b`: a local path.
- An http(s) URL's fragment (`#...`) shows as `#[redacted]`, its scheme mistyped too
  (`https//h/d#...`, `https:/u:pw@h/d#...`): no client sends it, so it
  names nothing the server sees, and a token may sit there (`#access_token=...`). A
  storage URL's `#` stays: part of the object's key (`s3://b/a#1.jsonl`), which a
  record's `source` and `--resume` tell apart.
- A storage option whose key names a credential (key, secret, token, password,
  credential, signature, sas, connection: an Azure connection string) shows its key only.
- A URL that urlsplit cannot read (an unclosed `[`: "Invalid IPv6 URL") is a one-line
  ConfigError naming where it came from (`split_url`), never a traceback; it is not
  quoted, since its password cannot be told apart.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote, unquote_plus, urlsplit, urlunsplit

from engine.core.errors import ConfigError

REDACTED = "[redacted]"
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
#: Words of a storage option's name that say its value may be a credential
#: ("connection": adlfs's connection_string holds the account key).
_SECRET_WORDS = (
    "key", "secret", "token", "password", "credential", "signature", "sas", "connection",
)  # fmt: skip


def split_url(url: str, what: str) -> SplitResult:
    """`urlsplit(url)`; a URL it refuses is a ConfigError, one line naming `what` (an
    option, a variable, an input) that does not quote the URL."""
    try:
        return urlsplit(url)
    except ValueError:  # its text may quote the host, and a password with it
        raise ConfigError(
            f"{what} is not a valid URL: its host cannot be read (a '[' must close "
            "with ']' around an IPv6 address)"
        ) from None


def _cut_password(netloc: str, url: str) -> bool:
    """Whether `url`'s host part, as read (`netloc`), looks cut short inside a password:
    it ends in a ':' and something that is no port, and an '@' comes later in the URL."""
    _, colon, port = netloc.rpartition(":")
    if not colon or port.isdigit() or "]" in port:
        return False
    return "@" in url.partition(netloc)[2]


#: A mistyped scheme and its slashes (`https//`, `https:/`, `https:///`): kept as given.
#: Two slashes or a colon and one: `ab/cd@h` is a password, not a scheme and `cd`.
_LOOSE_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*(:/+|//+)")


def _loose_userinfo(url: str, parts: SplitResult) -> tuple[str, str, str] | None:
    """(scheme as typed, what may be `user:password`, the rest) of a text with an '@' that
    urlsplit reads with no host part (a mistyped scheme: `https//u:pw@h/d`, `u:pw@h/d`):
    everything before its last '@' may be the credentials. None for any other text, and
    for `file:///a@b` (a local path, no credentials)."""
    if parts.netloc or "@" not in url or parts.scheme.lower() == "file":
        return None
    before, _, rest = url.rpartition("@")
    scheme = _LOOSE_SCHEME.match(before)
    typed = scheme.group() if scheme else ""
    return typed, before[len(typed) :], rest


def without_credentials(url: str) -> str:
    """`url` with its password and its query's values as [redacted]."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED  # cannot tell its credentials apart: show none of it
    if (loose := _loose_userinfo(url, parts)) is not None:
        typed, user, rest = loose
        name, colon, _ = user.partition(":")
        shown = f"{name}:{REDACTED}" if colon else REDACTED
        if _http_typed(url, parts) and "#" in rest:  # the rest has lost its scheme
            rest = f"{without_credentials(rest.partition('#')[0])}#{REDACTED}"
            return f"{typed}{shown}@{rest}"
        return f"{typed}{shown}@{without_credentials(rest)}"
    netloc = parts.netloc
    if "@" not in netloc and _cut_password(netloc, url):
        # A '/', '?' or '#' in the password (not percent-encoded) ended the host part
        # early: all of it up to the last '@' may be the password.
        scheme, _, rest = url.partition("://")
        shown = without_credentials(f"{scheme}://{rest.rpartition('@')[2]}")
        if not shown.startswith(f"{scheme}://"):
            return REDACTED
        return f"{scheme}://{REDACTED}@{shown[len(scheme) + 3 :]}"
    fragment = REDACTED if parts.fragment and _http_typed(url, parts) else parts.fragment
    if "@" not in netloc and not parts.query and fragment == parts.fragment:
        return url  # as given (urlunsplit would drop the empty host of file:///x)
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name = user.partition(":")[0]
        netloc = f"{name}:{REDACTED}@{host}" if ":" in user else f"{REDACTED}@{host}"
    query = (
        "&".join(
            f"{pair.partition('=')[0]}={REDACTED}" if "=" in pair else pair
            for pair in parts.query.split("&")
        )
        if parts.query
        else ""
    )
    if not netloc:  # urlunsplit would write `https:/h/d` as `https:///h/d`: as typed
        body, mark, _ = url.partition("#")
        head, ask, _ = body.partition("?")
        return f"{head}{ask}{query}{mark}{fragment}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _is_http(parts: SplitResult) -> bool:
    return parts.scheme.lower() in ("http", "https")


def _http_typed(url: str, parts: SplitResult) -> bool:
    """An http(s) URL, its scheme mistyped or not (`https//h/d`, `https:/h/d`): its
    fragment is hidden as a well-formed one's is."""
    if _is_http(parts):
        return True
    typed = _LOOSE_SCHEME.match(url)
    return typed is not None and typed.group()[: typed.start(1)].lower() in ("http", "https")


def credentials(url: str) -> tuple[str, ...]:
    """What `without_credentials` hides of `url`, to redact where a server quotes it: the
    password and the query's values, as written and decoded."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    found = []
    http = _http_typed(url, parts)
    if (loose := _loose_userinfo(url, parts)) is not None:
        user, rest = loose[1], loose[2]
        found.append(user.partition(":")[2] if ":" in user else user)
        try:
            parts = urlsplit(rest)  # its query's values, as without_credentials hides them
        except ValueError:
            parts = parts._replace(query="")
    elif "@" in parts.netloc:
        user = parts.netloc.rpartition("@")[0]
        if ":" in user:
            found.append(user.partition(":")[2])
    found += [pair.partition("=")[2] for pair in parts.query.split("&") if "=" in pair]
    if http:
        found.append(parts.fragment)
    return tuple({v for raw in found if raw for v in (raw, unquote(raw), unquote_plus(raw))})


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")


def written(path: str) -> str:
    """An input as a file or an object written by a run names it (a plan, a manifest, a
    summary): a URL without its credentials; a local path as given."""
    return without_credentials(path) if _URL.match(path) else path


def check_output(value: str | None) -> None:
    """ConfigError (one line, no credentials) for an `-o` URL that names no plain object:
    one with a query (`?versionId=...`) or a fragment, or with an empty path segment."""
    if value is None or not _URL.match(value):
        return
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ConfigError("-o is not a valid URL") from None
    shown = without_credentials(urlunsplit(parts._replace(fragment="")))
    if parts.query or parts.fragment or "#" in value:
        fragment = f"#{REDACTED}" if parts.fragment else ""
        raise ConfigError(
            f"-o {shown}{fragment}: an output URL cannot carry a query (?versionId=...) "
            "or a fragment (#...); give the object's key alone"
        )
    if "//" in parts.path:
        raise ConfigError(
            f"-o {shown}: an output URL cannot have an empty path segment (//); "
            "write each / once"
        )


def check_local(option: str, value: str | None) -> None:
    """ConfigError when an option that writes a local file is given a URL."""
    if value is not None and _URL.match(value):
        raise ConfigError(f"{option} takes a local path, not a URL: {without_credentials(value)}")


def secret_option(key: str) -> bool:
    """True when a storage option's value may be a credential (by its key's name)."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def shown_option(key: str, value: str) -> str:
    """`key=value` as a message may show it: a credential's value [redacted], a URL's
    password and query values too."""
    if secret_option(key):
        return f"{key}={REDACTED}"
    return f"{key}={without_credentials(value)}"  # a URL or not: `u:pw@h` too


def parse_option(text: str) -> tuple[str, str]:
    """`key=value` (a `--storage-option`) -> (key, value); ConfigError, one line that never
    shows the value, when malformed."""
    key, eq, value = text.partition("=")
    if not eq:  # the text may be a credential given without its key: not echoed
        raise ConfigError("--storage-option must be KEY=VALUE (no '=' in the value given)")
    key = key.strip()
    check_option(key)
    return key, value


def check_option(key: object) -> None:
    """ConfigError unless `key` is a storage option's name (`endpoint_url`, or one dotted
    level: `client_kwargs.region_name`)."""
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        shown = repr(without_credentials(key)) if isinstance(key, str) else repr(key)
        raise ConfigError(
            "--storage-option must be KEY=VALUE with KEY a name such as endpoint_url or "
            f"client_kwargs.region_name, got {shown}"
        )
