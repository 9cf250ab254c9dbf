"""Fuzz of the whole CLI: hostile input lines against a hostile server (issue 12, item 11).

hypothesis picks the input lines (lone surrogates as JSON escapes, control characters,
huge and deeply nested values, odd keys, non-object lines, invalid JSON, blank lines,
ids of any type), a script of raw answers (`tests/scripted_server.py`: any status,
Retry-After, Content-Encoding and Content-Length of any form, chunked, truncated,
oversized or compressed bodies, connections closed early, bodies and headers echoing the
token in its many spellings) and the run's options (both HTTP clients, --workers 1 or 2,
concurrency, retries, --ordered). For every example:

- every non-blank input line has exactly one record (at most one when the run stopped,
  exit 3 or 70: the lines not read then are for --resume), and a blank line none;
- the exit code is 0, 1, 3 or 70, and 0 only when every record is ok;
- stderr shows nothing that looks like a Python traceback;
- no spelling of the token reaches the output, stderr or the --summary file (its base64
  is echoed too, but issue 12 asks redaction of base64 for `id:secret` only);
- no record keeps a body past --max-response-bytes.

The CLI runs in this process (`main(argv)`, no interpreter start-up per example), with
stderr captured at the file descriptor as well (--workers children write there), and
warnings, logging, unraisable and thread exceptions shown on stderr as the bare CLI
would show them. The default run is small and derandomized (the same examples each
time); `ADBATCH_FUZZ_EXAMPLES=500` runs that many random ones (failures are kept in
.hypothesis/ and replayed first next time).
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus

import orjson
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from scripted_server import ECHOES, SPELLINGS, Answer, Coding, ScriptedServer, running_server

from engine.cli.main import main
from engine.core.records import parse_record

#: The static token: random-looking, with the characters each spelling writes differently.
TOKEN = "q7Zx/Rk+2mW9.pL4vT8s~Hd_Nc-Jf0Ye=="

#: --max-response-bytes of every run: small, so that an oversized answer is cheap.
MAX_RESPONSE_BYTES = 4096
EXAMPLES = int(os.environ.get("ADBATCH_FUZZ_EXAMPLES") or 0)
FUZZ = settings(
    max_examples=EXAMPLES or 25,
    derandomize=not EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=bool(EXAMPLES),
    # The explain phase reruns each failure many times (minutes here) to say which
    # parts of it vary freely; the shrunk example is enough.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)

VALID = {
    "criteo-partner-id": 12345,
    "retailer-visitor-id": "rv-1",
    "event-type": "viewHome",
    "page-id": "viewHome_API_desktop",
}

# -- input lines ----------------------------------------------------------------------------


class Raw(str):
    """JSON text written into a line as it is (a nesting too deep to build as objects)."""


def dump(value: object, ascii_only: bool) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        items = (f"{dump(str(k), ascii_only)}:{dump(v, ascii_only)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def line_bytes(value: object, ascii_only: bool) -> bytes:
    # A lone surrogate written without ensure_ascii is not UTF-8: an invalid line, as meant.
    return dump(value, ascii_only).encode("utf-8", "surrogatepass")


CHARS = st.one_of(
    st.characters(),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
    st.sampled_from([*map(chr, range(32)), "\x7f", "\x85", "\u2028", "\ufeff"]),
)
TEXT = st.text(CHARS, max_size=10)
KEYS = st.one_of(
    st.sampled_from(
        [
            *"id user-agent referer ip timestamp keywords item price page-id event-type".split(),
            *"criteo-partner-id retailer-visitor-id filters customer-id environment".split(),
            *"nolog availability quantity".split(),
            "",
        ]
    ),
    TEXT,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63),
    st.floats(),
    TEXT,
    st.sampled_from(["12.50", "-0", "1e400", "1E-400", "0.1e1", "1" * 40]).map(Raw),
)
VALUES = st.one_of(
    st.recursive(
        SCALARS,
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TEXT, kids, max_size=3),
        max_leaves=6,
    ),
    # Huge: a long URL, and past --max-line-bytes (100000).
    st.sampled_from([30_000, 70_000, 120_000]).map(lambda n: "h" * n),
    st.integers(1, 5000).map(lambda n: Raw("[" * n + "]" * n)),  # deep
)
IDS = st.one_of(st.text(max_size=8), SCALARS, VALUES)
#: Events that are valid, or nearly: these reach the server.
TAME = st.fixed_dictionaries(
    {},
    optional={
        "id": IDS,
        "keywords": st.text(st.characters(codec="utf-8"), max_size=8) | TEXT,
        "user-agent": st.text(st.characters(codec="ascii"), max_size=8) | TEXT,
        "referer": TEXT,
        "ip": TEXT,
        "price": st.sampled_from([1, 12.5, Raw("12.50"), "9.99"]),
    },
).map(lambda extra: {**VALID, **extra})
#: Events with anything in them, that most often are not.
WILD = st.dictionaries(KEYS, VALUES, max_size=4).map(lambda extra: {**VALID, **extra})
TAME_LINES = st.builds(line_bytes, TAME, st.booleans())
WILD_LINES = st.builds(line_bytes, WILD, st.booleans())
EVENT_LINES = TAME_LINES | WILD_LINES
LINES = st.one_of(
    TAME_LINES,
    TAME_LINES,
    TAME_LINES,
    WILD_LINES,
    WILD_LINES,
    st.builds(line_bytes, VALUES, st.booleans()),  # not an object (or not an event)
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),  # not JSON
    EVENT_LINES.map(lambda b: b[: len(b) // 2]),  # cut JSON
    st.sampled_from([b"", b" ", b"\t", b"\r", b" \t\x0b\x0c "]),  # blank
)

# -- answers --------------------------------------------------------------------------------

STATUS = st.one_of(
    st.sampled_from([b"200", b"200", b"201", b"204", b"304", b"400", b"401", b"408"]),
    st.sampled_from([b"429", b"500", b"503"]),
    st.integers(100, 599).map(lambda n: str(n).encode()),
    st.sampled_from([b"0", b"99", b"600", b"999", b"1000", b"abc", b"-1", b"2OO", b""]),
)
REASONS = st.sampled_from([b"OK", b"", b"Too Many Requests", b"\xff\xfe", *ECHOES])
RETRY_AFTER = st.one_of(
    st.sampled_from(
        [
            b"0",
            b"1",
            b"120",
            b"-5",
            b"1.5",
            b"",
            b"soon",
            b"1e400",
            b"nan",
            b"inf",
            b"0x10",
            b"1, 2",
            b"\xff\xfe",
            b"Wed, 21 Oct 2015 07:28:00 GMT",
            b"Fri, 31 Dec 9999 23:59:59 GMT",
            b"Mon, 01 Jan 0001 00:00:00 GMT",
            b"Thu, 01 Jan 1970 00:00:00 GMT",
            b"Sun, 06 Nov 1994 08:49:37 GMT",
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
            b"Tue, 31 Feb 2026 25:61:61 GMT",
        ]
    ),
    st.integers(1, 5000).map(lambda n: b"9" * n),  # past int()'s 4300 digits too
    st.sampled_from(ECHOES),
)
CONTENT_ENCODING = st.sampled_from(
    [
        b"gzip",
        b"x-gzip",
        b"deflate",
        b"br",
        b"zstd",
        b"identity",
        b"bogus",
        b"gzip, deflate",
        b"GZIP",
        b"",
        b"compress",
        b"gzip, gzip",
    ]
)
#: (how the body is encoded, what Content-Encoding says), matching.
CODING_PAIRS: list[tuple[Coding, bytes | None]] = [
    ("identity", None),
    ("gzip", b"gzip"),
    ("deflate", b"deflate"),
    ("raw_deflate", b"deflate"),
    ("gzip_cut", b"gzip"),
    ("garbage", b"gzip"),
    ("garbage", b"deflate"),
    ("bomb", b"gzip"),
]
CODINGS = st.sampled_from(CODING_PAIRS)
ODD_HEADERS = st.sampled_from(
    [
        (b"Connection", b"close"),
        (b"Connection", b"keep-alive"),
        (b"Content-Length", b"3"),
        (b"Content-Length", b"-1"),
        (b"Content-Length", b"abc"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Transfer-Encoding", b"gzip"),
        (b"Content-Type", b"application/json; charset=latin-1"),
        (b"Content-Type", b"text/plain"),
        (b"WWW-Authenticate", b'Bearer error="invalid_token"'),
        (b"X-Binary", b"\x00\x01\x7f\xff"),
        (b"X-Long", b"a" * 9000),
        (b"Bad Header", b"x"),
        (b"X-Folded", b"a\r\n b"),
        (b"", b"no name"),
        (b"X-Echo", b"{{auth:raw}}"),
        (b"Location", b"https://x.invalid/?t={{token:percent}}"),
        (b"Set-Cookie", b"t={{token:base64}}"),
        (b"X-Echo-Json", b"{{token:json_u}}"),
    ]
)
BODIES = st.one_of(
    st.sampled_from([b'{"status":"OK","placements":[]}', b"", b"not json", b"null"]),
    st.sampled_from(ECHOES).map(lambda e: b'{"status":"OK","echo":"' + e + b'"}'),
    st.sampled_from(ECHOES).map(lambda e: b'{"Status Message":"bad token ' + e + b'"}'),
    st.sampled_from(ECHOES).map(lambda e: b'{"echo":\n"' + e + b'"}'),  # re-encoded
    st.sampled_from(ECHOES).map(lambda e: b"you sent " + e),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.binary(max_size=64),
)
#: Bytes added to a body: some past --max-response-bytes, one past 6 times that.
PADDING = st.sampled_from([0, 0, 0, 100, 4000, 5000, 30000])


PLAUSIBLE_STATUS = st.sampled_from(
    [b"200", b"200", b"200", b"204", b"400", b"401", b"429", b"500", b"503"]
)


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    """An answer of a plausible server (a common status, well framed, kept alive; its
    body and headers may still be anything) or of a hostile one."""
    if draw(st.booleans()):
        coding, encoding = draw(CODINGS)
        headers = [] if encoding is None else [(b"Content-Encoding", encoding)]
        if draw(st.booleans()):
            headers.append((b"Retry-After", draw(RETRY_AFTER)))
        return Answer(
            status=draw(PLAUSIBLE_STATUS),
            headers=tuple(headers),
            body=draw(BODIES),
            coding=coding,
        )
    coding, encoding = draw(
        st.one_of(CODINGS, st.tuples(CODINGS.map(lambda c: c[0]), CONTENT_ENCODING))
    )
    headers = list(draw(st.lists(ODD_HEADERS, max_size=2)))
    if encoding is not None:
        headers.append((b"Content-Encoding", encoding))
    if draw(st.booleans()):
        headers.append((b"Retry-After", draw(RETRY_AFTER)))
    body = draw(BODIES)
    padding = draw(PADDING)
    if padding:
        body = body + b" " * padding if body.startswith((b"{", b"[")) else body + b"x" * padding
    return Answer(
        status=draw(STATUS),
        reason=draw(REASONS),
        headers=tuple(headers),
        body=body,
        coding=coding,
        framing=draw(
            st.sampled_from(
                "length length length short long huge none chunked chunked_bad chunked_cut".split()
            )
        ),
        end=draw(st.sampled_from(["keep", "keep", "keep", "close", "cut", "silent"])),
        preface=draw(st.sampled_from([b""] * 6 + [b"HTTP/1.1 100 Continue\r\n\r\n", b"junk\r\n"])),
        version=draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"ICY"])),
    )


OPTIONS = st.fixed_dictionaries(
    {
        "client": st.sampled_from(["http1", "session"]),
        "workers": st.sampled_from([1, 2]),
        "retries": st.integers(0, 1),
        "concurrency": st.sampled_from([1, 3, 16]),
        "ordered": st.booleans(),
    }
)

# -- running the CLI ------------------------------------------------------------------------


@contextmanager
def cli_environment(captured: io.StringIO) -> Iterator[None]:
    """What a user's shell gives the CLI: ADBATCH_TOKEN and no other ADBATCH_ variable;
    stderr (the Python object and fd 2, which --workers children inherit) into
    `captured`; warnings, log records, unraisable and thread exceptions written there
    as the bare interpreter would (pytest's own hooks are set aside meanwhile)."""
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("ADBATCH_")}
    for key in saved_env:
        del os.environ[key]
    os.environ["ADBATCH_TOKEN"] = TOKEN
    handler = logging.StreamHandler(captured)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    hooks = sys.unraisablehook, threading.excepthook
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as fd_file:
        os.dup2(fd_file.fileno(), 2)
        root.addHandler(handler)
        sys.unraisablehook, threading.excepthook = sys.__unraisablehook__, threading.__excepthook__
        try:
            with redirect_stderr(captured), warnings.catch_warnings():
                warnings.simplefilter("default")
                try:
                    yield
                finally:
                    gc.collect()  # an unraisable exception in a finalizer shows now
        finally:
            sys.unraisablehook, threading.excepthook = hooks
            root.removeHandler(handler)
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            os.environ.pop("ADBATCH_TOKEN", None)
            os.environ.update(saved_env)
            fd_file.seek(0)
            captured.write(fd_file.read().decode("utf-8", "replace"))


