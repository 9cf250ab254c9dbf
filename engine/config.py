"""The run's frozen configuration and its validation (clear errors, no I/O).

Every option is keyword-only with a default; `Config.validated()` is the single place
that decides whether a combination of options makes sense, and each value's type (one
ConfigError line naming the field). Secrets are kept out of `repr()`, and a URL's
password and query values and a header's value show as messages show them, so a config
can be logged.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from engine.core.addresses import parse_listen
from engine.core.errors import ConfigError
from engine.core.events import header_problem
from engine.core.fieldtypes import check_field_types, shown_repr, with_tuples
from engine.core.headers import parse_headers
from engine.core.proxies import parse_proxy_url
from engine.core.secrets import token_problem
from engine.core.shown import quoted
from engine.core.stops import INTERNAL_STREAK
from engine.core.thresholds import parse_thresholds
from engine.core.urls import check_local, check_output, split_url, without_credentials
from engine.core.urls import check_option as check_storage_option
from engine.core.values import utf8_text

DEFAULT_ENDPOINT = "https://d.us.criteo.com/delivery/retailmedia"
DEFAULT_TOKEN_URL = "https://api.criteo.com/oauth2/token"
#: How to give credentials: the run's "no token" error and `config --show`'s note say it.
GIVE_TOKEN = (
    "give --token or ADBATCH_TOKEN, or --client-id with --client-secret-file or "
    "ADBATCH_CLIENT_SECRET, or use --mock to try adbatch on the embedded mock server"
)
DEFAULT_PART_SIZE = 64 << 20
DEFAULT_PART_SECONDS = 60.0
DEFAULT_TOKEN_WAIT = 30.0
DEFAULT_CONCURRENCY = 64
DEFAULT_TIMEOUT = 2.0
#: Longer input lines become error records (memory stays bounded).
DEFAULT_MAX_LINE_BYTES = 1 << 20
#: --max-line-bytes at most (1 GiB): a line is held whole in memory, and a larger
#: limit (2**63 and up) no longer fits the readers' index-sized integers.
MAX_LINE_BYTES = 1 << 30
#: --workers at most: processes of one machine (auto: one per core, no more than this);
#: 10**20 would fork until the machine gives out.
MAX_WORKERS = 256
#: Larger answers (after decompression) become `too_large` records (memory stays bounded).
DEFAULT_MAX_RESPONSE_BYTES = 8 << 20
#: Seconds of nothing but 429/503 (retry budget spent) after which a run stops (exit 3).
DEFAULT_GIVE_UP_AFTER = 60.0

#: `--format`: auto goes by file name.
Format = Literal["auto", "jsonl", "csv", "parquet"]


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (where plain http cannot be sniffed)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_port(option: str, text: str) -> None:
    """A URL's port, when it names one, is 1..65535 (else every call would fail)."""
    url = split_url(text, option)
    try:
        port = url.port
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigError(f"{option}: the port must be 1..65535, got {without_credentials(text)!r}")


HttpClient = Literal["http1", "session", "http2"]
#: `--http-client` values: adbatch's lean client (engine/net/http1.py), aiohttp's session,
#: or HTTP/2 on httpx (engine/net/http2.py, the extra adbatch[http2]; `--http2` for short).
HTTP_CLIENTS: tuple[HttpClient, ...] = ("http1", "session", "http2")
#: What `--http2` needs and lacks when the extra is not installed.
HTTP2_EXTRA = "--http2 needs the http2 extra: pip install 'adbatch[http2]'"


