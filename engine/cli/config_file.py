"""The TOML config file and the ADBATCH_* variables, typed as the options are.

Each Config field has one kind: the argument type of its option (engine/cli/argtypes.py),
a flag, a choice, a string or a list of strings. A TOML string goes through the
option's type exactly as on the command line (`timeout = "2s"`, `rate = "1k"`); a TOML
number goes through it as its text; a value of the wrong TOML type, or an unknown key,
is one ConfigError line naming the key, what was expected and, for a near-miss, the key
meant. Tokens and client secrets are refused in files. A value quoted in a message goes
through engine/core/shown.py (`_Wrong`, `typed`): a URL's password and query values, a
header's value and a credential's (a storage option named *secret*, a table's `password`)
never show, in arrays and tables too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from engine.cli import argtypes as t
from engine.config import HTTP_CLIENTS, Config
from engine.core.addresses import parse_listen
from engine.core.shown import shown_given, shown_stored, shown_text
from engine.core.thresholds import parse_threshold
from engine.core.urls import REDACTED
from engine.errors import ConfigError

#: value -> typed value; raises ValueError (or argparse's type error) saying what it expected.
Kind = Callable[[object], Any]

_TOML_TYPES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}


def _toml_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return _TOML_TYPES.get(type(value), type(value).__name__)


class _Wrong(ValueError):
    """A value not of the kind expected: `typed` says so, quoting it as core/shown.py
    shows the option's values (`key`: the storage option it was given for)."""

    def __init__(self, what: str, value: object, *, key: str | None = None) -> None:
        super().__init__(what)
        self.what, self.value, self.key = what, value, key

    def message(self, name: str) -> str:
        value = self.value
        shown = shown_given(name, value) if self.key is None else shown_stored(self.key, value)
        text = shown if shown == REDACTED else repr(shown)
        return f"expected {self.what}, got {text}" + (
            "" if isinstance(value, str) else f" ({_toml_type(value)})"
        )


def _option(
    parse: Callable[[str], Any], what: str, *, floats: bool = True, ints: bool = True
) -> Kind:
    """The option's own type: a string as on the command line, a number as its text."""

    def kind(value: object) -> Any:
        if isinstance(value, str):
            try:
                return parse(value)
            except (ValueError, argparse.ArgumentTypeError):
                if shown_text(value) != value:  # its own message would quote a password
                    raise _Wrong(what, value) from None
                raise
        if ints and isinstance(value, int) and not isinstance(value, bool):
            return parse(str(value))
        if floats and isinstance(value, float):
            return parse(repr(value))
        raise _Wrong(what, value)

    return kind


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Wrong("true or false", value)
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Wrong("a string", value)
    return value