def run_cli(argv: list[str]) -> tuple[int | None, str]:
    """(exit code, stderr) of `adbatch *argv`; an exception out of main is shown on
    stderr as the interpreter would show it, and its exit code is None."""
    captured = io.StringIO()
    code: Any
    with cli_environment(captured):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            traceback.print_exc(file=captured)
            code = None
    return code, captured.getvalue()


# -- what must hold -------------------------------------------------------------------------

_TRACEBACK = re.compile(
    r"Traceback \(most recent call last\)|ExceptionGroup|Exception ignored in"
    r"|Task exception was never retrieved|^\s*[A-Za-z_][\w.]*(Error|Exception): ",
    re.MULTILINE,
)
_U_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


#: Spellings the server echoes but the run need not redact: issue 12 asks for the base64
#: of `id:secret` (client credentials), not of a static bearer token.
NOT_REDACTED = {"base64"}


def spellings() -> dict[str, str]:
    """Each spelling of the token (and of its Authorization header) a server may echo
    and the run must redact."""
    out: dict[str, str] = {}
    for what, text in (("token", TOKEN), ("auth", f"Bearer {TOKEN}")):
        for name, spell in SPELLINGS.items():
            if name not in NOT_REDACTED:
                out.setdefault(spell(text), f"{what}:{name}")
    return out


