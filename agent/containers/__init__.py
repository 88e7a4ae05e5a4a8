"""The agent's container service (create/start/stop/remove, status, logs, stats)."""

from __future__ import annotations

from agent.containers.service import ContainerService

__all__ = ["ContainerService"]
