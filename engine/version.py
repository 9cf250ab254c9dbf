"""The package's version, in one place (pyproject.toml reads it from here)."""

__version__ = "0.1.0"

#: The User-Agent of calls for events without their own (`--user-agent`).
DEFAULT_USER_AGENT = "adbatch/" + __version__
