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


@pytest.mark.slow
def test_the_worker_keeps_its_database_connection_between_tasks(stack) -> None:
    """Celery's Django fixup would close the connection around every task (each report then
    paid for a new PostgreSQL backend); the worker keeps it, as Django does between requests."""
    from config.celery import app

    stack.start_worker(concurrency=1)

    def echo_all(count: int) -> None:
        ops = [
            operation_create(kind="controlplane.operations.echo", host=None) for _ in range(count)
        ]
        with app.connection_for_write(stack.broker.local_url) as conn:
            for op in ops:
                app.send_task(
                    "controlplane.operations.echo",
                    args=[str(op.pk)],
                    queue="controlplane",
                    connection=conn,
                )
        deadline = time.monotonic() + 30
        while Operation.objects.filter(pk__in=[o.pk for o in ops]).exclude(status="succeeded"):
            assert time.monotonic() < deadline, "the echo tasks did not all succeed"
            time.sleep(0.05)

    def sessions() -> int:
        """Sessions ever opened on this database (PostgreSQL 14+; counted at connect, and
        flushed to the statistics by the time a backend exits or within a second)."""
        time.sleep(1.5)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            )
            return int(cursor.fetchone()[0])

    echo_all(1)  # the worker process has its connection now
    before = sessions()
    echo_all(10)
    # Without reuse: one new session per task. One is allowed for another process of the stack.
    assert sessions() - before <= 1
