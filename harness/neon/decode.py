"""One decoder for every Neon API model: a frozen dataclass is read from a JSON object
field by field, each field from the key of its own name, converted by its type hint.

Answers are read leniently, because Neon adds fields over time and the local server
answers only the subset we use: unknown keys are ignored; a key that is absent or null
leaves the field at its default (a field without one gets its type's empty value, "" for
a `str`); a value of the wrong kind is dropped the same way rather than failing the call.

What the type alone does not say goes in the field's metadata, `field(metadata=api(...))`:
a key of another name (or several, the first present one winning), a converter of its
own, or one that reads the whole object; a field no answer carries has `NOT_IN_ANSWERS`.
(Metadata rather than a field function of our own, so that type checkers still see
which fields have defaults.)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeVar

from cathouse_harness.support.redact import Secret
from cathouse_harness.support.timestamps import parse_time

T = TypeVar("T")
Read = Callable[[Any], Any]

_META = "cathouse_harness.api"


class _Absent:
    """A reader's answer meaning "no usable value": the field keeps its default."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class ApiField:
    keys: tuple[str, ...] = ()  # () = the field's name
    read: Read | None = None  # None = chosen by the type hint
    whole: bool = False  # `read` gets the whole object, not one key's value
    skip: bool = False  # no answer carries it: the caller passes it or the default stands


def api(
    *, key: str | tuple[str, ...] = (), read: Read | None = None, whole: bool = False
) -> Mapping[str, ApiField]:
    """Field metadata for the decoder: `key` names the JSON key (a tuple: the first one
    present and not null), `read` converts the value (with `whole`: the whole object)."""
    keys = (key,) if isinstance(key, str) else key
    return MappingProxyType({_META: ApiField(keys, read, whole)})


# the metadata of a field no answer carries: the caller passes it (`decode`'s `given`)
# or its default stands
NOT_IN_ANSWERS: Mapping[str, ApiField] = MappingProxyType({_META: ApiField(skip=True)})


# -- readers by type ------------------------------------------------------------------------


def _str(value: Any) -> Any:
    return ABSENT if value is None else str(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _bool(value: Any) -> Any:
    return ABSENT if value is None else bool(value)


def _int(value: Any) -> Any:
    try:
        return ABSENT if value is None else int(value)
    except (TypeError, ValueError):
        return ABSENT


def _optional_int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _secret(value: Any) -> Secret | None:
    # Secret() registers the value for scrubbing as it is parsed
    return Secret(str(value)) if value else None


# (type, optional) -> reader; `optional` is whether the hint admits None
_READERS: dict[tuple[Any, bool], Read] = {
    (str, False): _str,
    (str, True): _optional_str,
    (bool, False): _bool,
    (int, False): _int,
    (int, True): _optional_int,
    (datetime, True): parse_time,
    (Secret, True): _secret,
}


def _model_reader(model: type[Any]) -> Callable[[Mapping[str, Any]], Any]:
    # a model that reads more than its fields (ConnectionInfo) says so in its from_api
    from_api: Callable[[Mapping[str, Any]], Any] | None = getattr(model, "from_api", None)
    return from_api or (lambda data: decode(model, data))


def _nested(model: type[Any]) -> Read:
    read_model = _model_reader(model)
    return lambda value: read_model(value) if isinstance(value, Mapping) else ABSENT


def _nested_tuple(model: type[Any]) -> Read:
    read_model = _model_reader(model)

    # a list of objects; anything else in it (or in its place) is skipped
    def read(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            return ()
        return tuple(read_model(item) for item in value if isinstance(item, Mapping))

    return read


def _is_model(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _reader_for(hint: Any, where: str) -> Read:
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional and len(args) == 2:
        hint = args[1] if args[0] is type(None) else args[0]
    if (hint, optional) in _READERS:
        return _READERS[hint, optional]
    if not optional and _is_model(hint):
        return _nested(hint)
    inner = typing.get_args(hint)
    if not optional and typing.get_origin(hint) is tuple and inner[1:] == (Ellipsis,) and _is_model(inner[0]):
        return _nested_tuple(inner[0])
    raise TypeError(f"{where}: no reader for {hint!r}; give the field metadata=api(read=...)")


def _empty_value(hint: Any) -> Callable[[], Any]:
    # a model read from an empty object; str(), int(), bool() for the others
    return (lambda: _model_reader(hint)({})) if _is_model(hint) else hint


@dataclass(frozen=True)
class _Step:
    name: str
    keys: tuple[str, ...]
    read: Read
    whole: bool
    empty: Callable[[], Any] | None  # for a field without a default: its type's empty value


_PLANS: dict[type[Any], tuple[_Step, ...]] = {}


def _plan(cls: type[Any]) -> tuple[_Step, ...]:
    """How each field of `cls` is read, worked out once per class."""
    if cls in _PLANS:
        return _PLANS[cls]
    hints = typing.get_type_hints(cls)
    steps = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_META, ApiField())
        if not f.init or spec.skip:
            continue
        read = spec.read or _reader_for(hints[f.name], f"{cls.__name__}.{f.name}")
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        empty = None if has_default else _empty_value(hints[f.name])
        steps.append(_Step(f.name, spec.keys or (f.name,), read, spec.whole, empty))
    _PLANS[cls] = tuple(steps)
    return _PLANS[cls]


def _first_present(data: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((data[k] for k in keys if data.get(k) is not None), None)


def decode(cls: type[T], data: Mapping[str, Any], **given: Any) -> T:
    """An instance of the dataclass `cls` read from the JSON object `data`; fields in
    `given` are taken as they are instead of being read."""
    values = dict(given)
    for step in _plan(cls):
        if step.name in values:
            continue
        value = step.read(data if step.whole else _first_present(data, step.keys))
        if value is ABSENT:
            if step.empty is None:
                continue
            value = step.empty()
        values[step.name] = value
    return cls(**values)
