"""A small, strict schema layer over frozen dataclasses.

Every message is a frozen dataclass deriving from :class:`Message`. ``from_dict`` validates
types recursively (str, int, float, bool, list[X], dict[str, X], X | None, Literal[...],
nested messages), rejects unknown fields, then runs the class's ``validate`` hook. Errors
are :class:`ProtocolError` naming the dotted path of the field, e.g. ``resources.memory_limit``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from agent.protocol.errors import ProtocolError

M = TypeVar("M", bound="Message")

_MISSING = dataclasses.MISSING


class Message:
    """Base of every protocol object: ``to_dict``/``from_dict`` with validation."""

    _hints_cache: ClassVar[dict[type, dict[str, Any]]] = {}

    def validate(self) -> None:
        """Cross-field checks; raise ProtocolError naming the field. Override as needed."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _dump(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[M], data: Any, *, path: str = "") -> M:
        if not isinstance(data, dict):
            raise ProtocolError(path or cls.__name__, f"expected an object, got {_tname(data)}")
        hints = cls._hints()
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ProtocolError(_join(path, unknown[0]), "unknown field")
        kwargs: dict[str, Any] = {}
        for name, field in fields.items():
            fpath = _join(path, name)
            if name in data:
                kwargs[name] = _load(hints[name], data[name], fpath)
            elif field.default is _MISSING and field.default_factory is _MISSING:
                raise ProtocolError(fpath, "this field is required")
        obj = cls(**kwargs)
        try:
            obj.validate()
        except ProtocolError as exc:
            if path and not exc.field.startswith(path):
                raise ProtocolError(_join(path, exc.field), exc.message) from None
            raise
        return obj

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        hints = Message._hints_cache.get(cls)
        if hints is None:
            hints = typing.get_type_hints(cls)
            Message._hints_cache[cls] = hints
        return hints


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
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ProtocolError(path, "must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _load(arg, value, path)
            except ProtocolError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ProtocolError(path, f"must be one of {choices}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ProtocolError(path, f"expected a list, got {_tname(value)}")
        (item,) = get_args(tp)[:1]
        loaded = [_load(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(loaded) if origin is tuple else loaded
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(path, f"expected an object, got {_tname(value)}")
        _, vtype = get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProtocolError(path, "keys must be strings")
            out[k] = _load(vtype, v, f"{path}.{k}")
        return out
    if isinstance(tp, type) and issubclass(tp, Message):
        return tp.from_dict(value, path=path)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ProtocolError(path, f"expected a boolean, got {_tname(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(path, f"expected an integer, got {_tname(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(path, f"expected a number, got {_tname(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ProtocolError(path, f"expected a string, got {_tname(value)}")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")
