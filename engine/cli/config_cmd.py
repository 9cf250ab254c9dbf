"""`adbatch config --show [run options...]`: the resolved configuration and where each
value came from (option, environment, file or default), as `adbatch run` would resolve
it. Secrets never show: the token and the client secret as [redacted], a proxy's
credentials as in every message (ProxyURL.shown). A configuration a run would refuse is
exit 2 after the table; one without credentials is exit 0 and a note on stderr.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from engine.cli.commands import command_help
from engine.cli.common import Subparsers, say
from engine.cli.options import resolve
from engine.cli.run_options import add_run_options
from engine.config import GIVE_TOKEN, Config
from engine.core.secrets import Secrets
from engine.core.shown import SECRETS, shown_value
from engine.core.urls import REDACTED
from engine.errors import ConfigError

#: Fields that adbatch decides itself (the live display: by the terminal).
_HIDDEN = {"progress"}


def add_parser(sub: Subparsers) -> None:
    """Add the config subcommand to the `adbatch` parser."""
    p = sub.add_parser(
        "config",
        help=command_help("config"),
        description="Resolve the run options as `adbatch run` does (command line, then "
        "ADBATCH_* variables, then the --config file, then the default) and print each "
        "value with its source. Secrets are redacted. Then exit 2 with the one line that "
        "would stop a run, if any; without credentials, a note on stderr says how to give "
        "them (exit 0: it is not a run).",
        epilog="Try it: ADBATCH_RATE=1k/s adbatch config --show --timeout 2s",
    )
    p.add_argument(
        "--show", action="store_true", help="print the configuration (the only action so far)"
    )
    add_run_options(p)
    p.set_defaults(handler=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    if not args.show:
        raise ConfigError("adbatch config needs --show")
    resolved = resolve(args)
    try:
        config = Config(**resolved.values)
    except TypeError as exc:
        raise ConfigError(f"bad option value: {exc}") from None
    # Belt and braces: a secret quoted in another value (a header, a URL) goes too.
    secrets = Secrets((config.token, config.client_secret), min_length=1)
    for line in show_lines(config, resolved.sources):
        print(secrets.redact(line))
    # After the table: what would stop a run is one line, exit 2; no credentials is not
    # (it is not a run, and --show is how one checks a setup before adding them).
    config.validated(need_token=False)
    if config.lacks_token:
        say(f"note: no token set; a run needs one: {GIVE_TOKEN}")
    return 0


def show_lines(config: Config, sources: dict[str, str]) -> list[str]:
    """One line per field: `name = value  # source`, the value as TOML writes it."""
    rows = []
    for f in fields(Config):
        if f.name in _HIDDEN:
            continue
        value = getattr(config, f.name)
        rows.append((f.name, _shown(f.name, value), sources.get(f.name, "default")))
    width = max(len(name) + len(value) for name, value, _ in rows) + 3
    return [f"{f'{name} = {value}':<{width}} # {source}" for name, value, source in rows]


def _shown(name: str, value: object) -> str:
    if value is None:
        return "(not set)"
    if name in SECRETS:
        return REDACTED  # as ever: no TOML quotes around a secret's place
    return _toml(shown_value(name, value))


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)
