"""Args -> one Config: the refusal of secrets on the command line, the merge, the sources.

Precedence for every run option: command line, then environment (ADBATCH_*), then the
TOML file given with --config, then the built-in default. Secrets are never taken on the
command line or from a config file: only from the environment or a file of their own.
Every value is typed by its option's argument type (engine/cli/argtypes.py, re-exported
here) wherever it comes from: a bad value is one line, exit 2, naming the option, the
variable or the file's key (engine/cli/config_file.py).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from dataclasses import dataclass, fields
from typing import Any

from engine.cli.argtypes import (
    count,
    duration,
    nonneg_float,
    nonneg_rate,
    positive_duration,
    positive_float,
    positive_int,
    rate,
    seconds,
    shard,
    size,
    workers,
)
from engine.cli.common import say
from engine.cli.config_file import load_toml, typed
from engine.config import Config
from engine.core.values import utf8_text
from engine.errors import ConfigError
from engine.files.paths import check_outputs, written_by
from engine.files.storage import expand_inputs, is_url

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


# -- argument types (engine/cli/argtypes.py; re-exported for the command modules) -------

__all__ = [
    "ENV_VARS",
    "RefuseSecret",
    "config_from_args",
    "count",
    "duration",
    "nonneg_float",
    "nonneg_rate",
    "positive_duration",
    "positive_float",
    "positive_int",
    "rate",
    "resolve",
    "seconds",
    "shard",
    "size",
    "workers",
]


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


@dataclass(frozen=True, slots=True)
class Resolved:
    """The merged values by Config field, and where each came from (`config --show`):
    `option --rate`, `environment ADBATCH_RATE`, `file PATH`, `command default`; a field
    absent from both is the Config default."""

    values: dict[str, Any]
    sources: dict[str, str]


#: Fields whose option is not spelled as the field.
_OPTION_NAMES = {
    "input_format": "--format",
    "headers": "--header",
    "storage_options": "--storage-option",
}


def option_name(name: str) -> str:
    return _OPTION_NAMES.get(name, "--" + name.replace("_", "-"))


def resolve(args: argparse.Namespace, *, defaults: dict[str, Any] | None = None) -> Resolved:
    """Command line over environment over config file over `defaults`, typed."""
    merged: dict[str, Any] = dict(defaults or {})
    sources = dict.fromkeys(merged, "command default")
    if args.config:
        from_file = load_toml(args.config)
        if from_file.pop("no_progress", False):  # the display's switch, not a Config field
            args.no_progress = True
        merged.update(from_file)
        sources.update(dict.fromkeys(from_file, f"file {args.config}"))
    warn_unknown_variables()
    for name, var in ENV_VARS.items():
        value = _env_value(name, var)
        if value is not None:
            merged[name] = value
            sources[name] = f"environment {var}"
    for name in _CONFIG_FIELDS:
        value = getattr(args, name, None)
        if value is not None and name != "inputs":
            merged[name] = tuple(value) if isinstance(value, list) else value
            sources[name] = f"option {option_name(name)}"
    if args.token_file:
        if args.token is not None:
            raise ConfigError("give --token or --token-file, not both")
        merged["token"] = _read_secret_file(args.token_file, "token")
        sources["token"] = "option --token-file"
    if args.client_secret_file:
        merged["client_secret"] = _read_secret_file(args.client_secret_file, "client secret")
        sources["client_secret"] = "option --client-secret-file"
    if args.inputs:
        merged["inputs"] = tuple(args.inputs)
        sources["inputs"] = "option INPUT"
    return Resolved(merged, sources)


def config_from_args(args: argparse.Namespace, *, defaults: dict[str, Any] | None = None) -> Config:
    """Merge command line, environment and config file into one validated Config.
    `defaults`: the command's own defaults (load's retries=0), below all three."""
    resolved = resolve(args, defaults=defaults)
    merged = resolved.values
    # The live display redraws stderr's last lines: never while the records scroll by on
    # a terminal (no -o, or -o naming one: /dev/stdout, /dev/tty), nor on a file or a pipe.
    show = (not args.no_progress) and sys.stderr.isatty()
    merged["progress"] = show and not _records_on_terminal(merged.get("output"))
    try:
        config = Config(**merged).validated()
    except TypeError as exc:
        raise ConfigError(f"bad option value: {exc}") from None
    if config.mock and "endpoint" in merged:  # the mock's own URL replaces it
        say(
            f"warning: --mock sends every call to the embedded mock: the endpoint from "
            f"{resolved.sources['endpoint']} is not used"
        )
    if any(is_url(name) for name in config.inputs):  # globs and prefixes -> their objects,
        # here, so that --resume, --shard and --workers all see the same object list
        found = expand_inputs(config.inputs, config.storage_options, output=config.output)
        config = config.with_changes(inputs=found)
    # The files options are read from are inputs too (open_run checks the event inputs).
    option_files = [(f"--{name.replace('_', '-')}", getattr(args, name)) for name in _READ]
    tls_files = [("--cacert", config.cacert), ("--client-cert", config.client_cert)]
    option_files += [*tls_files, ("--client-key", config.client_key)]
    check_outputs(option_files, written_by(config))
    return config


def _records_on_terminal(output: str | None) -> bool:
    """The records go to a terminal: stdout's, or a path naming a character device that
    is a terminal (`-o /dev/stdout`, `/dev/stderr`, `/proc/self/fd/1`, `/dev/tty`)."""
    if output in (None, "-"):
        return sys.stdout.isatty()
    try:  # only a character device is opened to ask (a FIFO's reader would see an end)
        if "://" in output or not stat.S_ISCHR(os.stat(output).st_mode):
            return False
        fd = os.open(output, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False  # a file still to create, or one the run will refuse
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


#: Options whose value is a file adbatch reads (no output may overwrite it).
_READ = ("config", "token_file", "client_secret_file")


def _read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            value = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    utf8_text(f"{what} file {path}", value)  # its bytes are never echoed
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return value


_PREFIX = "ADBATCH_"


def warn_unknown_variables() -> None:
    """One line on stderr for each ADBATCH_* variable adbatch does not read (a typo such
    as ADBATCH_CONCURENCY would be silently ignored), naming the nearest it reads; never
    its value (it may be a secret)."""
    known = sorted(ENV_VARS.values())
    for var in sorted(os.environ):
        if not var.upper().startswith(_PREFIX) or var in known:
            continue
        import difflib  # (only on this warning: start-up, issue 18)

        stem = var.upper().removeprefix(_PREFIX)
        near = difflib.get_close_matches(stem, [k.removeprefix(_PREFIX) for k in known], n=1)
        hint = f"did you mean {_PREFIX}{near[0]}?" if near else "it reads " + ", ".join(known)
        say(f"warning: {var} is not a variable adbatch reads (ignored); {hint}")


def _env_value(name: str, var: str) -> Any:
    """ADBATCH_* typed as its option (`ADBATCH_RATE=1k`, `ADBATCH_TIMEOUT=2s`)."""
    text = os.environ.get(var)
    if text is None or text == "":
        return None
    try:
        return typed(name, text)
    except ConfigError as exc:
        raise ConfigError(f"{var}: {exc}") from None
