"""`open_run`: what every run needs, opened in one place, in one order, for every driver.

`run` (one process), `--workers` (the parent), `load`/`replay` and the Ray driver all
start here, so a guarantee about starting or ending a run is written once.

Rules:
- Everything that can be refused is refused before anything is sent, in this order: the
  configuration, the inputs (each must be readable: `stat` only, each is opened once,
  when it is read, so a named pipe works), the outputs (`-o`, `--summary`: none may be
  an input or another output, files/paths.py, checked before anything is opened for
  writing), the open-files limit (raised to the hard limit; -c must fit), the output
  of an earlier run (`--resume` indexes it and cuts a torn last line), the summary file
  (created empty), the output (opened, or created).
- Then, on one exit stack: the driver's own early start (`prepare`: `--workers` forks
  its processes first, before any socket or thread exists), the embedded mock
  (`--mock`), the token provider (a dynamic token is fetched before any call), the
  transport.
- The run's secrets are gathered once (`Secrets`: the given token, client secret and
  proxy credentials, then every token the provider issues) and every record written
  through `write` is redacted with them.
- On every way out the output is closed (fsynced), and an EngineError raised inside a
  task group comes out as itself, so the CLI prints its one line. An output file
  deleted or replaced during the run ends it with exit 3 (files/sinks.py), also when
  that is only seen as the run ends.
- Closing an `-o URL` joins its parts, after the run's own signal handling has ended:
  with `handle_signals` a SIGINT/SIGTERM then stops the join (shutdown.interruptible;
  the parts are kept for --resume). A driver that has its summary when its block ends
  hands it over (`RunSession.summary`): a join that fails or is stopped is then told in
  that summary (its stop line, exit 3 or 130/143), which the CLI prints and writes to
  --summary, instead of an error that loses it. Without one, the error is raised.
- After a `--resume` run, however it ended, the output is left with one line per event,
  its latest record (files/resume.py's `compact`: the records the run superseded go,
  by an atomic rewrite). Then a run that read its whole input and found it shorter
  than the output's records is exit 3, input changed (`ResumeIndex.check_end`): only
  now, when every call it made is answered and written.
"""

from __future__ import annotations

import signal
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from engine.config import Config
from engine.core.events import ReadCounts
from engine.core.proxies import Proxies
from engine.core.records import Result, jsonl_parts
from engine.core.secrets import Secrets
from engine.core.stats import Summary
from engine.core.stops import Stop, output_stop
from engine.errors import FatalError, OutputError, plain_engine_errors
from engine.files.paths import check_outputs, written_by
from engine.files.resume import ResumeIndex, compact, open_resume
from engine.files.sinks import JsonlSink, create_output, kept
from engine.files.sources import check_inputs
from engine.files.storage import is_url, shown
from engine.net.auth import StaticToken, TokenProvider
from engine.net.providers import open_token_provider
from engine.net.proxy import run_proxies
from engine.net.tls import tls_context
from engine.net.transport import Transport, open_transport
from engine.runtime.engine import Engine
from engine.runtime.loop import check_open_files
from engine.runtime.shutdown import Interrupted, interruptible

if TYPE_CHECKING:
    from engine.files.parts import PartSink


@dataclass(slots=True, eq=False)
class RunSession:
    """One open run: its effective config and the parts every driver builds on."""

    config: Config  # pointed at the embedded mock with --mock
    tokens: TokenProvider
    transport: Transport | None
    secrets: Secrets
    sink: JsonlSink | PartSink | None
    resume: ResumeIndex | None
    counts: ReadCounts
    #: The driver's summary, set before its block ends: how the output closed (a join
    #: that failed or was stopped by a signal) is told in it rather than raised.
    summary: Summary | None = None
    #: The engine's stop, told when the output fails mid-run; `output_failed` then.
    stop: Callable[[Stop], None] | None = None
    output_failed: bool = False
    resumable: bool = True  # False for a schedule (load, replay): no --resume to offer

    def engine(self, config: Config | None = None) -> Engine:
        """The batch engine on this run's tokens and transport."""
        engine = Engine(config or self.config, self.tokens, self.transport, secrets=self.secrets)
        self.stop = engine.stop
        return engine

    def write(self, batch: list[Result]) -> None:
        """Append `batch` to the output as JSONL, redacted (a server may echo a token).
        An output that fails mid-run (a full disk) stops the run (exit 3, the summary
        says so): what was written stays, what comes after is dropped (--resume)."""
        assert self.sink is not None, "this run was opened without an output"
        if self.output_failed:
            return
        if self.config.records != "all":  # --records errors|none (load, replay)
            batch = kept(batch, self.config.records)
        try:
            for part in jsonl_parts(batch):  # big answers: one record at a time
                self.sink.write(self.secrets.redact_bytes(part))
        except OutputError as exc:
            if self.stop is None:
                raise
            self.output_failed = True
            self.stop(Stop(output_stop(str(exc), kept=exc.kept, resumable=self.resumable)))

    async def emit(self, batch: list[Result]) -> None:
        """`write` as the engine's asynchronous emit."""
        self.write(batch)


