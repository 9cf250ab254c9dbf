"""Parquet inputs -> events, by row group in bounded batches (pyarrow, the extra
`adbatch[parquet]`, imported only when a Parquet input is read).

Rules:
- Columns are the event keys, exactly as a JSONL object's keys: every row goes through
  `core.events.make_event`, so validation, defaults and hostile values behave the same.
- A null is an absent value (the key is left out); a list column gives a list. Values
  JSON has no type for become text first: a timestamp is ISO 8601
  (`2026-11-29T12:00:00.500000`, `+0100` when the column has a time zone), a date or a
  time its ISO text, a decimal its digits as stored (`12.50`), a float32 its shortest
  decimal text (`0.1`, not `0.10000000149011612`), binary its UTF-8 text (a value that is
  not UTF-8 makes its row invalid). A struct or a map is an object, which makes the row
  invalid as it does in JSONL.
- Every nesting reads as its plain counterpart: a list of any kind (large, fixed-size,
  list view) as a list, a dictionary-encoded column as its values, converted alike.
- A duration makes its row invalid, naming the column: the API takes none, and a bare
  count of an unnamed unit would be sent as if it were the number the column means.
- `source` is `file:row`, the row counted from 1 across the file; `seq` goes on across
  inputs as for lines.
- Memory: one batch of `BATCH_ROWS` rows at a time, and column chunks are streamed in
  `_BUFFER` pieces, so it does not grow with the file (nor with a row group).
- A file whose footer cannot be read: `InputError` (exit 2) when the run starts
  (`check`). A read error mid-file is one Invalid record at the first row not read; the
  rest of the file is unread (as for a truncated gzip).
- Shards by position (`--shard I/N`) take whole row groups: group g of a file belongs
  to shard (g + a hash of the file's base name) mod N, so each shard reads only its own
  groups and N shards cover the file exactly once. `seq` stays the whole input's (the
  footer gives every group's row count).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.core.events import NO_DEFAULTS, EventDefaults, Invalid, Item, ReadCounts, make_event
from engine.core.shard import ShardSpec, stable_hash
from engine.errors import ConfigError, InputError
from engine.files.position import input_size
from engine.files.storage import StorageOptions, is_url, open_read, reason, shown, source_name
from engine.files.unread import unread_error

U = TypeVar("U")

#: Rows per batch: a batch's rows are the Python objects held at once.
BATCH_ROWS = 2048
_BUFFER = 1 << 20
MISSING = "Parquet input needs pyarrow: pip install 'adbatch[parquet]'"
#: Why a duration is refused: the API takes no duration, and a count of an unnamed unit
#: (5 of what?) would be sent as if it were the number the column means.
DURATION = "which has no value in an event (a number of what?): store it as a number or text"


def _arrow() -> tuple[Any, Any, Any]:
    """(pyarrow, pyarrow.compute, pyarrow.parquet), or one line naming the extra."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(MISSING) from None
    return pa, pc, pq


def open_file(path: str, options: StorageOptions = ()) -> Any:
    """The `pyarrow.parquet.ParquetFile` of `path` (a URL: read by ranges), its footer
    read: InputError, one line, if it cannot be."""
    pa, _, pq = _arrow()
    source = open_read(path, options) if is_url(path) else path
    try:
        pf = pq.ParquetFile(source, buffer_size=_BUFFER, pre_buffer=False)
    except (OSError, ValueError, pa.ArrowException) as exc:
        if not isinstance(source, str):
            source.close()
        raise InputError(
            f"cannot read Parquet input {shown(path)}: {reason(exc, options)}"
        ) from None
    names = pf.schema_arrow.names
    if len(set(names)) != len(names):
        pf.close(force=True)  # also a URL's file, which pyarrow leaves open
        raise InputError(f"cannot read Parquet input {shown(path)}: it repeats a column name")
    return pf


def check(path: str, options: StorageOptions = ()) -> None:
    """Fail early, with one line, on a Parquet input whose footer cannot be read."""
    open_file(path, options).close(force=True)


def group_rows(path: str, options: StorageOptions = ()) -> list[int]:
    """The row count of each row group of `path` (from the footer)."""
    pf = open_file(path, options)
    try:
        meta = pf.metadata
        return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    finally:
        pf.close(force=True)


