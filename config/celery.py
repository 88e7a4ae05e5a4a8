"""The control plane's Celery app. It consumes the ``controlplane`` queue only; agents consume
their own ``host.<uuid>`` queues and are separate programs (agent/worker.py)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("corral")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