async def start_mock(config: Config, stack: AsyncExitStack) -> Config:
    """Start the embedded mock on `stack`; `config` pointed at it, with its OAuth client
    (so `--mock` exercises dynamic tokens)."""
    from engine.mock import running_mock  # the mock's server side loads only when asked

    handle = await stack.enter_async_context(running_mock())
    client_id, client_secret = handle.config.clients[0]
    return config.with_changes(
        endpoint=handle.delivery_url,
        token=None,
        token_url=handle.token_url,
        client_id=client_id,
        client_secret=client_secret,
        mock=False,
        proxy=None,  # the embedded mock is on this machine: never through a proxy
        no_proxy=True,
    )


def _resume_index(config: Config, to_url: bool) -> ResumeIndex | None:
    """What a --resume's output answers already (a URL's: its parts, open_part_output);
    a static shard's output resumed as another shard is exit 2 first."""
    from engine.files.manifests import check_resumed_shard  # (a --resume only)

    check_resumed_shard(config)
    return None if to_url else open_resume(config.output)


def _tls_options(config: Config) -> bool:
    return (config.cacert, config.client_cert, config.client_key) != (None, None, None)


def _delivery_tls(config: Config) -> ssl.SSLContext | None:
    """The delivery client's TLS context. http2 gets one of its own: httpcore sets ALPN
    (h2) on it, which the token client, on the shared one, must not offer. Without TLS
    options, None: the client builds the default one itself when it first opens an
    https:// connection (loading the system's CA store costs ~20 ms of CPU at start)."""
    if config.http_client == "http2":
        return tls_context(config, own=True)
    return tls_context(config) if _tls_options(config) else None


@asynccontextmanager
async def transport_for(config: Config) -> AsyncIterator[Transport | None]:
    """The delivery transport `config` asks for (None with --dry-run: nothing is sent).

    Every process that sends opens it here: a run, a --workers child, a Ray sender."""
    if config.dry_run:
        yield None
        return
    async with open_transport(
        concurrency=config.concurrency,
        timeout=config.timeout,
        client=config.http_client,
        max_response_bytes=config.max_response_bytes,
        tls=_delivery_tls(config),
        proxies=run_proxies(config),
    ) as transport:
        yield transport


@asynccontextmanager
async def open_run(
    config: Config,
    *,
    output: bool = True,
    inputs: bool = True,
    tokens: TokenProvider | bool = True,
    transport: bool = True,
    prepare: Callable[[AsyncExitStack], None] | None = None,
    handle_signals: bool = False,
) -> AsyncIterator[RunSession]:
    """Open a run as the module's rules say; close it on exit.

    `output`: open `config.output` (False: the driver writes elsewhere: `deliver`, Ray).
    `inputs`: check that the inputs open (False: the events come from a library caller).
    `tokens`: True for the config's provider, a provider to use instead, or False for
    none here (the Ray driver's token lives in an actor). `transport`: open the delivery
    transport (False in a process that sends nothing itself; never with --dry-run).
    `handle_signals` (the CLI): a signal stops the join of an `-o URL`'s parts.
    """
    config = given = config.validated()
    proxies = _checked(config, output=output, inputs=inputs)
    to_url = output and config.output is not None and is_url(config.output)
    index = _resume_index(config, to_url) if output and config.resume else None
    if config.summary is not None:
        create_output(config.summary)
    sink: JsonlSink | PartSink | None = None
    if to_url:  # written as parts, joined when the run ends well (files/parts.py)
        from engine.files.partjoin import open_part_output  # (a local output never loads it)

        sink, index = open_part_output(config)
    elif output:
        sink = JsonlSink(config.output, append=config.resume)
    ended = False
    session: RunSession | None = None
    try:
        with plain_engine_errors():
            async with AsyncExitStack() as stack:
                if prepare is not None:
                    prepare(stack)
                if config.mock:
                    config = await start_mock(config, stack)
                provider = await _provider(config, stack, tokens)
                sender = (
                    await stack.enter_async_context(transport_for(config)) if transport else None
                )
                secrets = _run_secrets(given, config, provider, proxies)
                session = RunSession(config, provider, sender, secrets, sink, index, ReadCounts())
                yield session
        ended = True
    finally:
        if sink is not None:
            _close_output(sink, session if ended else None, signals=handle_signals and to_url)
            if index is not None and config.output is not None and not to_url:
                _compact(config.output, index, quiet=not ended)
    if index is not None:  # an input that lost lines at its end, once all is written
        index.check_end()


