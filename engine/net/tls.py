"""TLS for every client: one context per settings, and what a failure was, in one line.

Rules:
- Every client that speaks HTTPS (http1, the session, the token client, later http2)
  takes its `ssl.SSLContext` from `client_context`: the system store, or the PEM bundle
  of `--cacert` instead (as curl's `--cacert`: the bundle replaces the store), and the
  client certificate of `--client-cert`/`--client-key` for mutual TLS. One context per
  process and settings (cached): delivery and token calls trust the same CAs.
- A file that cannot be read, holds no certificate, or a key that is encrypted or does
  not match its certificate is a ConfigError naming the option and the file (exit 2,
  before anything is sent: open_run builds the context first). An encrypted key is
  refused rather than letting OpenSSL prompt on the terminal of a batch job.
- `tls_failure(exc, where)` turns a certificate verification failure or a handshake
  alert, found on `exc` or its cause (aiohttp wraps an alert read after a TLS 1.3
  handshake in a ClientOSError; httpcore raises its own with the SSLError as context),
  into one line saying which it was: hostname mismatch, self-signed, unknown issuer,
  expired, not yet valid, or the server's alert. Other SSL errors (a plain-HTTP server,
  an EOF mid-handshake) are None: the caller keeps them as connection errors, retried.
"""

from __future__ import annotations

import functools
import ssl
from typing import NoReturn

from engine.config import Config
from engine.core.errors import ConfigError


class _EncryptedKey(Exception):
    pass


def _no_password() -> NoReturn:
    raise _EncryptedKey


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot read it: {exc.strerror or exc}") from None


def tls_context(config: Config, *, own: bool = False) -> ssl.SSLContext:
    """The context `config`'s TLS options ask for; raises ConfigError. `own`: a new one,
    not the process's shared one (the http2 client's: httpcore sets ALPN on it)."""
    make = client_context.__wrapped__ if own else client_context
    return make(cacert=config.cacert, client_cert=config.client_cert, client_key=config.client_key)


@functools.lru_cache(maxsize=8)
def client_context(
    *,
    verify: bool = True,
    cacert: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
) -> ssl.SSLContext:
    """A client context: verifying against `cacert` (a PEM bundle, else the system store)
    unless `verify` is False, presenting `client_cert` (with `client_key`, or a key in
    the same file) when given. Raises ConfigError naming the option at fault."""
    if cacert is None:
        context = ssl.create_default_context()
    else:
        pem = _read("--cacert", cacert).decode("ascii", "replace")
        if "-----BEGIN CERTIFICATE-----" not in pem:  # "" would load the system store
            raise ConfigError(f"--cacert {cacert}: holds no PEM certificate")
        try:
            context = ssl.create_default_context(cadata=pem)
        except (ssl.SSLError, ValueError):
            raise ConfigError(f"--cacert {cacert}: not a PEM bundle of certificates") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        _load_client_cert(context, client_cert, client_key)
    elif client_key is not None:
        raise ConfigError("--client-key needs --client-cert")
    return context


