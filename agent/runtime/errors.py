"""The runtime's two errors: a bad config (names the field) and a failed step (keeps errno)."""

from __future__ import annotations

# Names for type checkers only: importing typing costs milliseconds on every CLI start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ConfigError(ValueError):
    """An OCI config that must not be run. ``field`` is the dotted path, e.g. ``process.args``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RuntimeFailure(Exception):
    """A step of creating or running a container failed. ``step`` names it (``rootfs.pivot``),
    ``errno`` is kept from the OSError when there was one."""

    def __init__(self, step: str, detail: str, errno: int | None = None) -> None:
        suffix = f" (errno {errno})" if errno else ""
        super().__init__(f"{step}: {detail}{suffix}")
        self.step = step
        self.detail = detail
        self.errno = errno

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "detail": self.detail, "errno": self.errno}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuntimeFailure:
        return cls(str(data.get("step", "unknown")), str(data.get("detail", "")), data.get("errno"))

    @classmethod
    def from_os(cls, step: str, exc: OSError) -> RuntimeFailure:
        return cls(step, exc.strerror or str(exc), exc.errno)


class ContainerNotFound(LookupError):
    """No container with this id in the state directory."""

    def __init__(self, container_id: str) -> None:
        super().__init__(f"container {container_id!r} does not exist")
        self.container_id = container_id
