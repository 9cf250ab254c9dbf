"""`python -m engine` is the `adbatch` command."""

from engine.cli.main import entry

entry()