def _load_client_cert(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    cert_pem = _read("--client-cert", cert)
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise ConfigError(f"--client-cert {cert}: holds no PEM certificate")
    key_pem = cert_pem if key is None else _read("--client-key", key)
    if b"PRIVATE KEY-----" not in key_pem:
        if key is None:
            raise ConfigError(f"--client-cert {cert}: holds no private key; give --client-key")
        raise ConfigError(f"--client-key {key}: holds no PEM private key")
    names = f"--client-cert {cert}" + (f" / --client-key {key}" if key else "")
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(
            f"{names}: the key is encrypted and adbatch takes no passphrase; "
            "decrypt it (openssl pkey -in KEY -out PLAIN) and keep it private"
        ) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(f"{names}: the key does not match the certificate") from None
        raise ConfigError(f"{names}: cannot be loaded ({exc.reason or exc})") from None


# -- what a failure was --------------------------------------------------------------

_HOSTNAME = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_SELF_SIGNED = frozenset({18, 19})  # DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN
_UNKNOWN_ISSUER = frozenset({2, 20, 21})  # UNABLE_TO_GET_ISSUER_CERT(_LOCALLY), ..._LEAF_SIGNATURE
_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED
_NOT_YET_VALID = 9  # X509_V_ERR_CERT_NOT_YET_VALID

_CLIENT_CERT = "the server wants a client certificate (--client-cert, --client-key)"
_CLIENT_REFUSED = "the server refused the client certificate (--client-cert)"
_ALERT_HINTS = {
    "certificate_required": _CLIENT_CERT,
    "handshake_failure": "the server refused the handshake (it may want a client certificate: "
    "--client-cert, --client-key; or share no cipher with adbatch)",
    "unknown_ca": _CLIENT_REFUSED,
    "bad_certificate": _CLIENT_REFUSED,
    "certificate_unknown": _CLIENT_REFUSED,
    "certificate_expired": _CLIENT_REFUSED,
    "certificate_revoked": _CLIENT_REFUSED,
    "access_denied": _CLIENT_REFUSED,
    "protocol_version": "no TLS version in common with the server",
}


def _ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The SSLError behind `exc`: itself, its `os_error`/`certificate_error` (aiohttp's
    connector errors), its cause (a ClientOSError from a read) or, without a cause, its
    context (httpcore raises its ConnectError inside the `except` of the SSLError)."""
    for _ in range(4):
        if exc is None:
            return None
        # aiohttp's connector errors are SSLErrors too (by their bases) but carry none
        # of the fields: the real one is inside.
        inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)
        if isinstance(inner, BaseException):
            exc = inner
        elif isinstance(exc, ssl.SSLError):
            return exc
        else:
            exc = exc.__cause__ or exc.__context__
    return None


def tls_failure(exc: BaseException, where: str) -> str | None:
    """One line saying which TLS failure `exc` was, with `where` (host:port) in it; None
    when it is no certificate failure and no handshake alert."""
    error = _ssl_error(exc)
    if isinstance(error, ssl.SSLCertVerificationError):
        return _verify_failure(error, where)
    reason = getattr(error, "reason", None)
    if not isinstance(reason, str) or "_ALERT_" not in reason:
        return None
    alert = reason.split("_ALERT_", 1)[1].lower()
    hint = _ALERT_HINTS.get(alert, "the server ended the handshake")
    return f"TLS: handshake alert {alert} from {where}: {hint}"


def _verify_failure(error: ssl.SSLCertVerificationError, where: str) -> str:
    code = error.verify_code
    detail = str(error.verify_message or error.reason or "certificate verify failed").rstrip(".")
    if code in _HOSTNAME:
        return (
            f"TLS: hostname mismatch: the certificate of {where} is not for it ({detail}); "
            "check --endpoint"
        )
    if code in _SELF_SIGNED:
        return (
            f"TLS: self-signed certificate at {where}, not trusted ({detail}); "
            "trust it with --cacert FILE"
        )
    if code in _UNKNOWN_ISSUER:
        return (
            f"TLS: unknown issuer: the certificate of {where} is signed by a CA not trusted "
            f"here ({detail}); give that CA with --cacert FILE"
        )
    if code == _EXPIRED:
        return f"TLS: expired certificate at {where} ({detail})"
    if code == _NOT_YET_VALID:
        return f"TLS: certificate of {where} not yet valid ({detail}): check this clock"
    return f"TLS: the certificate of {where} failed verification ({detail})"


def tls_stop(error: str | None, endpoint: str) -> str:
    """The run's stop message after a call's TLS failure (`error`, its record's)."""
    text = error or "TLS failure"
    fix = "" if "--" in text else "; --cacert FILE names the CAs to trust"
    return (
        f"{text} (delivery endpoint {endpoint}){fix}; nothing more is sent: "
        "once that is fixed, --resume sends the rest"
    )
