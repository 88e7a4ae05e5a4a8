"""Frozen records (the runtime config's stand-in for frozen dataclasses) behave as those do."""

from __future__ import annotations

import pickle

import pytest

from agent.runtime.config import Capabilities, Mount, Process, RestartPolicy
from agent.runtime.record import replace


def test_a_record_takes_positional_and_keyword_fields_and_fills_defaults() -> None:
    mount = Mount("/proc", "proc", source="proc")
    assert (mount.destination, mount.type, mount.source, mount.options) == (
        "/proc",
        "proc",
        "proc",
        (),
    )


def test_a_default_factory_makes_a_new_value_per_record() -> None:
    first, second = Process(args=("/bin/true",)), Process(args=("/bin/sh",))
    assert first.capabilities == Capabilities()
    assert isinstance(first.capabilities, Capabilities)
    assert RestartPolicy().name == "no"
    assert first.capabilities is not second.capabilities
    assert "capabilities" not in vars(Process)  # no shared default left on the class


def test_records_compare_and_hash_by_value_and_only_with_their_own_class() -> None:
    assert Mount("/a", "bind", "/b") == Mount("/a", "bind", "/b", ())
    assert Mount("/a", "bind", "/b") != Mount("/a", "bind", "/c")
    assert hash(Mount("/a", "bind", "/b")) == hash(Mount("/a", "bind", "/b"))
    assert Mount("/a", "bind", "/b") != ("/a", "bind", "/b", ())  # type: ignore[comparison-overlap]
    assert repr(Mount("/a", "bind", "/b")) == (
        "Mount(destination='/a', type='bind', source='/b', options=())"
    )


def test_a_record_is_frozen() -> None:
    mount = Mount("/a", "bind", "/b")
    with pytest.raises(AttributeError, match="frozen"):
        mount.source = "/c"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del mount.source
    assert mount.source == "/b"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "missing argument 'destination'"),
        (("/a", "bind", "/b", (), "extra"), {}, "takes 4 arguments, 5 given"),
        (("/a", "bind", "/b"), {"nope": 1}, "unexpected or repeated argument 'nope'"),
        (("/a", "bind", "/b"), {"type": "proc"}, "unexpected or repeated argument 'type'"),
    ],
)
def test_bad_arguments_are_a_type_error_naming_the_field(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        Mount(*args, **kwargs)  # type: ignore[arg-type]


def test_replace_copies_with_changes_and_leaves_the_original() -> None:
    mount = Mount("/a", "bind", "/b")
    changed = replace(mount, source="/c")
    assert changed == Mount("/a", "bind", "/c")
    assert mount.source == "/b"
    with pytest.raises(TypeError, match="no field 'nope'"):
        replace(mount, nope=1)


def test_a_record_survives_pickling() -> None:
    process = Process(args=("/bin/true",), env=("A=1",))
    assert pickle.loads(pickle.dumps(process)) == process  # noqa: S301 - our own bytes