SPELLED = spellings()


def unescaped(text: str) -> Iterator[str]:
    """`text`, and `text` with its JSON escapes and percent-encoding undone."""
    json_undone = _U_ESCAPE.sub(lambda m: chr(int(m[1], 16)), text).replace("\\/", "/")
    yield from (text, json_undone, unquote(text), unquote_plus(text), unquote(json_undone))


def leaks(text: str) -> list[str]:
    found = [name for spelled, name in SPELLED.items() if spelled in text]
    if any(TOKEN in form for form in unescaped(text)):
        found.append("decoded")
    return found


def strings_of(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings_of(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_of(v)


def check_run(
    lines: list[bytes], code: int | None, stderr: str, output: bytes, summary: bytes, name: str
) -> None:
    context = f"exit {code}; stderr:\n{stderr[-3000:]}\noutput:\n{output[:1500]!r}"
    assert code in (0, 1, 3, 70), f"exit code must be 0, 1, 3 or 70: {context}"
    assert not _TRACEBACK.search(stderr), f"a traceback on stderr: {context}"

    for where, text in (("stderr", stderr), ("summary", summary.decode("utf-8", "replace"))):
        assert not leaks(text), f"the token in {where} as {leaks(text)}: {context}"
    assert not leaks(output.decode("utf-8", "replace")), f"the token in the output: {context}"

    assert output == b"" or output.endswith(b"\n"), f"the output ends mid-line: {context}"
    records = [parse_record(line) for line in output.splitlines()]
    for line, record in zip(output.splitlines(), records, strict=True):
        assert record is not None, f"not a record: {line[:300]!r}"
        assert record.seq is not None, f"not an adbatch record: {line[:300]!r}"
        assert record.source.rpartition(":")[0] == name, f"wrong source: {line[:300]!r}"
        for text in strings_of(record.fields):
            assert not leaks(text), f"the token in a record: {line[:1000]!r}"
        # An answer past --max-response-bytes keeps no body: what `response` takes in the
        # line (a JSON body verbatim, or a text one escaped, at worst 6 bytes a byte).
        kept = len(line) - len(orjson.dumps({**record.fields, "response": None})) + 4
        assert kept <= 6 * MAX_RESPONSE_BYTES, f"a {kept}-byte response: {line[:300]!r}"

    data = b"".join(line + b"\n" for line in lines)
    non_blank = {
        n for n, line in enumerate(data.split(b"\n")[:-1], 1) if line.rstrip(b"\r\n").strip()
    }
    per_line = Counter(int(r.source.rpartition(":")[2]) for r in records if r is not None)
    repeated = sorted(n for n, count in per_line.items() if count > 1)
    assert not repeated, f"lines {repeated} have more than one record: {context}"
    assert set(per_line) <= non_blank, (
        f"records for lines {sorted(set(per_line) - non_blank)}, blank or absent: {context}"
    )
    if code in (0, 1):
        missing = sorted(non_blank - set(per_line))
        assert not missing, f"lines {missing} have no record: {context}"
    if code == 0:
        assert all(r is not None and r.ok for r in records), f"exit 0 but not all ok: {context}"
    if summary:
        assert orjson.loads(summary)["exit_code"] == code, f"summary's exit code: {context}"


# -- the test -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with running_server() as running:
        yield running


def ev(**fields: object) -> bytes:
    """A valid event with `fields` (Raw values go in as written: escapes stay escapes)."""
    return dump({**VALID, **fields}, True).encode()


def opts(client: str = "http1", workers: int = 1, retries: int = 1) -> dict[str, Any]:
    return {
        "client": client,
        "workers": workers,
        "retries": retries,
        "concurrency": 3,
        "ordered": False,
    }


GZIP = ((b"Content-Encoding", b"gzip"),)
#: The cases of issue 12 that the default run must always cover, whatever it draws.
SURROGATES_AND_CONTROLS = [
    ev(id=Raw('"a\\ud800b"')),
    ev(keywords=Raw('"x\\udc00"')),
    b'{"k\\ud800":1,' + ev()[1:],
    ev(id=Raw("[1,{}]")),
    ev(**{"user-agent": "a\x00b\x0bc\x7f"}),
    ev(referer="r\x0c", ip="1.2.3.4\x7f"),
    b"",
    b"[1]",
    b"{not json",
]
ECHO_BODIES = [
    Answer(body=b'{"a":"{{token:json_u}}","b":"{{auth:json_slash}}","c":"{{token:json_mixed}}"}'),
    Answer(status=b"500", reason=b"{{token:raw}}", body=b'{"m":\n"{{token:json_u_upper}}"}'),
    Answer(status=b"400", body=b"you sent {{token:percent}} and {{auth:json_u}}"),
    Answer(status=b"503", headers=((b"Retry-After", b"{{token:raw}}"),), body=b""),
]


@pytest.mark.slow
@pytest.mark.timeout(60 + 15 * EXAMPLES)
@FUZZ
@given(
    lines=st.lists(LINES, min_size=1, max_size=8),
    script=st.lists(answers(), min_size=1, max_size=5),
    options=OPTIONS,
)
# Item 2: lone surrogates and control characters, both clients.
@example(lines=SURROGATES_AND_CONTROLS, script=[Answer()], options=opts("session"))
@example(lines=SURROGATES_AND_CONTROLS, script=[Answer()], options=opts("http1"))
# Item 1: a gzip bomb, a plain body over --max-response-bytes, a cut gzip stream.
@example(
    lines=[ev()] * 4,
    script=[
        Answer(headers=GZIP, coding="bomb"),
        Answer(body=b"x" * 30000),
        Answer(headers=GZIP, coding="gzip_cut"),
        Answer(headers=((b"Content-Encoding", b"bogus"),), coding="garbage"),
    ],
    options=opts("session"),
)
# Item 3: Retry-After past float and int(), a date far ahead, Content-Length lies.
@example(
    lines=[ev()] * 4,
    script=[
        Answer(status=b"429", headers=((b"Retry-After", b"9" * 5000),)),
        Answer(status=b"503", headers=((b"Retry-After", b"9" * 400),)),
        Answer(status=b"429", headers=((b"Retry-After", b"Fri, 31 Dec 9999 23:59:59 GMT"),)),
        Answer(framing="huge"),
        Answer(framing="short", body=b'{"a":1}' * 10),
        Answer(framing="chunked_bad"),
    ],
    options=opts("http1"),
)
# Item 6: the token echoed in its spellings, in bodies, a reason phrase and headers.
@example(lines=[ev()] * 4, script=ECHO_BODIES, options=opts("http1"))
# All of it under --workers 2.
@example(
    lines=SURROGATES_AND_CONTROLS + [ev()] * 4,
    script=[
        *ECHO_BODIES,
        Answer(headers=GZIP, coding="bomb"),
        Answer(status=b"429", headers=((b"Retry-After", b"9" * 5000),)),
    ],
    options=opts("session", workers=2),
)
def test_any_input_against_any_server(
    server: ScriptedServer, lines: list[bytes], script: list[Answer], options: dict[str, Any]
) -> None:
    server.play(script)
    with tempfile.TemporaryDirectory() as tmp:
        events, out, summary = (Path(tmp) / n for n in ("events.jsonl", "out.jsonl", "s.json"))
        events.write_bytes(b"".join(line + b"\n" for line in lines))
        argv = [
            "run", str(events), "-o", str(out), "--summary", str(summary),
            "--endpoint", server.url,
            "--http-client", options["client"],
            "--workers", str(options["workers"]),
            "-c", str(options["concurrency"]),
            "--retries", str(options["retries"]),
            "--backoff-base", "0", "--backoff-cap", "0.01", "--retry-after-cap", "0.05",
            "--timeout", "1",
            "--max-response-bytes", str(MAX_RESPONSE_BYTES),
            "--max-line-bytes", "100000",
            "--no-progress",
        ]  # fmt: skip
        if options["ordered"]:
            argv.append("--ordered")
        code, stderr = run_cli(argv)
        output = out.read_bytes() if out.exists() else b""
        summary_bytes = summary.read_bytes() if summary.exists() else b""
        # What the examples covered: pytest --hypothesis-show-statistics lists these.
        event(f"exit {code}, {options['client']}, --workers {options['workers']}")
        for line in output.splitlines():
            record = orjson.loads(line)
            event(f"record: {record.get('error_kind') or 'ok'}")
            if record.get("retries"):
                event("record: retried")
        check_run(lines, code, stderr, output, summary_bytes, str(events))
