"""Who may do what in a project. Fleet admins (staff) may do everything; members by role."""

from __future__ import annotations

from typing import Any

from containers.choices import ROLE_RANK, Role
from containers.models import Membership, Project


def role_in(user: Any, project: Project) -> str | None:
    if user is None or not user.is_authenticated:
        return None
    if user.is_staff:
        return Role.ADMIN
    cache = getattr(user, "_corral_roles", None)
    if cache is None:
        cache = dict(Membership.objects.filter(user=user).values_list("project_id", "role"))
        user._corral_roles = cache
    return cache.get(project.pk)


def has_role(user: Any, project: Project, needed: str) -> bool:
    role = role_in(user, project)
    return role is not None and ROLE_RANK[Role(role)] >= ROLE_RANK[Role(needed)]
