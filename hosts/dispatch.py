"""The only way the control plane reaches agents: signed tasks, by name, to ``host.<uuid>``,
sent after the database commit so an Operation row always exists before its message."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from agent.protocol import envelope
from agent.protocol.schema import Message
from config.errors import HostUnavailable
from hosts.choices import HostStatus, OperationStatus
from hosts.keys import signing_key
from hosts.models import Host, Operation
from hosts.services import operation_fail, operation_transition

logger = logging.getLogger(__name__)


def require_reachable(host: Host) -> None:
    """Raise HostUnavailable (503) naming why, before anything is created for the host."""
    if not host_is_reachable(host):
        raise HostUnavailable(offline_reason(host))


def host_is_reachable(host: Host) -> bool:
    return host.status in (HostStatus.ONLINE, HostStatus.UNKNOWN) and bool(host.public_key)


def offline_reason(host: Host) -> str:
    if not host.public_key:
        return f"host {host.name} has not enrolled yet"
    since = host.last_heartbeat_at or host.status_changed_at
    return f"host {host.name} is {host.status} since {since:%Y-%m-%d %H:%M:%S} UTC"


def send_command(op: Operation, kind: str, payload: Message) -> Operation:
    """Send ``payload`` to the operation's host after commit. An offline host fails the
    operation at once with a reason (the caller sees ``op.status == "failed"``)."""
    host = op.host
    assert host is not None, "a command needs a host"
    if not host_is_reachable(host):
        operation_fail(op, code="host_unavailable", error=offline_reason(host))
        return op

    message = envelope.seal(
        signing_key(),
        kind=kind,
        host_id=str(host.pk),
        payload=payload,
        operation_id=str(op.pk),
        ttl=max(1.0, (op.deadline - timezone.now()).total_seconds()) if op.deadline else 300.0,
    )
    queue = host.queue

    def _send() -> None:
        from config.celery import app

        try:
            result = app.send_task(
                kind, kwargs={"message": message}, queue=queue, task_id=str(op.pk)
            )
        except Exception as exc:
            logger.error("operation %s: could not hand %s to the broker: %s", op.pk, kind, exc)
            return
        operation_transition(op.pk, OperationStatus.SENT, celery_task_id=result.id or "")

    transaction.on_commit(_send)
    return op
