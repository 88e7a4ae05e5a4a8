"""Placement: choose a host for a container, and explain the choice or why none fits.

A host must be online, not in maintenance, shared with the fleet or dedicated to the project,
match every label constraint, be certified when the project requires it, and have room. Room
is scored from memory and CPU already reserved by placed containers (not container count)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Q, Sum

from config.errors import PlacementFailed
from containers.certification import host_certified_for
from containers.choices import DesiredState
from containers.models import Container, Project
from hosts import dispatch
from hosts.choices import HostStatus
from hosts.models import Host

DEFAULT_MEMORY_RESERVATION = 64 * 1024 * 1024  # counted for containers without a limit
DEFAULT_CPU_RESERVATION = 100  # millicores, likewise


@dataclass(frozen=True)
class Decision:
    host: Host
    explanation: str
    scores: dict[str, float] = field(default_factory=dict)


def _reservations(host_ids: list[Any]) -> dict[Any, dict[str, int]]:
    rows = (
        Container.objects.filter(host_id__in=host_ids, removed_at__isnull=True)
        .exclude(desired_state=DesiredState.REMOVED)
        .values("host_id")
        .annotate(
            memory=Sum("memory_limit"),
            cpu=Sum("cpu_millicores"),
            n=Count("id"),
            n_mem=Count("memory_limit"),
            n_cpu=Count("cpu_millicores"),
        )
    )
    out = {}
    for r in rows:
        out[r["host_id"]] = {
            "memory": int(r["memory"] or 0) + (r["n"] - r["n_mem"]) * DEFAULT_MEMORY_RESERVATION,
            "cpu": int(r["cpu"] or 0) + (r["n"] - r["n_cpu"]) * DEFAULT_CPU_RESERVATION,
        }
    return out


def place(project: Project, container: Container, *, pinned: Host | None = None) -> Decision:
    need_mem = container.memory_limit or DEFAULT_MEMORY_RESERVATION
    need_cpu = container.cpu_millicores or DEFAULT_CPU_RESERVATION
    if pinned is not None:
        dispatch.require_reachable(pinned)
        if pinned.project_slug and pinned.project_slug != project.slug:
            raise PlacementFailed(
                f"Host {pinned.name} is dedicated to another project.", field="host"
            )
        if project.require_certified_hosts and not host_certified_for(pinned, project):
            raise PlacementFailed(
                f"Project {project.slug} requires certified hosts; {pinned.name} is "
                f"{pinned.certification}.",
                field="host",
            )
        return Decision(pinned, f"pinned to host {pinned.name}")

    hosts = list(
        Host.objects.filter(Q(project_slug="") | Q(project_slug=project.slug)).defer("inventory")
    )
    if not hosts:
        raise PlacementFailed("No host in the fleet is available to this project.")
    rejected: dict[str, list[str]] = {}

    def reject(reason: str, host: Host) -> None:
        rejected.setdefault(reason, []).append(host.name)

    eligible = []
    for host in hosts:
        if host.status != HostStatus.ONLINE:
            reject("not online", host)
        elif host.maintenance:
            reject("in maintenance", host)
        elif any(host.labels.get(k) != v for k, v in (container.placement or {}).items()):
            reject(f"labels do not match {container.placement}", host)
        elif project.require_certified_hosts and not host_certified_for(host, project):
            reject("not certified under the project's host profile", host)
        elif not host.memory_total or not host.cpus:
            reject("no inventory yet (memory and CPUs unknown)", host)
        else:
            eligible.append(host)
    reserved = _reservations([h.pk for h in eligible])
    scores: dict[str, float] = {}
    best: tuple[float, Host] | None = None
    for host in eligible:
        used = reserved.get(host.pk, {"memory": 0, "cpu": 0})
        total_mem, total_cpu = int(host.memory_total or 0), int(host.cpus or 0) * 1000
        free_mem, free_cpu = total_mem - used["memory"], total_cpu - used["cpu"]
        if free_mem < need_mem:
            reject(f"not enough memory ({need_mem} bytes needed)", host)
            continue
        if free_cpu < need_cpu:
            reject(f"not enough CPU ({need_cpu} millicores needed)", host)
            continue
        score = 0.5 * (free_mem - need_mem) / total_mem + 0.5 * (free_cpu - need_cpu) / total_cpu
        scores[host.name] = round(score, 4)
        if best is None or score > best[0]:
            best = (score, host)
    if best is None:
        reasons = "; ".join(
            f"{', '.join(sorted(names))}: {why}" for why, names in sorted(rejected.items())
        )
        raise PlacementFailed(f"No host fits this container. {reasons}.", rejected=rejected)
    ranked = ", ".join(f"{n}={s}" for n, s in sorted(scores.items(), key=lambda kv: -kv[1]))
    return Decision(
        best[1],
        f"placed on {best[1].name}: most free memory and CPU after placement (scores: {ranked})",
        scores,
    )
