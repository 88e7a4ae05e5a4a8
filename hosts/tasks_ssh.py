"""Control-plane task of SSH bootstrap (queue ``controlplane``): run one install/uninstall
Operation. Thin: the workflow is hosts.ssh.services.ssh_operation_run."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from hosts.ssh.services import TASK_NAME, ssh_operation_run

logger = logging.getLogger(__name__)


@shared_task(
    name=TASK_NAME,
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=2400,
    soft_time_limit=2100,
)
def ssh_run(message: Any) -> None:
    if not isinstance(message, dict) or message.get("schema_version") != 1:
        logger.warning("ssh task: unsupported message %r", message)
        return
    operation_id = message.get("operation_id")
    if not isinstance(operation_id, str):
        logger.warning("ssh task: message has no operation_id")
        return
    ssh_operation_run(operation_id)
