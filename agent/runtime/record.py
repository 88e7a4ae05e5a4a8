"""Frozen records: what ``@dataclass(frozen=True)`` gives the runtime's config, without
importing ``dataclasses``.

``dataclasses`` pulls in ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``...) and
compiles an ``__init__``, ``__eq__``, ``__repr__`` and ``__hash__`` per class: ~15 ms of every
``corral-runtime create``, a third of its Python start-up. A :func:`record` class is declared
the same way (annotated fields, defaults, :func:`field` with ``default_factory``), type checkers
read it as a frozen dataclass (``dataclass_transform``), and :func:`replace` stands in for
``dataclasses.replace``.
"""

from __future__ import annotations

# Names for type checkers only: importing typing costs milliseconds on every CLI start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_kwargs):  # a no-op at run time
        return lambda cls: cls


class _Factory:
    """A field's ``default_factory``, as :func:`field` leaves it on the class."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A field whose default is made per instance (a dict, another record)."""
    return _Factory(default_factory)  # type: ignore[return-value]


_MISSING = object()


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    """Give ``cls`` a keyword-or-positional ``__init__`` over its annotated fields, value
    equality, a hash, a repr, and refuse attribute assignment (frozen)."""
    # Not inspect.get_annotations: importing inspect is what this module avoids.
    names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063
    defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
    for name, default in defaults.items():
        if isinstance(default, _Factory):
            delattr(cls, name)  # as dataclasses: no shared mutable default on the class
    qualname = cls.__qualname__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{qualname}() takes {len(names)} arguments, {len(args)} given")
        values = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in names or name in values:
                raise TypeError(f"{qualname}() got an unexpected or repeated argument {name!r}")
            values[name] = value
        for name in names[len(args) :]:
            if name not in values:
                default = defaults.get(name, _MISSING)
                if default is _MISSING:
                    raise TypeError(f"{qualname}() missing argument {name!r}")
                values[name] = default.make() if isinstance(default, _Factory) else default
        object.__setattr__(self, "__dict__", values)

    def _astuple(self: Any) -> tuple[Any, ...]:
        return tuple(self.__dict__[name] for name in names)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(_astuple(self) == _astuple(other))

    def __hash__(self: Any) -> int:
        return hash(_astuple(self))

    def __repr__(self: Any) -> str:
        fields = ", ".join(f"{name}={self.__dict__[name]!r}" for name in names)
        return f"{qualname}({fields})"

    def __setattr__(self: Any, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen {qualname}")

    def __delattr__(self: Any, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a frozen {qualname}")

    for method in (__init__, __eq__, __hash__, __repr__, __setattr__, __delattr__):
        method.__qualname__ = f"{qualname}.{method.__name__}"
        setattr(cls, method.__name__, method)
    cls.__record_fields__ = names  # type: ignore[attr-defined]
    return cls


def replace(obj: T, **changes: Any) -> T:
    """A copy of the record ``obj`` with ``changes`` applied (``dataclasses.replace``)."""
    names: tuple[str, ...] = obj.__record_fields__  # type: ignore[attr-defined]
    unknown = set(changes) - set(names)
    if unknown:
        raise TypeError(f"{type(obj).__qualname__} has no field {sorted(unknown)[0]!r}")
    copy = object.__new__(type(obj))
    object.__setattr__(copy, "__dict__", {**obj.__dict__, **changes})
    return copy
