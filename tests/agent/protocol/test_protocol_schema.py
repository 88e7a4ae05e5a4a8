"""The protocol's schema layer: every value is checked against its declared type, errors name
the dotted path of the field, and a message survives a round trip unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from agent.protocol.containers import ContainerSpec, PortMapping, Resources, SocketSpec
from agent.protocol.errors import ProtocolError
from agent.protocol.messages import Heartbeat
from agent.protocol.schema import Message


@dataclass(frozen=True)
class Inner(Message):
    level: Literal["low", "high"]
    weights: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Outer(Message):
    name: str
    count: int
    ratio: float = 1.0
    flags: tuple[bool, ...] = ()
    inner: Inner | None = None
    items: list[Inner] = field(default_factory=list)
    either: int | str = 0
    mode: Literal[1, 2] = 1


def error_of(cls: type[Message], data: object) -> tuple[str, str]:
    with pytest.raises(ProtocolError) as info:
        cls.from_dict(data)
    return info.value.field, info.value.message


def test_round_trip_and_conversions() -> None:
    data = {
        "name": "a",
        "count": 3,
        "ratio": 2,  # an integer is a number: stored as a float
        "flags": [True, False],  # a JSON list becomes the declared tuple
        "inner": {"level": "high", "weights": {"x": 1}},
        "items": [{"level": "low"}],
        "either": "text",
        "mode": 2,
    }
    obj = Outer.from_dict(data)
    assert obj.ratio == 2.0 and isinstance(obj.ratio, float)
    assert obj.flags == (True, False)
    assert obj.inner == Inner(level="high", weights={"x": 1.0})
    assert obj.items == [Inner(level="low")]
    assert obj.either == "text"
    assert Outer.from_dict(obj.to_dict()) == obj
    assert obj.to_dict()["flags"] == [True, False]


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        ([], "Outer", "expected an object, got list"),
        ({"count": 1}, "name", "this field is required"),
        ({"name": "a", "count": 1, "zzz": 1}, "zzz", "unknown field"),
        ({"name": "a", "count": True}, "count", "expected an integer, got bool"),
        ({"name": "a", "count": 1.5}, "count", "expected an integer, got float"),
        ({"name": None, "count": 1}, "name", "expected a string, got null"),
        ({"name": "a", "count": 1, "either": None}, "either", "must not be null"),
        ({"name": "a", "count": 1, "ratio": "x"}, "ratio", "expected a number, got str"),
        ({"name": "a", "count": 1, "flags": [1]}, "flags[0]", "expected a boolean, got int"),
        ({"name": "a", "count": 1, "inner": {"level": "mid"}}, "inner.level", None),
        ({"name": "a", "count": 1, "inner": {"level": "low", "zz": 1}}, "inner.zz", None),
        (
            {"name": "a", "count": 1, "items": [{"level": "low"}, {"level": 3}]},
            "items[1].level",
            None,
        ),
        (
            {"name": "a", "count": 1, "inner": {"level": "low", "weights": {"w": "x"}}},
            "inner.weights.w",
            "expected a number, got str",
        ),
        ({"name": "a", "count": 1, "items": {}}, "items", "expected a list, got dict"),
        ({"name": "a", "count": 1, "either": 1.5}, "either", "expected an integer, got float"),
        # Literal[1, 2] takes the integers only: True == 1 and 1.0 == 1, but are not them.
        ({"name": "a", "count": 1, "mode": True}, "mode", "must be one of 1, 2, got True"),
        ({"name": "a", "count": 1, "mode": 2.0}, "mode", "must be one of 1, 2, got 2.0"),
    ],
)
def test_errors_name_the_field(data: object, path: str, message: str | None) -> None:
    got_path, got_message = error_of(Outer, data)
    assert got_path == path
    if message is not None:
        assert got_message == message


def test_a_str_subclass_is_its_string_for_a_literal() -> None:
    import enum

    class Level(str, enum.Enum):  # noqa: UP042 - as Django's TextChoices members are
        HIGH = "high"

    loaded = Inner.from_dict({"level": Level.HIGH})
    assert loaded.level == "high" and type(loaded.level) is str


def test_validate_hooks_of_nested_messages_get_the_full_path() -> None:
    spec = {
        "id": "c1",
        "name": "web",
        "project": "p",
        "command": ["/bin/true"],
        "resources": {"memory_limit": 1024},
    }
    path, message = error_of(ContainerSpec, spec)
    assert path == "resources.memory_limit" and "at least" in message
    path, _ = error_of(
        ContainerSpec,
        {**spec, "resources": {}, "network": {"ports": [{"container_port": 0, "host_port": 80}]}},
    )
    assert path == "network.ports[0].container_port"


def test_real_messages_round_trip() -> None:
    beat = Heartbeat(
        seq=7, sent_at=1.5, agent_version="1", load1=0.25, memory_total=8, memory_available=4
    )
    assert Heartbeat.from_dict(beat.to_dict()) == beat
    assert Resources.from_dict({"cpu_weight": 100}).cpu_weight == 100
    assert PortMapping.from_dict({"container_port": 80, "host_port": 8080}).protocol == "tcp"
    assert error_of(SocketSpec, {"name": "s", "protocol": "sctp"})[0] == "protocol"
