"""Control-plane tasks that touch containers: heartbeats (host liveness + observed container
state), operation results, container events, and the periodic reconciler. Thin: verify, then
call services."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agent.protocol import names
from agent.protocol.messages import ContainerEvent, OperationResult
from containers import services
from containers.images.services import image_apply_result
from hosts import services as host_services
from hosts.ingest import HeartbeatIngestor
from hosts.reports import report_or_none

logger = logging.getLogger(__name__)

_last_housekeeping = 0.0


def _housekeeping() -> None:
    """Run in every worker at most every LIVENESS_CHECK_EVERY seconds, so offline detection
    and the control plane's own outage detection never depend on one beat process."""
    global _last_housekeeping
    now = time.monotonic()
    if now - _last_housekeeping < settings.CORRAL["LIVENESS_CHECK_EVERY"]:
        return
    _last_housekeeping = now
    host_services.control_plane_resumed_at(timezone.now())
    host_services.hosts_liveness_sweep()


# Per worker process: what it last applied of each host's container list. The same
# per-batch code as the dedicated consumer (manage.py ingest_heartbeats), with a batch of one.
_heartbeats = HeartbeatIngestor(containers=services.containers_apply_heartbeat)


@shared_task(name=names.CP_HEARTBEAT, ignore_result=True)
def heartbeat_report(message: Any) -> None:
    """One heartbeat: verified against its host's key, recorded (no row per beat), container
    states applied when the host's list changed. The batch path is the heartbeat queue."""
    _heartbeats.ingest([message])
    _housekeeping()


@shared_task(name=names.CP_OPERATION_RESULT, ignore_result=True)
def operation_result(message: Any) -> None:
    verified = report_or_none(message, names.CP_OPERATION_RESULT, "operation result")
    if verified is None:
        return
    host, result = verified
    assert isinstance(result, OperationResult)
    # One transaction: the operation and what it changed (container, image) become visible
    # together, with one commit (one WAL flush) instead of one per statement.
    with transaction.atomic():
        op = host_services.operation_result_apply(host, result)
        if op is not None and result.status != "running":
            services.container_apply_result(op)
            image_apply_result(op)


@shared_task(name=names.CP_CONTAINER_EVENT, ignore_result=True)
def container_event(message: Any) -> None:
    verified = report_or_none(message, names.CP_CONTAINER_EVENT, "container event")
    if verified is None:
        return
    host, event = verified
    assert isinstance(event, ContainerEvent)
    services.containers_apply_heartbeat(host, [event.status], check_missing=False)


@shared_task(name="controlplane.containers.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    return services.containers_reconcile()
