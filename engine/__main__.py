"""`python -m engine` is the `adbatch` command."""

from engine.cli.start import entry

entry()
