"""A small, strict schema layer over frozen dataclasses.

Every message is a frozen dataclass deriving from :class:`Message`. ``from_dict`` validates
types recursively (str, int, float, bool, list[X], dict[str, X], X | None, Literal[...],
nested messages), rejects unknown fields, then runs the class's ``validate`` hook. Errors
are :class:`ProtocolError` naming the dotted path of the field, e.g. ``resources.memory_limit``.

Each type is turned into a loader function once (type hints resolved, unions and generics
taken apart) and cached: decoding is on the heartbeat hot path, where walking ``typing``
objects per value cost more than the checks themselves.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from agent.protocol.errors import ProtocolError

M = TypeVar("M", bound="Message")

_MISSING = dataclasses.MISSING

Loader = Callable[[Any, str], Any]


class Message:
    """Base of every protocol object: ``to_dict``/``from_dict`` with validation."""

    _plans: ClassVar[dict[type, tuple[tuple[str, Loader, bool], ...]]] = {}
    _known: ClassVar[dict[type, frozenset[str]]] = {}
    _names: ClassVar[dict[type, tuple[str, ...]]] = {}

    def validate(self) -> None:
        """Cross-field checks; raise ProtocolError naming the field. Override as needed."""

    def to_dict(self) -> dict[str, Any]:
        names = Message._names.get(type(self))
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]
            Message._names[type(self)] = names
        return {name: _dump(getattr(self, name)) for name in names}

    @classmethod
    def from_dict(cls: type[M], data: Any, *, path: str = "") -> M:
        if not isinstance(data, dict):
            raise ProtocolError(path or cls.__name__, f"expected an object, got {_tname(data)}")
        plan = Message._plans.get(cls) or cls._plan()
        known = Message._known[cls]
        if not data.keys() <= known:
            unknown = sorted(set(data) - known)
            raise ProtocolError(_join(path, unknown[0]), "unknown field")
        kwargs: dict[str, Any] = {}
        for name, load, required in plan:
            if name in data:
                kwargs[name] = load(data[name], f"{path}.{name}" if path else name)
            elif required:
                raise ProtocolError(_join(path, name), "this field is required")
        obj = cls(**kwargs)
        try:
            obj.validate()
        except ProtocolError as exc:
            if path and not exc.field.startswith(path):
                raise ProtocolError(_join(path, exc.field), exc.message) from None
            raise
        return obj

    @classmethod
    def _plan(cls) -> tuple[tuple[str, Loader, bool], ...]:
        """(field name, loader, required) per field, built once per class."""
        hints = typing.get_type_hints(cls)
        plan = tuple(
            (
                f.name,
                _loader(hints[f.name]),
                f.default is _MISSING and f.default_factory is _MISSING,
            )
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        )
        Message._known[cls] = frozenset(name for name, _, _ in plan)
        Message._plans[cls] = plan
        return plan


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _tname(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _dump(value: Any) -> Any:
    if isinstance(value, Message):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


def _load(tp: Any, value: Any, path: str) -> Any:
    """Validate and convert ``value`` against the type ``tp`` (see :func:`_loader`)."""
    return _loader(tp)(value, path)


_LOADERS: dict[Any, Loader] = {}


def _loader(tp: Any) -> Loader:
    """The loader of a type, built once. A loader takes (value, path) and returns the value
    converted (nested messages, tuples, floats from ints) or raises ProtocolError."""
    try:
        return _LOADERS[tp]
    except KeyError:
        pass
    except TypeError:  # an unhashable type expression: build it every time
        return _build(tp)
    loader = _LOADERS[tp] = _build(tp)
    return loader


def _build(tp: Any) -> Loader:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return _union(get_args(tp))
    if origin is Literal:
        return _literal(get_args(tp))
    if origin in (list, tuple):
        return _sequence(_loader(get_args(tp)[0]), as_tuple=origin is tuple)
    if origin is dict:
        return _mapping(_loader(get_args(tp)[1]))
    if isinstance(tp, type) and issubclass(tp, Message):
        message_cls = tp
        return lambda value, path: message_cls.from_dict(value, path=path)
    if tp is Any:
        return lambda value, path: value
    if tp in _SCALARS:
        return _SCALARS[tp]
    raise TypeError(f"unsupported schema type {tp!r}")


def _union(args: tuple[Any, ...]) -> Loader:
    nullable = type(None) in args
    options = [_loader(arg) for arg in args if arg is not type(None)]

    def load(value: Any, path: str) -> Any:
        if value is None:
            if nullable:
                return None
            raise ProtocolError(path, "must not be null")
        first: ProtocolError | None = None
        for option in options:
            try:
                return option(value, path)
            except ProtocolError as exc:
                first = first or exc
        assert first is not None
        raise first

    return load


def _literal(allowed: tuple[Any, ...]) -> Loader:
    choices = ", ".join(repr(a) for a in allowed)

    def load(value: Any, path: str) -> Any:
        # ``==`` alone would let True pass for 1 and 1.0 for 1; a str subclass (a Django
        # TextChoices member) is its string. The literal itself is returned.
        for a in allowed:
            if value == a and _kind(value) == _kind(a):
                return a
        raise ProtocolError(path, f"must be one of {choices}, got {value!r}")

    return load


def _kind(value: Any) -> type:
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind
    return type(value)


def _sequence(item: Loader, *, as_tuple: bool) -> Loader:
    def load(value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise ProtocolError(path, f"expected a list, got {_tname(value)}")
        loaded = [item(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(loaded) if as_tuple else loaded

    return load


def _mapping(item: Loader) -> Loader:
    def load(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise ProtocolError(path, f"expected an object, got {_tname(value)}")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProtocolError(path, "keys must be strings")
            out[k] = item(v, f"{path}.{k}")
        return out

    return load


def _load_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(path, f"expected a boolean, got {_tname(value)}")
    return value


def _load_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(path, f"expected an integer, got {_tname(value)}")
    return value


def _load_float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(path, f"expected a number, got {_tname(value)}")
    return float(value)


def _load_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(path, f"expected a string, got {_tname(value)}")
    return value


_SCALARS: dict[Any, Loader] = {
    bool: _load_bool,
    int: _load_int,
    float: _load_float,
    str: _load_str,
}
