"""The index of adbatch's subcommands: each one's name, its line in `adbatch --help` and
where its parser is built, so `main` can list every command and import only the module
of the one chosen (a command's modules cost start-up CPU: issue 18).

Imports nothing: every module of engine.cli may import it. A command module takes its
`help=` from here (`command_help`), so the line is written once.
"""

from __future__ import annotations

#: name -> (the module of engine.cli that adds its parser, its one-line help), in the
#: order `adbatch --help` lists them. A module may add several commands (run adds run,
#: merge and mock): it adds them all, once, whichever of them is chosen.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "send one delivery call per input event"),
    "merge": (
        "run",
        "join the outputs of `run --shard` and check they cover the input exactly once",
    ),
    "mock": (
        "run",
        "serve the embedded mock delivery + token server",
    ),
    "load": (
        "load",
        "open-model load test: calls on a schedule, whatever the latency",
    ),
    "replay": (
        "load",
        "send each event at its recorded timestamp (events or access logs)",
    ),
    "report": (
        "report",
        "figures of a run (its records or --series file): text, JSON, HTML; "
        "two runs: compared",
    ),
    "config": (
        "config_cmd",
        "show the resolved configuration and where each value came from",
    ),
}


def command_help(command: str) -> str:
    """The one-line help of `command`: its line in `adbatch --help`."""
    return COMMANDS[command][1]
