"""Reads of the hosts app."""

from __future__ import annotations

from django.db.models import QuerySet

from hosts.models import RELATED_HOST_LARGE_FIELDS, Host, Operation


def host_list() -> QuerySet[Host]:
    return Host.objects.defer("inventory").order_by("name")


def host_get(host_id: str) -> Host:
    return Host.objects.get(pk=host_id)


def operation_list() -> QuerySet[Operation]:
    return Operation.objects.select_related("host", "requested_by").defer(
        *RELATED_HOST_LARGE_FIELDS
    )
