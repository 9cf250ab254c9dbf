"""A dataclass's fields against their annotations, and its repr as messages show values
(pure).

Rules:
- Each field's value is of its annotated type, checked once, generically (by the
  dataclass's own type hints, not one `if` per field): `int` is an int and not a bool,
  `float` an int or a float (not a bool), `bool` a bool, `X | None` either, a
  `tuple[T, ...]` a tuple of T (a lone str is not a tuple of str), a `tuple[A, B]` a
  tuple of two. A `Literal` field only needs the literals' type here: which values it
  takes is the field's own check, with its own message.
- A wrong one is one ConfigError line naming the field, the value as core/shown.py
  shows it (a secret never), its type, and the type expected.
- `shown_repr`: the fields that are in the repr, each as core/shown.py shows it (a URL
  without its password and query values, a header without its value).
"""

from __future__ import annotations

import types
from dataclasses import fields, replace
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from engine.core.errors import ConfigError
from engine.core.shown import shown_given, shown_value
from engine.core.urls import REDACTED

T = TypeVar("T")


def _matches(value: object, hint: Any) -> bool:
    origin = get_origin(hint)
    if hint is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_matches(value, arm) for arm in get_args(hint))
    if origin is Literal:
        return any(isinstance(value, type(literal)) for literal in get_args(hint))
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return len(value) == len(args) and all(map(_matches, value, args))
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


def _named(hint: Any) -> str:
    """The type expected, as a message says it: `int or None`, `a tuple of str`."""
    origin = get_origin(hint)
    if hint is type(None):
        return "None"
    if origin in (Union, types.UnionType):
        return " or ".join(_named(arm) for arm in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(literal) for literal in get_args(hint))
    if origin is tuple:
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_named(args[0])}"
        return f"a tuple ({', '.join(_named(arg) for arg in args)})"
    return getattr(hint, "__name__", str(hint))


def _tupled(value: object, hint: Any) -> object:
    """`value` with its lists as tuples where `hint` (or an arm of it) is a tuple."""
    arms = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    tuples = [arm for arm in arms if get_origin(arm) is tuple]
    if not tuples or not isinstance(value, list | tuple):
        return value
    args = get_args(tuples[0])
    inner = args[0] if len(args) == 2 and args[1] is Ellipsis else None
    return tuple(_tupled(item, inner) if inner is not None else item for item in value)


def with_tuples(instance: T) -> T:
    """The dataclass `instance` with a list given for a tuple field as that tuple (a
    library caller's `inputs=["a.jsonl"]`, `headers=[...]`), or itself."""
    hints = get_type_hints(type(instance))
    changes = {}
    for f in fields(instance):  # type: ignore[arg-type]
        value = getattr(instance, f.name)
        if isinstance(value, list | tuple) and (tupled := _tupled(value, hints[f.name])) != value:
            changes[f.name] = tupled  # (a list where no tuple goes stays: check_field_types)
    return replace(instance, **changes) if changes else instance  # type: ignore[type-var]


def _as_text(value: object) -> object:
    """`value` with its bytes as text, so that core/shown.py redacts them as it does a
    str (a bytes URL, header or secret was shown raw)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return type(value)(_as_text(item) for item in value)
    return value


def check_field_types(instance: object) -> None:
    """ConfigError (one line) for the first field of the dataclass `instance` whose
    value is not of its annotated type."""
    cls = type(instance)
    hints = get_type_hints(cls)
    for f in fields(instance):  # type: ignore[arg-type]
        value = getattr(instance, f.name)
        hint = hints[f.name]
        if not _matches(value, hint):
            shown = shown_given(f.name, _as_text(value))
            text = shown if shown == REDACTED else repr(shown)
            raise ConfigError(
                f"{cls.__name__}.{f.name} must be {_named(hint)}, "
                f"got {text} ({type(value).__name__})"
            )


def shown_repr(instance: object) -> str:
    """`Name(field=value, ...)` of the fields in the repr, each value as shown."""
    parts = []
    for f in fields(instance):  # type: ignore[arg-type]
        if not f.repr:
            continue
        value = getattr(instance, f.name)
        shown = shown_value(f.name, _as_text(value))
        if isinstance(value, tuple) and isinstance(shown, list):
            shown = tuple(shown)
        parts.append(f"{f.name}={shown!r}")
    return f"{type(instance).__name__}({', '.join(parts)})"
