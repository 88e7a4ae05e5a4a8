"""The agent's configuration: a frozen dataclass read from a JSON file (written at enrollment)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.protocol.names import HEARTBEAT_QUEUE

DEFAULT_CONFIG = Path(os.environ.get("CORRAL_AGENT_CONFIG", "/etc/corral/agent.json"))
DEFAULT_STATE_DIR = Path("/var/lib/corral-agent")


class ConfigError(ValueError):
    """A missing or malformed agent configuration; the message names the field."""


@dataclass(frozen=True)
class AgentConfig:
    host_id: str
    name: str
    server_url: str
    broker_url: str
    controlplane_public_key: str
    state_dir: str = str(DEFAULT_STATE_DIR)
    heartbeat_interval: float = 10.0
    # Heartbeats go to the control plane's batch consumer (``manage.py ingest_heartbeats``);
    # "controlplane" sends them through the Celery worker instead, one task per beat (a
    # small fleet without the consumer; ~25 beats/s per worker).
    heartbeat_queue: str = HEARTBEAT_QUEUE
    inventory_interval: float = 300.0
    concurrency: int = 4
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    runtime_root: str = "/run/corral/runtime"
    cgroup_parent: str = "machine.slice"
    cgroup_driver: str | None = None
    # This host's container bridge (each host has its own; the subnet must not collide with
    # the host's networks) and whether containers' outgoing traffic is masqueraded.
    network_bridge: str = "corral0"
    network_subnet: str = "10.88.0.0/16"
    network_nat: bool = True
    network_firewall: str = "auto"

    @property
    def key_file(self) -> Path:
        return Path(self.state_dir) / "agent_key.pem"

    @property
    def queue(self) -> str:
        from agent.protocol.names import host_queue

        return host_queue(self.host_id)

    def save(self, path: Path) -> None:
        """Atomic write with mode 0600 (it names the broker, which may carry a password)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def with_changes(self, **changes: Any) -> AgentConfig:
        return replace(self, **changes)


def load_config(path: Path) -> AgentConfig:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no agent configuration; run `python -m agent enroll` first"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    known = set(AgentConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field {unknown[0]!r}")
    for required in ("host_id", "name", "server_url", "broker_url", "controlplane_public_key"):
        if not isinstance(data.get(required), str) or not data[required]:
            raise ConfigError(f"{path}: field {required!r} is required")
    return AgentConfig(**data)
