"""Control-plane tasks of the hosts app: inventory ingestion and periodic liveness jobs.
Thin: verify, then call services. Heartbeats and operation results touch containers too and
are handled in containers/tasks.py."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from agent.protocol import names
from agent.protocol.messages import InventoryReport
from hosts import services
from hosts.reports import report_or_none

logger = logging.getLogger(__name__)


@shared_task(name=names.CP_INVENTORY, ignore_result=True)
def inventory_report(message: Any) -> None:
    verified = report_or_none(message, names.CP_INVENTORY, "inventory report")
    if verified is None:
        return
    host, report = verified
    assert isinstance(report, InventoryReport)
    services.host_inventory_record(host, report)
    from hosts.certification import host_certification_record

    host_certification_record(host, report)


@shared_task(name="controlplane.hosts.liveness_sweep", ignore_result=True)
def liveness_sweep() -> dict[str, int]:
    return services.hosts_liveness_sweep()


@shared_task(name="controlplane.operations.expire", ignore_result=True)
def operations_expire() -> int:
    return services.operations_expire()


@shared_task(name="controlplane.operations.echo", ignore_result=True)
def operation_echo(operation_id: str) -> None:
    """Marks an operation succeeded from inside a worker: proves a broker round trip through a
    real worker process (health checks and tests)."""
    from hosts.choices import OperationStatus

    services.operation_transition(operation_id, OperationStatus.SUCCEEDED, result={"echo": True})


from hosts import tasks_ssh  # noqa: E402, F401 - SSH bootstrap tasks


@shared_task(name="controlplane.bench.noop", ignore_result=True)
def bench_noop(message: Any) -> None:
    """Does nothing: the peer of bench/heartbeats.py (Celery's own floor on this machine)."""