def group_owner(path: str, group: int, count: int) -> int:
    """The shard (0..count-1) that row group `group` of `path` belongs to."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return (group + stable_hash(name)) % count


# -- Arrow values -> JSON-like values ---------------------------------------------------


def _is(name: str, t: Any) -> bool:
    """`pyarrow.types.<name>(t)`, False where the installed pyarrow has no such type
    (list views and binary views came in pyarrow 16; the extra asks for 14)."""
    test = getattr(_arrow()[0].types, name, None)
    return test is not None and bool(test(t))


_LISTS = ("is_list", "is_large_list", "is_fixed_size_list", "is_list_view", "is_large_list_view")


def _is_list(t: Any) -> bool:
    return any(_is(name, t) for name in _LISTS)


def _leaf(t: Any) -> Any:
    """The type of the values under every list and dictionary of `t`: what each kind of
    nesting holds is read as its plain list's (or plain column's) values are."""
    while True:
        if _is("is_dictionary", t):
            t = t.value_type
        elif _is_list(t):
            t = t.value_type
        else:
            return t


#: Leaf types whose values are made text (or float64) in Arrow before rows are read.
_CAST = ("is_timestamp", "is_date", "is_time", "is_decimal", "is_float16", "is_float32")
_BINARY = ("is_binary", "is_large_binary", "is_fixed_size_binary", "is_binary_view")


def _needs_cast(t: Any) -> bool:
    leaf = _leaf(t)
    return any(_is(name, leaf) for name in (*_CAST, "is_duration"))


def _is_binary(t: Any) -> bool:
    leaf = _leaf(t)
    return any(_is(name, leaf) for name in _BINARY)


def _is_duration(t: Any) -> bool:
    return _is("is_duration", _leaf(t))


def _plain_list(arr: Any) -> Any:
    """A list array of any kind (fixed-size, large, view, sliced) as a list or large
    list of plain values. Built from `flatten` (this row's values, a null row's none)
    and the lengths, never from the child array by offset: a list view's and a
    fixed-size list's children need not be laid out as a list's."""
    pa, pc, _ = _arrow()
    large = _is("is_large_list", arr.type) or _is("is_large_list_view", arr.type)
    kind, width = (pa.LargeListArray, pa.int64()) if large else (pa.ListArray, pa.int32())
    lengths = pc.fill_null(pc.list_value_length(arr), 0).cast(width)
    zero = pa.array([0], width)
    offsets = pa.concat_arrays([zero, pc.cumulative_sum(lengths).cast(width)])
    return kind.from_arrays(offsets, _plain(arr.flatten()), mask=arr.is_null())


def _plain(arr: Any) -> Any:
    """An Arrow array whose values JSON can hold (see the module's rules)."""
    pa, pc, _ = _arrow()
    t = arr.type
    if _is("is_dictionary", t):
        return _plain(arr.dictionary_decode())
    if _is_list(t):
        return _plain_list(arr)
    if pa.types.is_timestamp(t):
        text = pc.cast(arr, pa.string())
        return pc.replace_substring(text, pattern=" ", replacement="T", max_replacements=1)
    if pa.types.is_float16(t) or pa.types.is_float32(t):
        return pc.cast(pc.cast(arr, pa.string()), pa.float64())
    if pa.types.is_duration(t):
        # Never sent (its row is refused, see _rows_of); as a plain count, since
        # to_pylist raises on a nanosecond count a timedelta cannot hold.
        return pc.cast(arr, pa.int64())
    if not _needs_cast(t):
        return arr  # the plain values under a list or a dictionary
    return pc.cast(arr, pa.string())


def _text(value: object) -> object:
    """A binary value's UTF-8 text (UnicodeDecodeError when it is not)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Row:
    """One Parquet row before it becomes an event: `obj`, or the `error` in its place."""

    row: int  # from 1 across the file
    obj: dict[str, object] | None
    error: str | None
    id: str | None = None  # an invalid row's id, when it has a text one


def _row_error(obj: dict[str, object], special: dict[str, bool]) -> str | None:
    """Why a row cannot be an event, or None; its binary columns (`special` False)
    become their text in place, a duration (True) is refused (see the module's rules)."""
    for name, duration in special.items():
        if name not in obj:
            continue
        if duration:
            return f"column {name!r} holds a duration, {DURATION}"
        try:
            obj[name] = _text(obj[name])
        except UnicodeDecodeError:
            return f"column {name!r} holds bytes that are not UTF-8"
    return None


def _rows_of(batch: Any, first: int, special: dict[str, bool]) -> Iterator[Row]:
    for offset, values in enumerate(batch.to_pylist()):
        obj = {k: v for k, v in values.items() if v is not None}
        error = _row_error(obj, special)
        if error is not None:
            event_id = obj.get("id")
            yield Row(first + offset, None, error, event_id if type(event_id) is str else None)
            continue
        yield Row(first + offset, obj, None)


def rows(
    path: str,
    groups: list[int] | None = None,
    *,
    counts: ReadCounts | None = None,
    options: StorageOptions = (),
    share: bool = False,
) -> Generator[Row, None, None]:
    """The rows of `path` (only those of `groups`, in file order, when given).

    `counts.bytes_read` goes up by each group's part of the file (`_parts`) once it is
    read, and by the rest at the end of a whole file; `share`: the parts of the groups
    not in `groups` are this reader's `counts.bytes_skipped` (a shard's total is its own)."""
    pa = _arrow()[0]
    pf = open_file(path, options)
    try:
        meta = pf.metadata
        parts = _parts(meta, input_size([path]))
        if counts is not None and share and groups is not None:
            counts.bytes_skipped += sum(parts) - sum(parts[g] for g in groups)
        schema = pf.schema_arrow
        cast = [i for i, f in enumerate(schema) if _needs_cast(f.type)]
        special = {
            f.name: _is_duration(f.type)
            for f in schema
            if _is_binary(f.type) or _is_duration(f.type)
        }
        starts = [1]
        for g in range(meta.num_row_groups):
            starts.append(starts[-1] + meta.row_group(g).num_rows)
        for g in range(meta.num_row_groups) if groups is None else groups:
            row = starts[g]
            try:
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g]):
                    if cast:
                        batch = _cast_batch(batch, cast)
                    yield from _rows_of(batch, row, special)
                    row += batch.num_rows
            except (OSError, ValueError, pa.ArrowException) as exc:
                yield Row(
                    row,
                    None,
                    unread_error(reason(exc, options), what="Parquet input"),
                )
                return
            if counts is not None:
                counts.bytes_read += parts[g]
        if counts is not None and groups is None:
            counts.bytes_read += parts[-1]  # the footer's part: a whole file counts its size
    finally:
        pf.close(force=True)


