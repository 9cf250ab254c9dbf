"""The options of run, load and replay (inputs and every option that shapes the calls).

Declarations only, group by group: the groups are added in the order `--help` lists them,
and the values keep argparse's None for "not given", so that config_from_args can tell
the command line from the environment and the config file.
"""

from __future__ import annotations

import argparse

from engine.cli.argtypes import part_size, storage_option
from engine.cli.options import (
    RefuseSecret,
    count,
    duration,
    nonneg_float,
    positive_duration,
    positive_int,
    rate,
    size,
    workers,
)
from engine.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_ENDPOINT,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT,
    DEFAULT_TOKEN_URL,
    DEFAULT_TOKEN_WAIT,
    HTTP_CLIENTS,
)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Inputs and every option that shapes the calls (run, load and replay share them)."""
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help=(
            "event files or URLs (s3://, gs://, az://, http(s)://; a glob or a prefix "
            "ending in / for its objects): .jsonl, .ndjson, .csv, optionally .gz, or "
            ".parquet; '-' or none reads stdin"
        ),
    )
    _add_io_options(io := p.add_argument_group("input and output"))
    _add_storage_options(io)
    api = p.add_argument_group("delivery API")
    _add_api_options(api)
    _add_token_options(api)
    _add_tls_header_options(api)
    _add_speed_options(p.add_argument_group("concurrency and limits"))
    _add_reliability_options(
        p.add_argument_group("retries, interruption and resume (docs/reliability.md)")
    )
    _add_watch_options(p.add_argument_group("watching the run (README: Watching a run)"))
    _add_other_options(p.add_argument_group("other"))


def _add_storage_options(io: argparse._ArgumentGroup) -> None:
    io.add_argument(
        "--storage-option",
        dest="storage_options",
        action="append",
        type=storage_option,
        metavar="KEY=VALUE",
        help="an fsspec option for URL inputs and outputs (s3://, gs://, az://, https://), "
        "e.g. endpoint_url=http://127.0.0.1:9000 (repeatable; true/false and whole numbers "
        "are typed; a dotted key sets one level of a dict: client_kwargs.region_name=eu-west-1; "
        "credentials come from the environment, as for the AWS CLI)",
    )


def _add_io_options(io: argparse._ArgumentGroup) -> None:
    io.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="write JSONL records here: a file, or a URL (s3://, gs://, az://, file://; "
        "uploaded as parts, joined at the end) (default: stdout)",
    )
    io.add_argument(
        "--records",
        choices=("all", "errors", "none"),
        help="which call records load and replay write: all (default), errors (the failed "
        "calls only) or none; run writes one per input line (--resume needs them)",
    )
    io.add_argument(
        "--format",
        "--input-format",
        dest="input_format",
        choices=("auto", "jsonl", "csv", "parquet"),
        help="input format (default: auto, from the file name: .csv/.tsv[.gz] is csv, "
        ".parquet/.pq is parquet, which needs adbatch[parquet], anything else and stdin jsonl)",
    )
    io.add_argument(
        "--ordered",
        action="store_true",
        default=None,
        help="write records in input order (default: completion order)",
    )
    io.add_argument(
        "--max-line-bytes",
        type=size,
        metavar="SIZE",
        help="longest input line accepted, in bytes: 1048576, 512k (SI: 512000), "
        f"1MiB (IEC: 1048576) (default: {DEFAULT_MAX_LINE_BYTES})",
    )
    io.add_argument(
        "--max-response-bytes",
        type=size,
        metavar="SIZE",
        help="largest answer kept, after decompression; a larger one becomes a too_large "
        f"record (default: {DEFAULT_MAX_RESPONSE_BYTES}, 8 MiB)",
    )
    io.add_argument(
        "--part-size",
        type=part_size,
        metavar="SIZE",
        help="-o URL (object storage) is written as parts joined at the end: bytes per "
        "part, 64MiB, 512k (default: 64MiB; 5MiB or more lets S3 join them server-side)",
    )
    io.add_argument(
        "--part-seconds",
        type=positive_duration,
        metavar="DURATION",
        help="-o URL: a part is uploaded after this long even when not full (default: 60s)",
    )
    io.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file of options (keys as the long options: concurrency = 32)",
    )


def _add_api_options(api: argparse._ArgumentGroup) -> None:
    api.add_argument(
        "--endpoint",
        metavar="URL",
        help=f"delivery URL (default: {DEFAULT_ENDPOINT}; env ADBATCH_ENDPOINT)",
    )
    api.add_argument(
        "--partner-id",
        metavar="ID",
        help="criteo-partner-id for events without one (env ADBATCH_PARTNER_ID)",
    )
    api.add_argument(
        "--user-agent",
        metavar="UA",
        help="User-Agent for events without one (default: adbatch/VERSION)",
    )
    api.add_argument("--ip", metavar="IP", help="X-Forwarded-For for events without one")
    api.add_argument(
        "--proxy",
        metavar="URL",
        help="http://[user:password@]host:port proxy for every call, instead of "
        "HTTPS_PROXY / HTTP_PROXY / ALL_PROXY (NO_PROXY still applies; credentials on "
        "the command line show in the process list: prefer the variables)",
    )
    api.add_argument(
        "--no-proxy",
        action="store_true",
        default=None,
        help="ignore HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY: every call goes direct",
    )


def _add_token_options(api: argparse._ArgumentGroup) -> None:
    api.add_argument(
        "--token",
        metavar="TOKEN",
        help="static bearer token; prefer env ADBATCH_TOKEN or --token-file, "
        "which keep it out of the process list",
    )
    api.add_argument("--token-file", metavar="PATH", help="read the static token from a file")
    api.add_argument(
        "--client-id",
        metavar="ID",
        help="OAuth2 client id: dynamic tokens, renewed in the background (env ADBATCH_CLIENT_ID)",
    )
    api.add_argument(
        "--client-secret-file",
        metavar="PATH",
        help="read the OAuth2 client secret from a file (or env ADBATCH_CLIENT_SECRET; "
        "never on the command line)",
    )
    api.add_argument("--client-secret", action=RefuseSecret, help=argparse.SUPPRESS)
    api.add_argument(
        "--token-url",
        metavar="URL",
        help=f"OAuth2 token endpoint (default: {DEFAULT_TOKEN_URL}; env ADBATCH_TOKEN_URL)",
    )
    api.add_argument(
        "--token-wait",
        type=positive_duration,
        metavar="DURATION",
        help="how long to keep asking an unavailable token endpoint before stopping "
        f"(default: {DEFAULT_TOKEN_WAIT:g})",
    )
    api.add_argument(
        "--mock",
        action="store_true",
        default=None,
        help="start the embedded mock server on a free loopback port and run "
        "against it (token handled for you)",
    )


def _add_tls_header_options(api: argparse._ArgumentGroup) -> None:
    api.add_argument(
        "--cacert",
        metavar="FILE",
        help="PEM bundle of the CAs to trust, instead of the system store, for delivery "
        "and token calls (as curl's --cacert)",
    )
    api.add_argument(
        "--client-cert",
        metavar="FILE",
        help="PEM client certificate for mutual TLS (its key in the same file, or --client-key)",
    )
    api.add_argument("--client-key", metavar="FILE", help="PEM key of --client-cert (unencrypted)")
    api.add_argument(
        "--header",
        dest="headers",
        action="append",
        metavar="'NAME: VALUE'",
        help="add this header to every delivery call (repeatable; not to token calls); "
        "an event's own user-agent, referer or ip still win",
    )


def _add_speed_options(speed: argparse._ArgumentGroup) -> None:
    speed.add_argument(
        "-c",
        "--concurrency",
        type=positive_int,
        metavar="N",
        help=f"calls in flight (default: {DEFAULT_CONCURRENCY})",
    )
    speed.add_argument(
        "--rate",
        type=rate,
        metavar="RATE",
        help="calls per second across the run: 500, 500/s, 30000/m, 1k (SI: 1000/s), "
        "1.5k/s (default: unlimited)",
    )
    speed.add_argument(
        "--workers",
        type=workers,
        metavar="N|auto",
        help="processes sharing the run, each with its own event loop and connections; "
        "auto = one per CPU core (default: 1)",
    )
    speed.add_argument(
        "--timeout",
        type=positive_duration,
        metavar="DURATION",
        help=f"time per call: 2, 2s, 500ms, 1m30s (default: {DEFAULT_TIMEOUT:g}s)",
    )
    client = speed.add_mutually_exclusive_group()
    client.add_argument(
        "--http-client",
        choices=HTTP_CLIENTS,
        help="http1: adbatch's lean keep-alive client (a BufferedProtocol on httptools), a "
        "fraction of the CPU per call; session: a plain aiohttp ClientSession, for a "
        "server the lean client trips on; http2: HTTP/2 on httpx, calls multiplexed over "
        "one connection per 100 in flight (needs pip install 'adbatch[http2]') "
        "(default: http1)",
    )
    client.add_argument(
        "--http2",
        dest="http_client",
        action="store_const",
        const="http2",
        help="short for --http-client http2 (HTTP/2 negotiated over https://; "
        "HTTP/1.1 where the server does not offer it)",
    )


def _add_reliability_options(rel: argparse._ArgumentGroup) -> None:
    rel.add_argument(
        "--retries",
        type=count,
        metavar="N",
        help="retries per event after the first attempt, for timeouts, connection errors, "
        "429, 500, 502, 503, 504 (default: 3; load and replay: 0)",
    )
    rel.add_argument(
        "--backoff-base", type=duration, metavar="DURATION", help="first backoff (default: 0.1)"
    )
    rel.add_argument(
        "--backoff-cap", type=duration, metavar="DURATION", help="longest backoff (default: 10)"
    )
    rel.add_argument(
        "--retry-after-cap",
        type=duration,
        metavar="DURATION",
        help="longest Retry-After honoured; longer is a final failure (default: 30)",
    )
    rel.add_argument(
        "--retry-budget",
        type=nonneg_float,
        metavar="R",
        help="retries allowed per first attempt, beyond a reserve of 100 (default: 0.2)",
    )
    rel.add_argument(
        "--give-up-after",
        type=duration,
        metavar="DURATION",
        help="stop (exit 3) when every call has been throttled (429/503), retries spent, "
        "or has failed to connect, for this long; --resume picks up the rest (default: 60)",
    )
    rel.add_argument(
        "--no-adaptive",
        dest="adaptive",
        action="store_false",
        default=None,
        help="do not lower the sending rate on a 429/503 storm",
    )
    rel.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="-o FILE holds records of an interrupted run: send only the events it lacks",
    )
    rel.add_argument(
        "--grace",
        type=duration,
        metavar="DURATION",
        help="on SIGINT/SIGTERM, how long the calls in flight may take to finish (default: 10)",
    )
    rel.add_argument(
        "--allow-insecure",
        action="store_true",
        default=None,
        help="allow sending the token over plain http:// to a host that is not loopback",
    )


def _add_watch_options(watch: argparse._ArgumentGroup) -> None:
    watch.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics while the run goes on "
        "(a bare :PORT is 127.0.0.1)",
    )
    watch.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        help="serve a live dashboard page at http://HOST:PORT/ (a bare :PORT is 127.0.0.1)",
    )
    watch.add_argument(
        "--metrics-linger",
        type=duration,
        metavar="DURATION",
        help="keep /metrics and the dashboard up DURATION after the run, for a last "
        "scrape (default: 0)",
    )
    watch.add_argument(
        "--threshold",
        dest="thresholds",
        action="append",
        metavar="EXPR",
        help="pass/fail on the end figures, repeatable: p99<250ms (load/replay: from the "
        "schedule; run: from the send), send.p99<200ms, errors<1%%, dropped<=0%%, "
        "rate>=490/s; any failed: exit 4",
    )


def _add_other_options(misc: argparse._ArgumentGroup) -> None:
    misc.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="write the URL and headers each event would send; send nothing",
    )
    misc.add_argument(
        "--no-progress",
        action="store_true",
        default=False,
        help="no live display (it shows only when stderr is a terminal and the records "
        "go elsewhere)",
    )
