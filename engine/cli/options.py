"""Argument types, the refusal of secrets on the command line, and args -> one Config.

Precedence for every run option: command line, then environment (ADBATCH_*), then the
TOML file given with --config, then the built-in default. Secrets are never taken on the
command line or from a config file: only from the environment or a file of their own.
A bad value is an argparse error on the command line and a ConfigError (exit 2) from
the environment or the config file.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tomllib
from dataclasses import fields
from typing import Any, NoReturn, TypeVar

from engine.config import Config
from engine.core.shard import parse_shard
from engine.errors import ConfigError
from engine.files.paths import check_outputs, written_by

#: Options that may also come from the environment.
ENV_VARS = {
    "token": "ADBATCH_TOKEN",
    "client_id": "ADBATCH_CLIENT_ID",
    "client_secret": "ADBATCH_CLIENT_SECRET",
    "token_url": "ADBATCH_TOKEN_URL",
    "endpoint": "ADBATCH_ENDPOINT",
    "partner_id": "ADBATCH_PARTNER_ID",
    "concurrency": "ADBATCH_CONCURRENCY",
    "rate": "ADBATCH_RATE",
    "timeout": "ADBATCH_TIMEOUT",
    "http_client": "ADBATCH_HTTP_CLIENT",
}

_CONFIG_FIELDS = {f.name for f in fields(Config)}


# -- argument types ----------------------------------------------------------------------

T = TypeVar("T", int, float)


def _number(text: str, kind: type[T], what: str) -> T:
    """`text` as an int or float; argparse's one-line error naming `what` when it is not."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _refuse(message: str) -> NoReturn:
    raise argparse.ArgumentTypeError(message)


def positive_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 1:
        _refuse(f"expected at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not value > 0:
        _refuse(f"expected a positive number, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not (value >= 0 and math.isfinite(value)):
        _refuse(f"expected 0 or more, got {text}")
    return value


def seconds(text: str) -> float:
    value = _number(text, float, "a number of seconds")
    if not (value >= 0 and value != float("inf")):
        _refuse(f"expected a number of seconds >= 0, got {text}")
    return value


def count(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 0:
        _refuse(f"expected 0 or more, got {value}")
    return value


def shard(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def workers(text: str) -> int:
    if text == "auto":
        return _auto_workers()
    return positive_int(text)


def _auto_workers() -> int:
    # Lazy: the multiprocessing machinery is loaded only when --workers auto asks for it.
    from engine.multiproc.driver import auto_workers

    return auto_workers()


class RefuseSecret(argparse.Action):
    """`--client-secret VALUE` would put the secret in the process list: refuse it.

    It also keeps argparse from taking `--client-secret` as short for
    `--client-secret-file` and echoing the secret back as a file name.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            "the client secret is not taken on the command line; "
            "use --client-secret-file PATH or ADBATCH_CLIENT_SECRET"
        )


# -- command line + environment + config file -> Config ---------------------------------


def config_from_args(args: argparse.Namespace) -> Config:
    """Merge command line, environment and config file into one validated Config."""
    merged: dict[str, Any] = _load_toml(args.config) if args.config else {}
    for name, var in ENV_VARS.items():
        value = _env_value(name, var)
        if value is not None:
            merged[name] = value
    for name in _CONFIG_FIELDS:
        value = getattr(args, name, None)
        if value is not None and name != "inputs":
            merged[name] = value
    if args.token_file:
        if args.token is not None:
            raise ConfigError("give --token or --token-file, not both")
        merged["token"] = _read_secret_file(args.token_file, "token")
    if args.client_secret_file:
        merged["client_secret"] = _read_secret_file(args.client_secret_file, "client secret")
    if args.inputs:
        merged["inputs"] = tuple(args.inputs)
    elif "inputs" in merged:
        merged["inputs"] = tuple(merged["inputs"])
    # The live display redraws stderr's last lines: never while the records scroll by on
    # the same terminal (no -o, stdout a terminal), nor on a file or a pipe.
    to_terminal = merged.get("output") in (None, "-") and sys.stdout.isatty()
    merged["progress"] = (not args.no_progress) and sys.stderr.isatty() and not to_terminal
    _coerce_file_values(merged)
    try:
        config = Config(**merged).validated()
    except TypeError as exc:
        raise ConfigError(f"bad option value: {exc}") from None
    # The files options are read from are inputs too (open_run checks the event inputs).
    option_files = [(f"--{name.replace('_', '-')}", getattr(args, name)) for name in _READ]
    tls_files = [("--cacert", config.cacert), ("--client-cert", config.client_cert)]
    option_files += [*tls_files, ("--client-key", config.client_key)]
    check_outputs(option_files, written_by(config))
    return config


#: Options whose value is a file adbatch reads (no output may overwrite it).
_READ = ("config", "token_file", "client_secret_file")


def _coerce_file_values(merged: dict[str, Any]) -> None:
    """A config file writes some values as the command line would: give them their type."""
    if merged.get("workers") == "auto":
        merged["workers"] = _auto_workers()
    if isinstance(merged.get("headers"), list | str):  # argparse's list, a TOML array
        headers = merged["headers"]
        merged["headers"] = (headers,) if isinstance(headers, str) else tuple(headers)
    if merged.get("partner_id") is not None:
        merged["partner_id"] = str(merged["partner_id"])
    if isinstance(merged.get("shard"), str):  # shard = "0/4" in a config file
        try:
            merged["shard"] = shard(merged["shard"])
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"shard: {exc}") from None


def _load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get("adbatch", data)
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name == "format":
            name = "input_format"
        if name == "header":  # header = ["X-Gateway: staging"], as --header
            name = "headers"
        if name not in _CONFIG_FIELDS:
            raise ConfigError(f"config file {path}: unknown option {key!r}")
        if name == "token":
            raise ConfigError(
                f"config file {path}: keep the token out of config files; "
                "use ADBATCH_TOKEN or --token-file"
            )
        if name == "client_secret":
            raise ConfigError(
                f"config file {path}: keep the client secret out of config files; "
                "use ADBATCH_CLIENT_SECRET or --client-secret-file"
            )
        out[name] = value
    return out


def _read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:  # its bytes are never echoed
        raise ConfigError(f"{what} file {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return value


def _env_value(name: str, var: str) -> Any:
    text = os.environ.get(var)
    if text is None or text == "":
        return None
    try:
        if name == "concurrency":
            return positive_int(text)
        if name in ("rate", "timeout"):
            return positive_float(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{var}: {exc}") from None
    return text