def _texts(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Wrong("a string or an array of strings", value)
    return tuple(value)


def _choice(*choices: str) -> Kind:
    def kind(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _Wrong("one of " + ", ".join(choices), value)
        return value

    return kind


def _storage_options(value: object) -> tuple[tuple[str, str], ...]:
    """`storage-option = ["k=v", ...]` (or one string), or a table `{k = v}` whose value
    may be a table once: `client_kwargs = {region_name = "x"}` is client_kwargs.region_name."""
    if isinstance(value, dict):
        pairs = []
        for key, item in value.items():
            if isinstance(item, dict) and "." not in str(key):
                pairs += [_storage_pair(f"{key}.{k}", v) for k, v in item.items()]
            else:
                pairs.append(_storage_pair(key, item))
        return tuple(pairs)
    return tuple(_storage_text(text) for text in _texts(value))


def _storage_text(text: str) -> tuple[str, str]:
    try:
        return t.storage_option(text)
    except argparse.ArgumentTypeError:
        key = text.partition("=")[0]
        if shown_text(key) != key:  # its own message would quote the key, a password in it
            raise _Wrong(_KEY_VALUE, text) from None
        raise


_KEY_VALUE = "KEY=VALUE with KEY a name such as endpoint_url or client_kwargs.region_name"


def _storage_pair(key: object, item: object) -> tuple[str, str]:
    if isinstance(item, bool):
        item = "true" if item else "false"
    elif isinstance(item, int | float):
        item = str(item)
    elif not isinstance(item, str):
        raise _Wrong(f"a string, a number or a boolean for {key!r}", item, key=str(key))
    return _storage_text(f"{key}={item}")


def _checked(kind: Kind, check: Callable[[str], object], what: str) -> Kind:
    """`kind`, and a text holding a URL's credentials refused here when `check` (what
    Config.validated checks it with) refuses it: that message would quote it whole."""

    def checked(value: object) -> Any:
        typed = kind(value)
        for text in (typed,) if isinstance(typed, str) else typed:
            if shown_text(text) != text:
                try:
                    check(text)
                except ConfigError:
                    raise _Wrong(what, value) from None
        return typed

    return checked


def _partner(value: object) -> str:
    # Checked here, not left to Config's message: that one would quote the text as it is.
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise _Wrong("an integer", value)
    return str(value)


_WHOLE = "a whole number"
_LISTEN = "HOST:PORT or :PORT such as :9100"
_DURATION = "a duration such as 2s, 500ms, 1m30s"

#: Each Config field's kind. A field missing here gets one from its annotation (`_guess`).
KINDS: dict[str, Kind] = {
    "inputs": _texts,
    "headers": _texts,
    "partner_id": _partner,
    "storage_options": _storage_options,
    "concurrency": _option(t.positive_int, _WHOLE, floats=False),
    "fail_fast_401": _option(t.positive_int, _WHOLE, floats=False),
    "internal_streak": _option(t.positive_int, _WHOLE, floats=False),
    "retries": _option(t.count, _WHOLE, floats=False),
    "workers": _option(t.workers, "a whole number or auto", floats=False),
    "rate": _option(t.rate, "a rate such as 500, 500/s, 1k"),
    "timeout": _option(t.positive_duration, _DURATION),
    "token_wait": _option(t.positive_duration, _DURATION),
    "retry_budget": _option(t.nonneg_float, "a number"),
    "max_line_bytes": _option(t.size, "a size such as 1048576, 512k, 8MiB"),
    "max_response_bytes": _option(t.size, "a size such as 1048576, 512k, 8MiB"),
    "part_size": _option(t.part_size, "a size such as 1048576, 512k, 8MiB"),
    "part_seconds": _option(t.positive_duration, _DURATION),
    "shard": _option(t.shard, "I/N such as 0/4", floats=False, ints=False),
    "http_client": _choice(*HTTP_CLIENTS),
    "input_format": _choice("auto", "jsonl", "csv", "parquet"),
    "shard_by": _choice("position", "id"),
    "backend": _choice("local", "ray"),
    "records": _choice("all", "errors", "none"),
    "thresholds": _checked(_texts, parse_threshold, "METRIC OP VALUE such as p99<250ms"),
    "metrics_addr": _checked(_text, lambda s: parse_listen(s, "--metrics-addr"), _LISTEN),
    "dashboard": _checked(_text, lambda s: parse_listen(s, "--dashboard"), _LISTEN),
}
for _name in ("backoff_base", "backoff_cap", "retry_after_cap", "grace", "give_up_after"):
    KINDS[_name] = _option(t.duration, _DURATION)
KINDS["metrics_linger"] = _option(t.duration, _DURATION)


def _guess(annotation: str) -> Kind:
    """A kind from a field's annotation, for fields added without an entry in KINDS."""
    if "bool" in annotation:
        return _flag
    if "int" in annotation:
        return _option(t.count, _WHOLE, floats=False)
    if "float" in annotation:
        return _option(t.nonneg_float, "a number")
    if "tuple[str" in annotation:
        return _texts
    return _text


_FIELDS = {f.name: str(f.type) for f in fields(Config)}
#: Fields a config file may not set: secrets, and what adbatch decides itself.
_NOT_IN_FILES = {"token", "client_secret", "progress"}


def kind_of(name: str) -> Kind:
    return KINDS.get(name) or _guess(_FIELDS[name])


def typed(name: str, value: object) -> Any:
    """`value` (TOML or environment) as field `name` holds it; ConfigError(message) if not."""
    try:
        return kind_of(name)(value)
    except _Wrong as exc:
        raise ConfigError(exc.message(name)) from None
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(str(exc)) from None


#: The spelling of a key in a file -> the Config field (the options' dests).
_ALIASES = {
    "format": "input_format",
    "header": "headers",
    "threshold": "thresholds",
    "storage_option": "storage_options",
}


def _field(key: str) -> str:
    name = key.replace("-", "_")
    return _ALIASES.get(name, name)


def _keys(dashed: bool) -> list[str]:
    hidden = {"input_format", "headers", *_NOT_IN_FILES}
    names = [n for n in _FIELDS if n not in hidden] + list(_ALIASES) + ["no_progress"]
    return [n.replace("_", "-") for n in names] if dashed else names


def load_toml(path: str) -> dict[str, Any]:
    """The config file's values by Config field, typed; ConfigError for anything else."""
    import tomllib  # (here: a run without --config does not load it; issue 18, start-up)

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get("adbatch", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [adbatch] must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = _field(key)
        if name in ("token", "client_secret"):
            what, var, option = (
                ("token", "ADBATCH_TOKEN", "--token-file")
                if name == "token"
                else ("client secret", "ADBATCH_CLIENT_SECRET", "--client-secret-file")
            )
            raise ConfigError(
                f"config file {path}: keep the {what} out of config files; use {var} or {option}"
            )
        if name == "no_progress":  # an option, not a field: options.resolve reads it
            try:
                out[name] = _flag(value)
            except _Wrong as exc:
                raise ConfigError(f"config file {path}: {key}: {exc.message(name)}") from None
            continue
        if name not in _FIELDS or name in _NOT_IN_FILES:
            import difflib

            near = difflib.get_close_matches(key, _keys("-" in key), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"config file {path}: unknown option {key!r}{hint}")
        if name in out:  # `threshold` and `thresholds`, `header` and `headers`
            raise ConfigError(f"config file {path}: {key!r} is given twice (by two spellings)")
        try:
            out[name] = typed(name, value)
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {key}: {exc}") from None
    return out
