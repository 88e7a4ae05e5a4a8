"""Container messages: the spec a control plane sends and the states an agent reports."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from agent.protocol.errors import ProtocolError
from agent.protocol.schema import Message

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A socket's name is its LISTEN_FDNAMES entry, joined with ':': a plain word.
SOCKET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # below this even /bin/true under a shell is OOM-killed

ContainerMode = Literal["image", "host"]
NetworkMode = Literal["none", "host", "bridge"]
RestartPolicyName = Literal["no", "on-failure", "always"]
# Observed states an agent reports; the control plane keeps desired state beside them.
ContainerState = Literal["created", "running", "stopped", "exited", "paused", "unknown"]


@dataclass(frozen=True)
class Resources(Message):
    """Resource limits. ``None`` means no limit. CPU weight follows cgroup v2 (1-10000);
    drivers translate it for cgroup v1 shares (2-262144)."""

    cpu_weight: int | None = None
    cpu_quota_us: int | None = None
    cpu_period_us: int = 100_000
    cpuset_cpus: str | None = None
    memory_limit: int | None = None
    memory_swap_limit: int | None = None
    pids_limit: int | None = None
    io_weight: int | None = None

    def validate(self) -> None:
        if self.cpu_weight is not None and not 1 <= self.cpu_weight <= 10_000:
            raise ProtocolError("cpu_weight", "must be between 1 and 10000")
        if self.cpu_quota_us is not None and self.cpu_quota_us < 1000:
            raise ProtocolError("cpu_quota_us", "must be at least 1000 (1 ms)")
        if not 1000 <= self.cpu_period_us <= 1_000_000:
            raise ProtocolError("cpu_period_us", "must be between 1000 and 1000000")
        if self.cpuset_cpus is not None and not re.fullmatch(r"[0-9,\-]+", self.cpuset_cpus):
            raise ProtocolError("cpuset_cpus", "must look like 0-3,5")
        if self.memory_limit is not None and self.memory_limit < MIN_MEMORY_BYTES:
            raise ProtocolError("memory_limit", f"must be at least {MIN_MEMORY_BYTES} bytes")
        if self.memory_swap_limit is not None:
            if self.memory_limit is None:
                raise ProtocolError("memory_swap_limit", "needs memory_limit")
            if self.memory_swap_limit < self.memory_limit:
                raise ProtocolError("memory_swap_limit", "must be at least memory_limit")
        if self.pids_limit is not None and self.pids_limit < 1:
            raise ProtocolError("pids_limit", "must be at least 1")
        if self.io_weight is not None and not 1 <= self.io_weight <= 10_000:
            raise ProtocolError("io_weight", "must be between 1 and 10000")


@dataclass(frozen=True)
class RestartPolicy(Message):
    """Enforced by the agent locally, so it holds while the control plane is down."""

    name: RestartPolicyName = "no"
    max_retries: int = 0

    def validate(self) -> None:
        if self.max_retries < 0:
            raise ProtocolError("max_retries", "must not be negative")
        if self.max_retries and self.name != "on-failure":
            raise ProtocolError("max_retries", "only applies to on-failure")


@dataclass(frozen=True)
class PortMapping(Message):
    """A published port: host_ip:host_port -> container_port/protocol."""

    container_port: int
    host_port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str = "0.0.0.0"  # noqa: S104 - published on every host address unless narrowed

    def validate(self) -> None:
        for name in ("container_port", "host_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise ProtocolError(name, "must be between 1 and 65535")


@dataclass(frozen=True)
class SocketSpec(Message):
    """A socket the agent binds for socket activation (passed as LISTEN_FDS)."""

    name: str
    protocol: Literal["tcp", "udp", "unix"] = "tcp"
    host_ip: str = "127.0.0.1"
    port: int | None = None
    path: str | None = None

    def validate(self) -> None:
        if not SOCKET_NAME_RE.match(self.name):
            raise ProtocolError("name", "letters, digits, '_', '.', '-'; up to 63")
        if self.protocol == "unix":
            if not self.path or not self.path.startswith("/"):
                raise ProtocolError("path", "a unix socket needs an absolute path")
        elif self.port is None or not 1 <= self.port <= 65535:
            raise ProtocolError("port", "must be between 1 and 65535")


@dataclass(frozen=True)
class NetworkSpec(Message):
    mode: NetworkMode = "bridge"
    ports: list[PortMapping] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class IdMapping(Message):
    """One line of a user-namespace uid_map/gid_map."""

    container_id: int
    host_id: int
    size: int

    def validate(self) -> None:
        if self.container_id < 0 or self.host_id < 0 or self.size < 1:
            raise ProtocolError("size", "ids must be >= 0 and size >= 1")


@dataclass(frozen=True)
class ImageRef(Message):
    """An image by reference (``name[:tag][@digest]``); digest pins it when known."""

    reference: str
    digest: str | None = None

    def validate(self) -> None:
        if not self.reference or len(self.reference) > 512 or " " in self.reference:
            raise ProtocolError("reference", "not a valid image reference")
        if self.digest is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", self.digest):
            raise ProtocolError("digest", "must be sha256:<64 hex>")


@dataclass(frozen=True)
class ContainerSpec(Message):
    """Everything an agent needs to create one container. ``id`` is the control plane's
    container UUID and the runtime's container id."""

    id: str
    name: str
    project: str
    mode: ContainerMode = "image"
    image: ImageRef | None = None
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    user: str | None = None
    hostname: str | None = None
    resources: Resources = field(default_factory=Resources)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    sockets: list[SocketSpec] = field(default_factory=list)
    idle_stop_seconds: int | None = None
    uid_mappings: list[IdMapping] = field(default_factory=list)
    gid_mappings: list[IdMapping] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = "SIGTERM"
    stop_timeout: int = 10

    def validate(self) -> None:
        if not re.fullmatch(r"[0-9a-f-]{36}", self.id):
            raise ProtocolError("id", "must be a UUID")
        if not NAME_RE.match(self.name):
            raise ProtocolError("name", "letters, digits, '_', '.', '-'; up to 63; not first '.'")
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", self.project):
            raise ProtocolError("project", "must be a project slug")
        if self.mode == "image" and self.image is None:
            raise ProtocolError("image", "an image container needs an image")
        if self.mode == "host" and self.image is not None:
            raise ProtocolError("image", "a host container takes no image")
        for key in self.env:
            if not ENV_NAME_RE.match(key):
                raise ProtocolError(f"env.{key}", "not a valid variable name")
        if self.working_dir is not None and not self.working_dir.startswith("/"):
            raise ProtocolError("working_dir", "must be an absolute path")
        if self.user is not None and not re.fullmatch(
            r"[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?", self.user
        ):
            raise ProtocolError("user", "must be user[:group] (names or ids)")
        names = [s.name for s in self.sockets]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ProtocolError(f"sockets[{i}].name", f"{name!r} is declared twice")
        if self.idle_stop_seconds is not None and not self.sockets:
            raise ProtocolError("idle_stop_seconds", "only applies to socket-activated containers")
        if self.idle_stop_seconds is not None and self.idle_stop_seconds < 1:
            raise ProtocolError("idle_stop_seconds", "must be at least 1")
        if not 0 <= self.stop_timeout <= 3600:
            raise ProtocolError("stop_timeout", "must be between 0 and 3600 seconds")


@dataclass(frozen=True)
class ContainerStatus(Message):
    """What an agent observes of one container (in heartbeats and results)."""

    id: str
    state: ContainerState
    pid: int | None = None
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    restart_count: int = 0
    selinux_label: str | None = None
    ip_address: str | None = None
    oom_killed: bool = False
    detail: str = ""


@dataclass(frozen=True)
class ContainerStats(Message):
    """Resource use read from the container's cgroup."""

    id: str
    cpu_usage_ns: int | None = None
    memory_current: int | None = None
    memory_peak: int | None = None
    memory_limit: int | None = None
    pids_current: int | None = None
    oom_events: int = 0
    timestamp: float = 0.0
