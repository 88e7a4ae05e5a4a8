"""``manage.py ingest_heartbeats``: the dedicated heartbeat consumer.

Drains the ``controlplane.heartbeats`` queue in batches (verify every beat, one bulk write per
batch, ack after commit). Run one or two next to the control-plane worker; liveness sweeps
stay in the worker/beat. SIGTERM finishes the current batch and exits.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string

from hosts.ingest import HEARTBEAT_QUEUE, HeartbeatConsumer, HeartbeatIngestor

# The command is a composition root (like config/): hosts must not import containers, so the
# container part of a heartbeat is named here and resolved at start.
CONTAINERS_HOOK = "containers.services.containers_apply_heartbeat"

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Consume heartbeats in batches from the heartbeat queue and apply them in bulk."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queue", default=HEARTBEAT_QUEUE, help="queue to consume")
        parser.add_argument(
            "--batch-size", type=int, default=500, help="most messages per batch (500)"
        )
        parser.add_argument(
            "--max-wait-ms",
            type=float,
            default=200.0,
            help="longest wait to fill a batch before applying what arrived (200)",
        )
        parser.add_argument(
            "--missing-check-every",
            type=float,
            default=None,
            help="seconds between checks of a host for containers it stopped reporting "
            "(default: CORRAL_HEARTBEAT_INTERVAL); a changed container list is checked at once",
        )
        parser.add_argument(
            "--exit-when-idle",
            type=float,
            default=None,
            help="exit after this many seconds without a message (benchmarks, one-shot drains)",
        )
        parser.add_argument(
            "--broker-url", default=None, help="default: the control plane's CELERY_BROKER_URL"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        if options["max_wait_ms"] <= 0:
            raise CommandError("--max-wait-ms must be positive")
        every = options["missing_check_every"]
        if every is not None and every <= 0:
            raise CommandError("--missing-check-every must be positive")
        broker_url = options["broker_url"] or settings.CELERY_BROKER_URL
        ingestor = HeartbeatIngestor(
            containers=import_string(CONTAINERS_HOOK), missing_check_every=every
        )
        consumer = HeartbeatConsumer(
            broker_url,
            ingestor=ingestor,
            queue=options["queue"],
            batch_size=options["batch_size"],
            max_wait=options["max_wait_ms"] / 1000.0,
            idle_exit=options["exit_when_idle"],
            transport_options=dict(getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})),
        )
        consumer.install_signal_handlers()
        totals = consumer.run()
        self.stdout.write(
            f"heartbeats: received={totals.received} verified={totals.verified} "
            f"hosts_updated={totals.updated} stale={totals.stale} "
            f"came_online={totals.came_online} rejected={len(totals.rejected)}"
        )
