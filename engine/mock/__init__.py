"""The embedded mock of Criteo's delivery host and OAuth2 token endpoint.

Serves the project's tests (``running_mock``), ``adbatch mock`` (``serve``) and the
benchmarks. See ``app.py`` for the order of checks on a delivery call.
"""

from .app import DELIVERY_PATH, STATE_KEY, TOKEN_PATH, make_app
from .params import ALWAYS_REQUIRED, REQUIRED_BY_TYPE
from .server import MockHandle, running_mock, serve
from .state import MockConfig, MockState, RecordedRequest

__all__ = [
    "ALWAYS_REQUIRED",
    "DELIVERY_PATH",
    "REQUIRED_BY_TYPE",
    "STATE_KEY",
    "TOKEN_PATH",
    "MockConfig",
    "MockHandle",
    "MockState",
    "RecordedRequest",
    "make_app",
    "running_mock",
    "serve",
]
