"""Command payloads (control plane -> agent) and reports (agent -> control plane)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agent.protocol.containers import ContainerSpec, ContainerStats, ContainerStatus, ImageRef
from agent.protocol.errors import ProtocolError
from agent.protocol.schema import Message

Verdict = Literal["pass", "warn", "fail", "unknown"]
OperationStatus = Literal["running", "succeeded", "failed"]


# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ping(Message):
    """Round-trip check; the agent answers with a succeeded OperationResult."""

    text: str = "ping"


@dataclass(frozen=True)
class RegistryAuth(Message):
    """Credentials for one pull; decrypted by the control plane only to send them."""

    username: str = ""
    password: str = ""
    ca_pem: str | None = None


@dataclass(frozen=True)
class PullImage(Message):
    image: ImageRef
    registry_url: str | None = None
    auth: RegistryAuth | None = None


@dataclass(frozen=True)
class CreateContainer(Message):
    """Create (and by default start) a container; ``pull`` fetches its image first when the
    host does not hold it yet."""

    spec: ContainerSpec
    start: bool = True
    pull: PullImage | None = None


@dataclass(frozen=True)
class ContainerAction(Message):
    """start / stop / restart / remove of one container."""

    container_id: str
    timeout: int = 10
    force: bool = False

    def validate(self) -> None:
        if not 0 <= self.timeout <= 3600:
            raise ProtocolError("timeout", "must be between 0 and 3600 seconds")


@dataclass(frozen=True)
class LogsRequest(Message):
    container_id: str
    tail: int | None = 100
    since: float | None = None

    def validate(self) -> None:
        if self.tail is not None and not 0 <= self.tail <= 100_000:
            raise ProtocolError("tail", "must be between 0 and 100000")


@dataclass(frozen=True)
class CollectInventory(Message):
    full: bool = True


# --- reports -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding(Message):
    """One certification check's result. ``id`` is stable, e.g. ``cert.selinux.E001``."""

    id: str
    verdict: Verdict
    message: str
    hint: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat(Message):
    """Cheap liveness report with the containers present on the host."""

    seq: int
    sent_at: float
    agent_version: str
    load1: float | None = None
    memory_total: int | None = None
    memory_available: int | None = None
    containers: list[ContainerStatus] = field(default_factory=list)
    inventory_hash: str = ""


@dataclass(frozen=True)
class InventoryReport(Message):
    """Full host inventory: one section per collector, each may be {"status": "unknown", ...}."""

    collected_at: float
    inventory: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)
    inventory_hash: str = ""


@dataclass(frozen=True)
class OperationResult(Message):
    """Progress or outcome of one command, keyed by the command's operation id."""

    operation_id: str
    status: OperationStatus
    error_code: str = ""
    error: str = ""
    step: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    finished_at: float | None = None

    def validate(self) -> None:
        if self.status == "failed" and not (self.error_code and self.error):
            raise ProtocolError("error", "a failed result needs an error code and a message")


@dataclass(frozen=True)
class ContainerEvent(Message):
    """A container changed state on the host (exit, OOM, restart by policy...)."""

    event: str
    status: ContainerStatus
    at: float
    stats: ContainerStats | None = None


PAYLOADS: dict[str, type[Message]] = {}


def _register() -> None:
    from agent.protocol import names as n

    PAYLOADS.update(
        {
            n.AGENT_PING: Ping,
            n.AGENT_INVENTORY_COLLECT: CollectInventory,
            n.AGENT_CERTIFICATION_RUN: CollectInventory,
            n.AGENT_CONTAINER_CREATE: CreateContainer,
            n.AGENT_CONTAINER_START: ContainerAction,
            n.AGENT_CONTAINER_STOP: ContainerAction,
            n.AGENT_CONTAINER_RESTART: ContainerAction,
            n.AGENT_CONTAINER_REMOVE: ContainerAction,
            n.AGENT_CONTAINER_LOGS: LogsRequest,
            n.AGENT_CONTAINER_STATS: ContainerAction,
            n.AGENT_IMAGE_PULL: PullImage,
            n.AGENT_IMAGE_GC: Ping,
            n.CP_HEARTBEAT: Heartbeat,
            n.CP_INVENTORY: InventoryReport,
            n.CP_OPERATION_RESULT: OperationResult,
            n.CP_CONTAINER_EVENT: ContainerEvent,
        }
    )


_register()


def payload_class(kind: str) -> type[Message]:
    try:
        return PAYLOADS[kind]
    except KeyError:
        raise ProtocolError("kind", f"unknown message kind {kind!r}") from None
