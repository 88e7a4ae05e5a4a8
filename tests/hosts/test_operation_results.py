"""Results of agents applied to operations: progress, the outcome, and reports that arrive out
of order (two worker processes may apply two results of one operation in either order)."""

from __future__ import annotations

import pytest

from agent.protocol.messages import OperationResult
from hosts.models import Host, Operation
from hosts.services import operation_create, operation_result_apply, operation_transition

pytestmark = pytest.mark.django_db


@pytest.fixture
def running_op() -> tuple[Host, Operation]:
    host = Host.objects.create(name="h1", status="online", public_key="x")
    op = operation_create(kind="agent.images.pull", host=host)
    operation_transition(op.pk, "sent")
    return host, op


def result(op: Operation, status: str, **data: int) -> OperationResult:
    return OperationResult(operation_id=str(op.pk), status=status, result=dict(data))  # type: ignore[arg-type]


def test_progress_then_success_completes_the_progress(running_op) -> None:
    host, op = running_op
    operation_result_apply(host, result(op, "running", done=491, total=1_094_290))
    applied = operation_result_apply(host, result(op, "succeeded", digest=1))
    row = Operation.objects.get(pk=op.pk)
    assert row.status == "succeeded" and row.result == {"digest": 1}
    assert (row.progress_done, row.progress_total) == (1_094_290, 1_094_290)
    assert applied is not None and applied.status == "succeeded"


def test_a_progress_report_applied_after_the_success_changes_nothing(running_op) -> None:
    host, op = running_op
    operation_result_apply(host, result(op, "running", done=10, total=100))
    operation_result_apply(host, result(op, "succeeded"))
    late = operation_result_apply(host, result(op, "running", done=50, total=100))
    row = Operation.objects.get(pk=op.pk)
    assert (row.status, row.progress_done, row.progress_total) == ("succeeded", 100, 100)
    assert late is not None and late.status == "succeeded"  # read back: the stored state


def test_success_without_progress_leaves_progress_empty(running_op) -> None:
    host, op = running_op
    operation_result_apply(host, result(op, "succeeded"))
    row = Operation.objects.get(pk=op.pk)
    assert (row.progress_done, row.progress_total) == (None, None)


def test_a_result_for_another_hosts_operation_is_refused(running_op) -> None:
    _, op = running_op
    other = Host.objects.create(name="h2", status="online", public_key="y")
    assert operation_result_apply(other, result(op, "succeeded")) is None
    assert Operation.objects.get(pk=op.pk).status == "sent"
