"""Task and queue names, defined once for both sides."""

from __future__ import annotations

import uuid

CONTROLPLANE_QUEUE = "controlplane"
HOST_QUEUE_PREFIX = "host."


def host_queue(host_id: str | uuid.UUID) -> str:
    """The queue an agent consumes: ``host.<uuid>``."""
    return f"{HOST_QUEUE_PREFIX}{uuid.UUID(str(host_id))}"


# Control plane -> agent (queue host.<uuid>). Each carries a signed CommandEnvelope.
AGENT_PING = "agent.ping"
AGENT_INVENTORY_COLLECT = "agent.inventory.collect"
AGENT_CERTIFICATION_RUN = "agent.certification.run"
AGENT_CONTAINER_CREATE = "agent.containers.create"
AGENT_CONTAINER_START = "agent.containers.start"
AGENT_CONTAINER_STOP = "agent.containers.stop"
AGENT_CONTAINER_RESTART = "agent.containers.restart"
AGENT_CONTAINER_REMOVE = "agent.containers.remove"
AGENT_CONTAINER_LOGS = "agent.containers.logs"
AGENT_CONTAINER_STATS = "agent.containers.stats"
AGENT_IMAGE_PULL = "agent.images.pull"
AGENT_IMAGE_GC = "agent.images.gc"

AGENT_TASKS = frozenset(
    {
        AGENT_PING,
        AGENT_INVENTORY_COLLECT,
        AGENT_CERTIFICATION_RUN,
        AGENT_CONTAINER_CREATE,
        AGENT_CONTAINER_START,
        AGENT_CONTAINER_STOP,
        AGENT_CONTAINER_RESTART,
        AGENT_CONTAINER_REMOVE,
        AGENT_CONTAINER_LOGS,
        AGENT_CONTAINER_STATS,
        AGENT_IMAGE_PULL,
        AGENT_IMAGE_GC,
    }
)

# Agent -> control plane (queue "controlplane"). Each carries a signed ReportEnvelope.
CP_HEARTBEAT = "controlplane.heartbeat.report"
CP_INVENTORY = "controlplane.inventory.report"
CP_OPERATION_RESULT = "controlplane.operation.result"
CP_CONTAINER_EVENT = "controlplane.container.event"

# Heartbeats only, consumed in batches by the control plane's ``manage.py ingest_heartbeats``
# (same task name and envelope as on CONTROLPLANE_QUEUE, where the Celery task still takes them).
HEARTBEAT_QUEUE = "controlplane.heartbeats"
