"""The suite runs against the real PostgreSQL and Redis, and a real worker process."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from hosts.models import Operation
from hosts.services import operation_create


def test_database_is_postgresql() -> None:
    assert connection.vendor == "postgresql", "run the suite with `make test`"


@pytest.mark.slow
def test_broker_round_trip_through_a_real_worker_process(stack) -> None:
    from config.celery import app

    stack.start_worker()
    op = operation_create(kind="controlplane.operations.echo", host=None)
    with app.connection_for_write(stack.broker.local_url) as conn:
        app.send_task(
            "controlplane.operations.echo", args=[str(op.pk)], queue="controlplane", connection=conn
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        op.refresh_from_db()
        if op.status == "succeeded":
            break
        time.sleep(0.05)
    assert op.status == "succeeded"
    assert op.result == {"echo": True}
    assert Operation.objects.count() == 1