def _parts(meta: Any, size: int | None) -> list[int]:
    """How many of the file's `size` bytes each row group stands for, and last the
    footer's (what a file of no row group holds): every part in proportion to the group's
    column chunks, so that the parts add up to the size the progress's total counts (the
    footer and metadata included). Without a size, the chunks' own bytes."""
    chunks: list[int] = []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        chunks.append(sum(group.column(c).total_compressed_size for c in range(group.num_columns)))
    whole = sum(chunks)
    if size is None:
        return [*chunks, 0]
    if whole <= 0:
        return [0] * len(chunks) + [size]
    parts: list[int] = []
    before = done = 0
    for chunk in chunks:
        before += chunk
        upto = size * before // whole
        parts.append(upto - done)
        done = upto
    return [*parts, size - done]


def _cast_batch(batch: Any, columns: list[int]) -> Any:
    pa = _arrow()[0]
    arrays = list(batch.columns)
    for i in columns:
        arrays[i] = _plain(arrays[i])
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


# -- what sources.py, the shards and the Ray actors read --------------------------------


def _payload(row: Row, seq: int, source: str) -> dict[str, object] | Invalid:
    """What a row is before `make_event`: its object, or the Invalid of a row that cannot
    be an event (with its id). The one place a bad row is answered: a --workers parent
    hands this Invalid out as it is, so N processes write what one does."""
    if row.obj is None:
        return Invalid(seq, source, row.id, row.error or "unreadable row")
    return row.obj


def _item(row: Row, seq: int, name: str, defaults: EventDefaults) -> Item:
    source = f"{name}:{row.row}"
    payload = _payload(row, seq, source)
    if isinstance(payload, Invalid):
        return payload
    return make_event(payload, seq=seq, source=source, defaults=defaults)


def items(
    path: str,
    first_seq: int,
    *,
    defaults: EventDefaults = NO_DEFAULTS,
    counts: ReadCounts | None = None,
    shard: ShardSpec | None = None,
    options: StorageOptions = (),
) -> Generator[Item, None, int]:
    """The items of one Parquet input, seq from `first_seq`; returns the next seq.

    With a shard by position, only its row groups are read, and `counts.records` counts
    the rows of every group (as `shard.select` counts every record)."""
    if shard is None or shard.by != "position":
        seq = first_seq
        for row in rows(path, counts=counts, options=options):
            seq = first_seq + row.row
            item = _item(row, seq - 1, source_name(path), defaults)
            if shard is not None:  # by id: every row is read
                if counts is not None:
                    counts.records += 1
                if not shard.owns(item.seq, item.id):
                    continue
            yield item
        return seq
    sizes = group_rows(path, options)
    mine = [g for g in range(len(sizes)) if group_owner(path, g, shard.count) == shard.index]
    if counts is not None:
        counts.records += sum(sizes)
    for row in rows(path, mine, counts=counts, options=options, share=True):
        yield _item(row, first_seq + row.row - 1, source_name(path), defaults)
    return first_seq + sum(sizes)


def units(
    path: str,
    first_seq: int,
    make: Callable[[int, str, Any], U],
    *,
    counts: ReadCounts | None = None,
    options: StorageOptions = (),
) -> Generator[U, None, int]:
    """`sources.read_units` of a Parquet input: `make(seq, source, row dict | Invalid)`,
    the same seq, source and Invalid as `items`; returns the next seq."""
    seq = first_seq
    name = source_name(path)
    for row in rows(path, counts=counts, options=options):
        seq = first_seq + row.row
        source = f"{name}:{row.row}"
        yield make(seq - 1, source, _payload(row, seq - 1, source))
    return seq


def range_items(
    path: str,
    start: int,
    end: int,
    *,
    defaults: EventDefaults = NO_DEFAULTS,
    counts: ReadCounts | None = None,
    options: StorageOptions = (),
) -> Generator[Item, None, None]:
    """Row groups [start, end) of `path`, seq from 0 (a Ray shard); sources stay `path:row`."""
    groups = list(range(start, end))
    for seq, row in enumerate(rows(path, groups, counts=counts, options=options)):
        yield _item(row, seq, path, defaults)
