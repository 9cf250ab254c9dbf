"""What the parent and the workers of a `--workers N` run say to each other over their pipe.

Every message is a frozen slotted dataclass (pickled by `multiprocessing`), matched by
type with `match`; nothing is read by position.

    parent -> worker: Start, Units or Span (files/spans.py), Token, Refreshed, Halt, End
    worker -> parent: Answered, Records, Ordered, Refresh, LiveFigures, Done, Failed
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from engine.config import Config
from engine.core.events import EventDefaults, Item
from engine.core.stats import RunStats
from engine.core.tally import Tally
from engine.files.sources import Raw, Unit, raw_item
from engine.files.spans import Span
from engine.net.auth import Lease

if TYPE_CHECKING:
    from engine.core.records import Result
    from engine.runtime.engine import Engine


class WorkerJob(Protocol):
    """What a worker runs instead of the parent's input (load and replay: its share of
    the schedule). Pickled into `Start`; `run` returns what goes back in `Done.extra`."""

    async def run(
        self, engine: Engine, emit: Callable[[list[Result]], Awaitable[None]]
    ) -> object: ...


# -- parent -> worker -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """The worker's share of the run; until it comes, the worker only waits."""

    config: Config
    lease: Lease  # the current Authorization value, and for how long it may be sent
    ordered: bool  # send encoded lines with their seq, for the parent to order
    output: str | None  # the file to append records to itself (unordered, regular file)
    #: What the worker must redact from what it writes (the run's Secrets.texts(): the
    #: client secret and its Basic form too). Never used to ask for a token.
    secrets: tuple[str, ...] = ()
    #: Someone watches the run (--metrics-addr, --dashboard): send `LiveFigures`.
    live: bool = False
    #: Run this instead of the parent's input (no `Units` or `Span` then comes).
    job: WorkerJob | None = None
    #: --rate: the worker's limiter is held to a grid from `origin` (the parent's
    #: time.monotonic() when it started the run, one for all workers), `phase` (worker i
    #: of N: i / N) of a step after it, so the workers' calls interleave (runtime/limits).
    origin: float = field(default_factory=time.monotonic)
    phase: float = 0.0


@dataclass(frozen=True, slots=True)
class Units:
    """Input records to parse, check and send (at most the parent's credit).

    As three columns, not a list of `Unit`s: three lists pickle in a tenth of the time
    of as many small objects, and this is most of what crosses the pipe."""

    seqs: list[int]
    sources: list[str]
    raws: list[Raw]

    @classmethod
    def of(cls, units: list[Unit]) -> Units:
        return cls([u.seq for u in units], [u.source for u in units], [u.raw for u in units])

    def items(self, defaults: EventDefaults) -> list[Item]:
        """The Event or Invalid of each unit, as `files.sources.unit_item` gives it."""
        return [
            raw_item(seq, source, raw, defaults)
            for seq, source, raw in zip(self.seqs, self.sources, self.raws, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class Token:
    """The run's token changed (or cannot be had any more: `lease.failed`)."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class Refreshed:
    """The answer to `Refresh(used)`: whether a retry may help, and the lease to use."""

    used: str | None
    ok: bool
    lease: Lease


@dataclass(frozen=True, slots=True)
class Halt:
    """The run was interrupted: start no call, give those in flight `grace` seconds."""

    reason: str
    grace: float


@dataclass(frozen=True, slots=True)
class End:
    """No more input: finish the calls in flight, then report `Done`."""


#: The input as the parent hands it out (multiproc/parcels.py).
Parcel = Units | Span
ToWorker = Start | Parcel | Token | Refreshed | Halt | End

# -- worker -> parent -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answered:
    """`count` records were appended to the output by the worker itself."""

    count: int


@dataclass(frozen=True, slots=True)
class Records:
    """Encoded JSONL records for the parent to write (stdout, a pipe)."""

    data: bytes
    count: int


@dataclass(frozen=True, slots=True)
class Ordered:
    """Encoded records with their seq, for the parent to write in input order."""

    lines: list[tuple[int, bytes]]
    count: int


@dataclass(frozen=True, slots=True)
class Refresh:
    """A call sent with `used` got a 401: may the run have a new token?"""

    used: str | None


@dataclass(frozen=True, slots=True)
class LiveFigures:
    """What the worker counted since its last `LiveFigures` (a delta: the parent adds
    them up), and its calls in flight now. About twice a second, and once before `Done`."""

    tally: Tally
    in_flight: int
    token_waits: int = 0  # its calls that waited for a token so far (a total, not a delta)


@dataclass(frozen=True, slots=True)
class Done:
    """The worker's last word: its figures, and why it stopped the run (if it did)."""

    stats: RunStats
    stopped: str | None
    budget_refused: int
    slowed: str | None
    stop_code: int = 3  # the exit code of `stopped` (70: a streak of internal errors)
    extra: object = None  # what the worker's `Start.job` returned
    #: Its calls that waited for a token (only the parent's broker counts the rest).
    token_waits: int = 0


@dataclass(frozen=True, slots=True)
class Failed:
    """The worker failed; the parent fails the run with this text (`output`: its error
    was the output's, a full disk: an OutputError, exit 3, whose message says --resume)."""

    text: str
    output: bool = False
    kept: bool = False  # the output's OutputError.kept


ToParent = Answered | Records | Ordered | Refresh | LiveFigures | Done | Failed