def http2_installed() -> bool:
    """httpx and h2 can be imported (looked up, not imported: no I/O beyond the path)."""
    return all(importlib.util.find_spec(name) is not None for name in ("httpx", "h2"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything one run needs. Build it with keywords; call `validated()` before use."""

    inputs: tuple[str, ...] = ("-",)
    output: str | None = None
    # --summary: the CLI writes the run's figures here at the end; open_run checks it
    # against the inputs and -o and creates it (empty) before the run.
    summary: str | None = None
    endpoint: str = DEFAULT_ENDPOINT
    partner_id: str | None = None
    user_agent: str | None = None
    ip: str | None = None
    token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    token_url: str = DEFAULT_TOKEN_URL
    token_wait: float = DEFAULT_TOKEN_WAIT
    concurrency: int = DEFAULT_CONCURRENCY
    rate: float | None = None
    timeout: float = DEFAULT_TIMEOUT
    http_client: HttpClient = "http1"
    ordered: bool = False
    dry_run: bool = False
    progress: bool = False
    mock: bool = False
    input_format: Format = "auto"
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # -o URL: the output is written as parts of at most part_size bytes or part_seconds of
    # records each, joined when the run ends (files/parts.py).
    part_size: int = DEFAULT_PART_SIZE
    part_seconds: float = DEFAULT_PART_SECONDS
    fail_fast_401: int = 20
    internal_streak: int = INTERNAL_STREAK  # records in a row with an internal error: exit 70
    streak_share: int = 1  # --workers sharing the streaks above (core/stops.InternalStreak)
    retries: int = 3
    backoff_base: float = 0.1
    backoff_cap: float = 10.0
    retry_after_cap: float = 30.0
    retry_budget: float = 0.2
    give_up_after: float = DEFAULT_GIVE_UP_AFTER
    adaptive: bool = True
    resume: bool = False
    grace: float = 10.0
    allow_insecure: bool = False
    # --proxy: an http:// proxy for every call instead of HTTP(S)_PROXY/ALL_PROXY (its
    # credentials are secrets: out of repr); --no-proxy: read none of those variables.
    proxy: str | None = field(default=None, repr=False)
    no_proxy: bool = False
    # TLS (net/tls.py): a PEM bundle trusted instead of the system store, and a client
    # certificate (its key in the same file or in client_key) for mutual TLS.
    cacert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    # --header 'Name: value' (repeatable): added to every delivery call (core/headers.py).
    headers: tuple[str, ...] = ()
    # --threshold EXPR (repeatable): pass/fail on the end figures, exit 4 (core/thresholds.py).
    thresholds: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None  # (I, N): this process takes shard I of N
    shard_by: Literal["position", "id"] = "position"
    backend: Literal["local", "ray"] = "local"
    workers: int = 1
    # Watching a run (engine/observe): Prometheus /metrics and the live dashboard, each
    # on HOST:PORT (a bare :PORT is loopback), up `metrics_linger` seconds after the run.
    metrics_addr: str | None = None
    dashboard: str | None = None
    metrics_linger: float = 0.0
    # --records: which call records load and replay write (run writes all: --resume
    # reads them); --series FILE: one line per second of mergeable figures (load, replay).
    records: Literal["all", "errors", "none"] = "all"
    series: str | None = None
    # --storage-option key=value (repeatable): fsspec options for URL inputs and outputs
    # (files/storage.py); values whose key names a credential are never shown.
    storage_options: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def validated(self, *, need_token: bool = True) -> Config:
        """This config, checked; raises ConfigError naming the option at fault.
        `need_token=False`: no credentials is no fault (`config --show`: not a run)."""
        if (listed := with_tuples(self)) is not self:  # a library caller's lists, as tuples
            return listed.validated(need_token=need_token)
        check_field_types(self)  # each field of its annotated type, before any other check
        if not self.inputs:
            raise ConfigError("no input given")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError(
                f"--rate must be a positive number of calls per second, got {self.rate}"
            )
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ConfigError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if self.http_client not in HTTP_CLIENTS:
            raise ConfigError(
                f"--http-client must be http1, session or http2, got {quoted(self.http_client)}"
            )
        if self.http_client == "http2" and not http2_installed():
            raise ConfigError(HTTP2_EXTRA)
        self._check_sizes()
        self._check_parts()
        if not (self.token_wait > 0 and math.isfinite(self.token_wait)):
            raise ConfigError(
                f"--token-wait must be a positive number of seconds, got {self.token_wait}"
            )
        self._check_input_format()
        if self.partner_id is not None and not self.partner_id.isdigit():
            raise ConfigError(f"--partner-id must be an integer, got {quoted(self.partner_id)}")
        self._check_header_values()
        self._check_extra_headers()
        if not self.mock:
            self._check_endpoint()
            self._check_credentials(need_token)
        self._validate_reliability()
        parse_thresholds(self.thresholds)  # a malformed one: ConfigError naming it
        if self.inputs.count("-") > 1:
            raise ConfigError("stdin ('-') can be read only once")
        self._validate_distribution()
        self._check_observers()
        if self.records not in ("all", "errors", "none"):
            raise ConfigError(f"--records must be all, errors or none, got {quoted(self.records)}")
        if self.proxy is not None:
            if self.no_proxy:
                raise ConfigError("give --proxy or --no-proxy, not both")
            parse_proxy_url(self.proxy, source="--proxy")
        return self

    def _check_sizes(self) -> None:
        """--workers, --max-line-bytes, --max-response-bytes: whole numbers in range."""
        if (
            isinstance(self.workers, bool)
            or not isinstance(self.workers, int)
            or not 1 <= self.workers <= MAX_WORKERS
        ):
            raise ConfigError(
                f"--workers must be a whole number from 1 to {MAX_WORKERS} or auto, "
                f"got {quoted(self.workers)}"
            )
        if not 64 <= self.max_line_bytes <= MAX_LINE_BYTES:
            raise ConfigError(
                f"--max-line-bytes must be 64 to {MAX_LINE_BYTES} (1 GiB), "
                f"got {self.max_line_bytes}"
            )
        if self.max_response_bytes < 1024:
            raise ConfigError(
                f"--max-response-bytes must be at least 1024, got {self.max_response_bytes}"
            )

    def _check_endpoint(self) -> None:
        """An http(s) URL with a host, a valid port and no #fragment: the query is added
        to it, and after a '#' it would never reach the server."""
        url = split_url(self.endpoint, "--endpoint")
        shown = without_credentials(self.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"--endpoint must be an http(s) URL, got {shown!r}")
        check_port("--endpoint", self.endpoint)
        if "#" in self.endpoint.partition("://")[2]:
            raise ConfigError(
                f"--endpoint must not hold a '#' (a fragment: the query would follow it "
                f"and never reach the server; write a '#' in a password as %23), got {shown!r}"
            )

    def _check_parts(self) -> None:
        """-o URL's parts (files/parts.py); the files only -o may be a URL among."""
        check_local("--summary", self.summary)
        check_local("--series", self.series)
        if self.part_size < 1024:
            raise ConfigError(
                f"--part-size must be at least 1 KiB (1024 bytes), got {self.part_size}"
            )
        if not (self.part_seconds > 0 and math.isfinite(self.part_seconds)):
            raise ConfigError(
                f"--part-seconds must be a positive number of seconds, got {self.part_seconds}"
            )

    def _validate_reliability(self) -> None:
        if self.retries < 0:
            raise ConfigError(f"--retries must be 0 or more, got {self.retries}")
        for name in ("backoff_base", "backoff_cap", "retry_after_cap", "grace", "give_up_after"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                option = "--" + name.replace("_", "-")
                raise ConfigError(f"{option} must be a number of seconds >= 0, got {value}")
        if not (0 <= self.retry_budget <= 10 and math.isfinite(self.retry_budget)):
            raise ConfigError(
                f"--retry-budget must be a share of calls between 0 and 10, got {self.retry_budget}"
            )
        if self.resume and (self.output is None or self.output == "-"):
            raise ConfigError("--resume needs -o FILE: the output of the interrupted run")
        if self.mock or self.dry_run or self.allow_insecure:
            return  # --mock's endpoint is its own: the one given is not read
        url = split_url(self.endpoint, "--endpoint")
        if url.scheme == "http" and not is_loopback(url.hostname or ""):
            raise ConfigError(
                f"refusing to send the bearer token over plain http:// to {url.hostname}; "
                "use https://, or --allow-insecure if you really mean it"
            )

    def _validate_distribution(self) -> None:
        if self.shard_by not in ("position", "id"):
            raise ConfigError(f"--shard-by must be position or id, got {quoted(self.shard_by)}")
        if self.backend not in ("local", "ray"):
            raise ConfigError(f"--backend must be local or ray, got {quoted(self.backend)}")
        if self.shard is not None:
            if not (
                isinstance(self.shard, tuple | list)
                and len(self.shard) == 2
                and all(isinstance(n, int) for n in self.shard)
            ):
                raise ConfigError(f"--shard must be I/N such as 0/4, got {quoted(self.shard)}")
            index, count = self.shard
            if count < 1 or not 0 <= index < count:
                raise ConfigError(f"--shard must be I/N with 0 <= I < N, got {index}/{count}")
            if self.backend == "ray":
                raise ConfigError("--shard is for separate processes; --backend ray shards itself")
        if self.workers > 1 and (self.shard is not None or self.backend == "ray"):
            raise ConfigError(
                "--workers runs one machine's processes; give it without --shard or "
                "--backend ray (those spread a run by themselves)"
            )
        if self.backend == "ray":
            if self.output is None or self.output == "-":
                raise ConfigError("--backend ray needs -o FILE (shard parts are kept beside it)")
            if "-" in self.inputs:
                raise ConfigError("--backend ray reads files, not stdin")
            if self.resume:
                raise ConfigError(
                    "--backend ray resumes by itself (a rerun skips complete shards); drop --resume"
                )
        self._check_storage_options()  # where the inputs and outputs live
        check_output(self.output)  # an object's key: no query, fragment or empty segment

    def _check_storage_options(self) -> None:
        for pair in self.storage_options:
            if not (isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[1], str)):
                raise ConfigError("--storage-option must be KEY=VALUE pairs")
            check_storage_option(pair[0])

    def _check_observers(self) -> None:
        if self.metrics_addr is not None:
            parse_listen(self.metrics_addr, "--metrics-addr")
        if self.dashboard is not None:
            parse_listen(self.dashboard, "--dashboard")
        linger = self.metrics_linger
        if (
            isinstance(linger, bool)
            or not isinstance(linger, int | float)
            or not (linger >= 0 and math.isfinite(linger))
        ):
            raise ConfigError(
                f"--metrics-linger must be a number of seconds >= 0, got {quoted(linger)}"
            )
        if self.backend == "ray" and (self.metrics_addr or self.dashboard):
            raise ConfigError("--metrics-addr and --dashboard watch a local run, not --backend ray")

    def _check_input_format(self) -> None:
        if self.input_format not in ("auto", "jsonl", "csv", "parquet"):
            raise ConfigError(
                f"--format must be auto, jsonl, csv or parquet, got {quoted(self.input_format)}"
            )
        if self.input_format == "parquet" and "-" in self.inputs:
            raise ConfigError("Parquet is read from its footer, not from stdin: give a file")

    def _check_header_values(self) -> None:
        sent = (
            ("--user-agent", self.user_agent),
            ("--ip", self.ip),
            ("--endpoint", self.endpoint),  # the request line, the Host header
            ("--token-url", self.token_url),
        )
        for option, value in sent:
            if value is not None and (problem := header_problem(value)) is not None:
                raise ConfigError(f"{option} holds {problem}")
        if self.token is not None and (problem := token_problem(self.token)) is not None:
            # The token itself is never echoed, not even in part.
            raise ConfigError(
                f"the static token (--token, --token-file, ADBATCH_TOKEN) holds {problem}; "
                "an Authorization header cannot carry it: check how the token was copied"
            )

    def _check_extra_headers(self) -> None:
        names = {name.lower() for name, _ in self.extra_headers}
        if self.user_agent is not None and "user-agent" in names:
            raise ConfigError("give --user-agent or --header 'User-Agent: ...', not both")
        if self.ip is not None and "x-forwarded-for" in names:
            raise ConfigError("give --ip or --header 'X-Forwarded-For: ...', not both")
        if self.client_key is not None and self.client_cert is None:
            raise ConfigError("--client-key needs --client-cert")

    @property
    def extra_headers(self) -> tuple[tuple[str, str], ...]:
        """The `--header`s as (name, value) pairs; raises ConfigError when one is bad."""
        return parse_headers(self.headers)

    def _check_credentials(self, need_token: bool) -> None:
        if self.token is not None and (
            self.client_id is not None or self.client_secret is not None
        ):
            raise ConfigError(
                "give a static token (--token, --token-file, ADBATCH_TOKEN) or client "
                "credentials (--client-id, ADBATCH_CLIENT_ID), not both"
            )
        if self.client_id is not None and self.client_secret is None:
            raise ConfigError(
                "--client-id needs a client secret: --client-secret-file PATH or "
                "ADBATCH_CLIENT_SECRET"
            )
        if self.client_secret is not None and self.client_id is None:
            raise ConfigError("a client secret needs --client-id (or ADBATCH_CLIENT_ID)")
        if self.client_id is not None and self.client_secret is not None:
            utf8_text("the client id (--client-id, ADBATCH_CLIENT_ID)", self.client_id)
            secret = "the client secret (--client-secret-file, ADBATCH_CLIENT_SECRET)"
            utf8_text(secret, self.client_secret)
        if self.client_id is not None:
            url = split_url(self.token_url, "--token-url")
            if url.scheme not in ("http", "https") or not url.hostname:
                shown = without_credentials(self.token_url)
                raise ConfigError(f"--token-url must be an http(s) URL, got {shown!r}")
            check_port("--token-url", self.token_url)
            if url.scheme == "http" and not self.allow_insecure and not is_loopback(url.hostname):
                raise ConfigError(
                    f"refusing to send the client secret over plain http:// to {url.hostname}; "
                    "use https://, or --allow-insecure if you really mean it"
                )
        elif self.lacks_token and need_token:
            raise ConfigError(f"no token: {GIVE_TOKEN}")

    @property
    def lacks_token(self) -> bool:
        """No credentials where a run would need some (not --mock, not --dry-run)."""
        return not (self.mock or self.dry_run) and (self.token, self.client_id) == (None, None)

    @property
    def dynamic_tokens(self) -> bool:
        """OAuth2 client credentials (renewed tokens) rather than a static token."""
        return self.client_id is not None

    def __repr__(self) -> str:
        # Secrets are out of it; the other values as messages show them (core/shown.py).
        return shown_repr(self)

    def with_changes(self, **changes: Any) -> Config:
        return replace(self, **changes)
