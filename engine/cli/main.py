"""Command line: arguments -> one frozen Config -> run. No logic of its own.

Precedence for every run option: command line, then environment (ADBATCH_*), then the
TOML file given with --config, then the built-in default.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import fields
from functools import partial
from typing import Any

import anyio
import orjson

from engine import api
from engine.cli import load as cli_load
from engine.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_ENDPOINT,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_TIMEOUT,
    DEFAULT_TOKEN_URL,
    DEFAULT_TOKEN_WAIT,
    HTTP_CLIENTS,
    Config,
)
from engine.errors import ConfigError, EngineError, InputError
from engine.runtime.loop import tune_gc

PROG = "adbatch"

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _shard(text: str) -> tuple[int, int]:
    from engine.core.shard import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_distribution_options(p: argparse.ArgumentParser) -> None:
    dist = p.add_argument_group("beyond one process")
    dist.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="take only shard I of N (I from 0, e.g. $JOB_COMPLETION_INDEX/4); "
        "join the outputs with `adbatch merge`",
    )
    dist.add_argument(
        "--shard-by",
        choices=("position", "id"),
        help="assign records to shards by position (default) or by a hash of their id",
    )
    dist.add_argument(
        "--backend",
        choices=("local", "ray"),
        help="local (default) or ray: spread the run over a Ray cluster (RAY_ADDRESS, "
        "or a local Ray); needs the extra adbatch[ray]",
    )


def _workers(text: str) -> int:
    if text == "auto":
        from engine.multiproc.parent import auto_workers

        return auto_workers()
    return _positive_int(text)


class _RefuseSecret(argparse.Action):
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


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="event files (.jsonl, .ndjson, .csv, optionally .gz); '-' or none reads stdin",
    )
    io = p.add_argument_group("input and output")
    io.add_argument(
        "-o", "--output", metavar="PATH", help="write JSONL records here (default: stdout)"
    )
    io.add_argument(
        "--format",
        dest="input_format",
        choices=("auto", "jsonl", "csv"),
        help="input format (default: auto, from the file name; stdin is jsonl)",
    )
    io.add_argument(
        "--ordered",
        action="store_true",
        default=None,
        help="write records in input order (default: completion order)",
    )
    io.add_argument(
        "--max-line-bytes",
        type=_positive_int,
        metavar="N",
        help=f"longest input line accepted (default: {DEFAULT_MAX_LINE_BYTES})",
    )
    io.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file of options (keys as the long options: concurrency = 32)",
    )

    api = p.add_argument_group("delivery API")
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
    api.add_argument("--client-secret", action=_RefuseSecret, help=argparse.SUPPRESS)
    api.add_argument(
        "--token-url",
        metavar="URL",
        help=f"OAuth2 token endpoint (default: {DEFAULT_TOKEN_URL}; env ADBATCH_TOKEN_URL)",
    )
    api.add_argument(
        "--token-wait",
        type=_positive_float,
        metavar="S",
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

    speed = p.add_argument_group("concurrency and limits")
    speed.add_argument(
        "-c",
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help=f"calls in flight (default: {DEFAULT_CONCURRENCY})",
    )
    speed.add_argument(
        "--rate",
        type=_positive_float,
        metavar="R",
        help="calls per second across the run (default: unlimited)",
    )
    speed.add_argument(
        "--workers",
        type=_workers,
        metavar="N|auto",
        help="processes sharing the run, each with its own event loop and connections; "
        "auto = one per CPU core (default: 1)",
    )
    speed.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help=f"seconds per call (default: {DEFAULT_TIMEOUT:g})",
    )
    speed.add_argument(
        "--http-client",
        choices=HTTP_CLIENTS,
        help="http1: adbatch's lean keep-alive client on aiohttp's protocol layer, about "
        "a fifth of the CPU per call; session: a plain aiohttp ClientSession, for a "
        "server the lean client trips on (default: http1)",
    )

    _add_reliability_options(p)

    misc = p.add_argument_group("other")
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
        help="no progress line (it shows only when stderr is a terminal)",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _add_reliability_options(p: argparse.ArgumentParser) -> None:
    rel = p.add_argument_group("retries, interruption and resume (docs/reliability.md)")
    rel.add_argument(
        "--retries",
        type=_count,
        metavar="N",
        help="retries per event after the first attempt, for timeouts, connection errors, "
        "429, 500, 502, 503, 504 (default: 3)",
    )
    rel.add_argument(
        "--backoff-base", type=_seconds, metavar="S", help="first backoff step (default: 0.1)"
    )
    rel.add_argument(
        "--backoff-cap", type=_seconds, metavar="S", help="longest backoff (default: 10)"
    )
    rel.add_argument(
        "--retry-after-cap",
        type=_seconds,
        metavar="S",
        help="longest Retry-After honoured; longer is a final failure (default: 30)",
    )
    rel.add_argument(
        "--retry-budget",
        type=float,
        metavar="R",
        help="retries allowed per first attempt, beyond a reserve of 100 (default: 0.2)",
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
        type=_seconds,
        metavar="S",
        help="on SIGINT/SIGTERM, seconds the calls in flight may take to finish (default: 10)",
    )
    rel.add_argument(
        "--allow-insecure",
        action="store_true",
        default=None,
        help="allow sending the token over plain http:// to a host that is not loopback",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fetch Criteo Retail Media ads for page-view events, fast, "
        "one JSONL record per event.",
        epilog="Try it: adbatch run --mock examples/pageviews.jsonl",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run_p = sub.add_parser(
        "run",
        help="send one delivery call per input event",
        description="Send one delivery call per input event and write one "
        "JSONL record per input line.",
    )
    _add_run_options(run_p)
    _add_distribution_options(run_p)
    run_p.add_argument("--summary", metavar="FILE", help="also write the run's figures as JSON")
    run_p.set_defaults(handler=_cmd_run)

    merge_p = sub.add_parser(
        "merge",
        help="join the outputs of `run --shard` and check they cover the input exactly once",
        description="Join the outputs of `adbatch run --shard I/N` into one file, each "
        "record once, and check every input record is there exactly once.",
    )
    merge_p.add_argument("parts", nargs="+", metavar="PART", help="shard output files")
    merge_p.add_argument("-o", "--output", required=True, metavar="PATH", help="merged file")
    merge_p.set_defaults(handler=_cmd_merge)

    mock_p = sub.add_parser(
        "mock",
        help="serve the embedded mock delivery + token server",
        description="Serve the embedded mock of the delivery host and its OAuth2 token endpoint.",
    )
    mock_p.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    mock_p.add_argument(
        "--port", type=int, default=8080, help="port, 0 for any (default: %(default)s)"
    )
    mock_p.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds added to every answer (default: %(default)s)",
    )
    mock_p.add_argument(
        "--token-lifetime",
        type=float,
        default=900.0,
        metavar="S",
        help="lifetime of issued tokens (default: %(default)s)",
    )
    mock_p.add_argument(
        "--fixed-body",
        metavar="FILE",
        help="answer every valid delivery call with this file's bytes (benchmarks)",
    )
    mock_p.set_defaults(handler=_cmd_mock)
    cli_load.add_parsers(sub, _add_run_options)
    return parser


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
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return value


def _env_value(name: str, var: str) -> Any:
    text = os.environ.get(var)
    if text is None or text == "":
        return None
    try:
        if name == "concurrency":
            return _positive_int(text)
        if name in ("rate", "timeout"):
            return _positive_float(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{var}: {exc}") from None
    return text


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
    merged["progress"] = (not args.no_progress) and sys.stderr.isatty()
    if merged.get("workers") == "auto":
        from engine.multiproc.parent import auto_workers

        merged["workers"] = auto_workers()
    if merged.get("partner_id") is not None:
        merged["partner_id"] = str(merged["partner_id"])
    if isinstance(merged.get("shard"), str):  # shard = "0/4" in a config file
        try:
            merged["shard"] = _shard(merged["shard"])
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"shard: {exc}") from None
    try:
        return Config(**merged).validated()
    except TypeError as exc:
        raise ConfigError(f"bad option value: {exc}") from None


def _run_async(fn: Callable[..., Any], *args: Any) -> Any:
    tune_gc()
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return anyio.run(fn, *args)
    return anyio.run(fn, *args, backend_options={"use_uvloop": True})


def _write_file(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if "-" in config.inputs and sys.stdin.isatty():
        print(
            f"{PROG}: reading events from stdin (JSONL; Ctrl-D ends, Ctrl-C aborts)",
            file=sys.stderr,
        )
    if args.summary:
        _write_file(args.summary, b"")  # a summary that cannot be written fails before the run
    if config.backend == "ray":
        from engine.distributed.ray_backend import run_ray

        summary = _run_async(run_ray, config)
    else:
        summary = _run_async(partial(api.run, handle_signals=True), config)
    print(f"{PROG}: {summary.line()}", file=sys.stderr)
    if summary.stopped:
        print(f"{PROG}: stopped: {summary.stopped}", file=sys.stderr)
    if args.summary:
        data = {"summary": summary, "exit_code": summary.exit_code}
        _write_file(args.summary, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    if summary.interrupted is not None:
        # The output is closed and synced; a reader thread may still block on stdin,
        # and the interpreter would wait for it at exit: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(summary.exit_code)
    return int(summary.exit_code)


def _cmd_merge(args: argparse.Namespace) -> int:
    from engine.distributed.merge import merge_outputs

    report = merge_outputs(args.parts, args.output)
    if report.exactly_once:
        print(f"{PROG}: {report.line()}", file=sys.stderr)
        return 0
    print(f"{PROG}: error: {report.line()}", file=sys.stderr)
    return 1


def _cmd_mock(args: argparse.Namespace) -> int:
    from engine.mock import MockConfig, serve

    fixed_body = None
    if args.fixed_body:
        try:
            with open(args.fixed_body, "rb") as f:
                fixed_body = f.read()
        except OSError as exc:
            raise ConfigError(
                f"cannot read --fixed-body {args.fixed_body}: {exc.strerror or exc}"
            ) from None
    serve(
        host=args.host,
        port=args.port,
        config=MockConfig(
            latency=args.latency, token_lifetime=args.token_lifetime, fixed_body=fixed_body
        ),
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except EngineError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
