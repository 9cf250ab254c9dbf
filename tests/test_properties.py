"""Property tests: the query builder and the input readers (hypothesis)."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.core.events import ALWAYS_REQUIRED, Event, Invalid, make_event
from engine.core.query import RequestBuilder, encode_query
from engine.files.sources import parse_json_line, read_items

names = st.text(min_size=1, max_size=20).filter(
    lambda s: s not in {"id", "timestamp", "user-agent", "referer", "ip", *ALWAYS_REQUIRED}
)
values = st.text(min_size=1, max_size=40)


@given(st.dictionaries(names, values, max_size=12))
def test_any_params_round_trip_through_the_query_string(params: dict[str, str]) -> None:
    pairs = tuple(params.items())
    decoded = parse_qsl(encode_query(pairs), keep_blank_values=True, strict_parsing=False)
    assert decoded == list(pairs)


scalar = st.one_of(values, st.integers(min_value=0, max_value=10**30), st.booleans())


@given(
    st.dictionaries(names, st.one_of(scalar, st.lists(values, min_size=1, max_size=4)), max_size=8)
)
def test_any_event_dict_round_trips_through_the_request_url(extra: dict[str, object]) -> None:
    obj = {
        "criteo-partner-id": 1,
        "retailer-visitor-id": "v",
        "event-type": "viewHome",
        "page-id": "p",
        **extra,
    }
    item = make_event(obj, seq=0, source="s:1")
    assert isinstance(item, Event)
    builder = RequestBuilder("http://127.0.0.1:1/delivery/retailmedia", user_agent="adbatch/0.1.0")
    url = builder.build(item).url
    decoded = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    for key, value in obj.items():
        if isinstance(value, list):
            expected = "|".join(v for v in value if v)
        elif isinstance(value, bool):
            expected = "1" if value else "0"
        else:
            expected = str(value)
        if expected:
            assert decoded[key] == expected
        else:
            assert key not in decoded


@given(st.binary(max_size=300))
def test_no_bytes_crash_the_json_line_parser(raw: bytes) -> None:
    obj, error = parse_json_line(raw)
    assert (obj is None) != (error is None)


def _read_all(data: bytes, suffix: str) -> list[Event | Invalid]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in{suffix}"
        path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
        return list(read_items([str(path)], max_line_bytes=200))


def _non_blank_lines(data: bytes) -> int:
    return sum(1 for line in data.split(b"\n") if line.strip(b"\r\n\t\x0b\x0c ").strip())


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=250),
            st.dictionaries(names, scalar, max_size=5).map(lambda d: json.dumps(d).encode()),
        ),
        max_size=15,
    ).map(b"\n".join),
    st.sampled_from([".jsonl", ".jsonl.gz"]),
)
@example(b"\x1f\x8b\n\x00", ".jsonl")  # gzip magic in a plain file: still two lines
@example(b"\xef\xbb\xbf", ".jsonl")  # a byte order mark alone is a blank file
def test_no_bytes_crash_the_jsonl_reader_and_every_line_is_answered(
    data: bytes, suffix: str
) -> None:
    items = _read_all(data, suffix)
    assert [i.seq for i in items] == list(range(len(items)))
    # One item per line that is not blank (bytes.strip() is what the reader uses; a
    # UTF-8 byte order mark opening the file is not content).
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    assert len(items) == sum(1 for line in lines if line.rstrip(b"\r\n").strip())


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from([".csv", ".csv.gz"]))
def test_no_bytes_crash_the_csv_reader(data: bytes, suffix: str) -> None:
    items = _read_all(b"criteo-partner-id,event-type\n" + data, suffix)
    assert [i.seq for i in items] == list(range(len(items)))
    for item in items:
        assert isinstance(item, Event | Invalid)
