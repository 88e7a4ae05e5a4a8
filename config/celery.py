"""The control plane's Celery app. It consumes the ``controlplane`` queue only; agents consume
their own ``host.<uuid>`` queues and are separate programs (agent/worker.py)."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("corral")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Celery's Django fixup closes every database connection before and after each task unless
# this is set: each report then paid for a new PostgreSQL connection (a backend fork, ~5-10 ms
# here, most of a report's time). Connections are kept (the fixup still recycles them every 2 x
# this many tasks) and closed Django's way instead, below.
app.conf.CELERY_DB_REUSE_MAX = 10_000


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(**kwargs: object) -> None:
    """What Django does around each request: close a connection that errored or outlived
    CONN_MAX_AGE, and health-check the rest on their next use (CONN_HEALTH_CHECKS)."""
    close_old_connections()


def _prepare_filesystem_broker() -> None:
    """The no-server transport keeps messages in directories; make sure they exist."""
    if not str(app.conf.broker_url or "").startswith("filesystem"):
        return
    options = app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        if options.get(key):
            Path(options[key]).mkdir(parents=True, exist_ok=True)


_prepare_filesystem_broker()
