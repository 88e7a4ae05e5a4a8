"""Reads of the containers app, scoped to what the user may see. Another project's objects are
simply absent (so they answer 404, not 403)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, QuerySet

from containers.models import Container, Image, Project
from hosts.models import RELATED_HOST_LARGE_FIELDS, Operation


def project_list(user: Any) -> QuerySet[Project]:
    qs = Project.objects.all()
    if not user.is_staff:
        qs = qs.filter(memberships__user=user)
    return qs.annotate(
        container_count=Count("containers", filter=Q(containers__removed_at__isnull=True))
    )


def container_list(user: Any, *, include_removed: bool = False) -> QuerySet[Container]:
    qs = Container.objects.select_related("project", "host", "image").defer(
        *RELATED_HOST_LARGE_FIELDS
    )
    if not user.is_staff:
        qs = qs.filter(project__memberships__user=user)
    if not include_removed:
        qs = qs.filter(removed_at__isnull=True)
    return qs


def image_list(user: Any) -> QuerySet[Image]:
    qs = Image.objects.select_related("project")
    if not user.is_staff:
        qs = qs.filter(project__memberships__user=user)
    return qs


def operation_list(user: Any) -> QuerySet[Operation]:
    qs = Operation.objects.select_related("host", "requested_by").defer(*RELATED_HOST_LARGE_FIELDS)
    if not user.is_staff:
        slugs = Project.objects.filter(memberships__user=user).values("slug")
        qs = qs.filter(project_slug__in=slugs)
    return qs