def _close_output(sink: JsonlSink | PartSink, session: RunSession | None, *, signals: bool) -> None:
    """Close the output; `session`: the run ended well (an `-o URL` is joined), and a
    failure or a signal meanwhile goes into its summary when the driver handed one over."""
    try:
        with interruptible(signals and session is not None):
            sink.close(check=session is not None)
    except (FatalError, Interrupted) as exc:
        if session is None or session.summary is None:
            raise
        session.summary = _closing_told(session.summary, exc, sink.name)


def _closing_told(summary: Summary, exc: FatalError | Interrupted, name: str) -> Summary:
    """`summary` stopped by what ended the output's closing: its reason after the run's
    own, exit 3 (unless the run had a stop of its own) or 130/143 for a signal."""
    interrupted: int | None
    if isinstance(exc, Interrupted):
        reason = (
            f"interrupted by {signal.Signals(exc.signum).name} while the parts of output "
            f"{shown(name)} were joined: they are kept; run again with --resume to join them"
        )
        interrupted, code = summary.interrupted or exc.signum, FatalError.exit_code
    else:
        reason, interrupted, code = str(exc), summary.interrupted, exc.exit_code
    if summary.stopped is None:
        return replace(summary, stopped=reason, stop_code=code, interrupted=interrupted)
    if reason in summary.stopped:  # the run's own stop said it already
        return replace(summary, interrupted=interrupted)
    return replace(summary, stopped=f"{summary.stopped}; {reason}", interrupted=interrupted)


def _checked(config: Config, *, output: bool, inputs: bool) -> Proxies:
    """What can be refused before anything is opened (exit 2, now); the run's proxies."""
    if _tls_options(config):  # --cacert, --client-cert, --client-key (net/tls.py)
        tls_context(config)
    proxies = run_proxies(config)  # a proxy variable that cannot be used
    if inputs:
        check_inputs(
            config.inputs, input_format=config.input_format, options=config.storage_options
        )
    read = [("input", path) for path in config.inputs] if inputs else []
    check_outputs(read, written_by(config, records=output))
    if config.backend != "ray":  # a Ray run's calls go out on other machines
        check_open_files(config)
    return proxies


def _run_secrets(
    given: Config, config: Config, provider: TokenProvider, proxies: Proxies
) -> Secrets:
    """The given token and secret, the mock's with --mock, the proxy credentials (the
    password and the Proxy-Authorization form), then every token the provider issues."""
    named = (given.token, given.client_secret, config.token, config.client_secret)
    pairs = (
        (given.client_id, given.client_secret),
        (config.client_id, config.client_secret),
        *proxies.basic(),
    )
    return Secrets((*named, *proxies.secrets()), issued=provider.secrets, basic=pairs)


def _compact(path: str, index: ResumeIndex, *, quiet: bool) -> None:
    """--resume: one line per event in the output, its latest record, however the run
    ended (an error on the way out is not masked by one of this rewrite's)."""
    try:
        compact(path, index)
    except OutputError:
        if not quiet:
            raise


async def _provider(
    config: Config, stack: AsyncExitStack, tokens: TokenProvider | bool
) -> TokenProvider:
    if not isinstance(tokens, bool):
        return tokens
    return await open_token_provider(config, stack) if tokens else StaticToken(None)
