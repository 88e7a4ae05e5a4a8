"""``manage.py seed_fleet --hosts 500 --containers 5000``: a realistic demo/benchmark fleet made
with bulk_create (a few seconds for thousands of rows), so list and dashboard speed can be
measured at fleet scale. Seeded rows are marked (host label ``corral.seed=1``, projects
``seed-*``) and ``--clear`` removes them again."""

from __future__ import annotations

import random
import time
import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.utils import timezone

from containers.choices import ObservedState, Role
from containers.models import Container, ContainerEvent, Image, Membership, Project
from hosts.models import Host, HostStatusChange, Operation

GIB = 1024**3
SEED_LABEL = "corral.seed"
KERNELS = ["6.1.0-28-amd64", "6.1.0-31-amd64", "5.14.0-503.el9.x86_64", "6.8.0-51-generic"]
OSES = ["Debian GNU/Linux 12", "Rocky Linux 9.5", "Ubuntu 24.04 LTS", "Fedora 41"]
IMAGES = ["busybox:1.36", "nginx:1.27", "postgres:16", "redis:7.4", "python:3.11-slim"]
STATES = [ObservedState.RUNNING] * 8 + [
    ObservedState.EXITED,
    ObservedState.STOPPED,
    ObservedState.PENDING,
    ObservedState.FAILED,
]


def _findings(ok: bool) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = [
        {"id": "cert.cgroup.I001", "verdict": "pass", "message": "cgroup controllers present"},
        {"id": "cert.kernel.I002", "verdict": "pass", "message": "user namespaces enabled"},
    ]
    if not ok:
        findings.append(
            {
                "id": "cert.selinux.E001",
                "verdict": "fail",
                "message": "SELinux is disabled",
                "hint": "Boot with selinux=1 and set SELINUX=enforcing in /etc/selinux/config.",
                "evidence": {"mode": "disabled"},
            }
        )
    return findings


class Command(BaseCommand):
    help = "Create a fleet of hosts, projects and containers quickly (bulk inserts)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--hosts", type=int, default=50)
        parser.add_argument("--containers", type=int, default=500)
        parser.add_argument("--projects", type=int, default=5)
        parser.add_argument("--seed", type=int, default=1, help="random seed (reproducible)")
        parser.add_argument("--clear", action="store_true", help="remove seeded rows first")

    def handle(self, *args: Any, **opts: Any) -> None:
        for name in ("hosts", "containers", "projects"):
            if opts[name] < 0:
                raise CommandError(f"--{name} must be zero or more, got {opts[name]}.")
        if opts["containers"] and not (opts["hosts"] and opts["projects"]):
            raise CommandError("--containers needs at least one host and one project.")
        started = time.perf_counter()
        if opts["clear"]:
            seed_clear()
        counts = seed_fleet(
            hosts=opts["hosts"],
            containers=opts["containers"],
            projects=opts["projects"],
            rng=random.Random(opts["seed"]),  # noqa: S311 - demo data, not secrets
        )
        elapsed = time.perf_counter() - started
        summary = ", ".join(f"{v} {k}" for k, v in counts.items())
        self.stdout.write(self.style.SUCCESS(f"Seeded {summary} in {elapsed:.2f} s."))


def seed_clear() -> None:
    """Delete what an earlier seed created (containers first: host and project are protected)."""
    with transaction.atomic():
        hosts = Host.objects.filter(**{f"labels__{SEED_LABEL}": "1"})
        Container.objects.filter(host__in=hosts).delete()
        projects = Project.objects.filter(slug__startswith="seed-")
        Container.objects.filter(project__in=projects).delete()
        Operation.objects.filter(host__in=hosts).delete()
        projects.delete()
        hosts.delete()
        get_user_model().objects.filter(username__startswith="seed-", memberships=None).delete()


@transaction.atomic
def seed_fleet(*, hosts: int, containers: int, projects: int, rng: random.Random) -> dict[str, int]:
    """Insert the fleet in a handful of bulk statements; returns what was created."""
    now = timezone.now()
    run = uuid.uuid4().hex[:6]
    host_rows = [_host(i, run, now, rng) for i in range(hosts)]
    Host.objects.bulk_create(host_rows, batch_size=1000)
    HostStatusChange.objects.bulk_create(
        [
            HostStatusChange(host=h, from_status="pending", to_status="online", reason="enrolled")
            for h in host_rows
        ],
        batch_size=1000,
    )
    project_rows = [
        Project(
            slug=f"seed-{run}-{i}",
            name=f"Seed project {i}",
            max_containers=containers,
            max_memory_bytes=containers * GIB,
        )
        for i in range(projects)
    ]
    Project.objects.bulk_create(project_rows)
    project_rows = list(Project.objects.filter(slug__startswith=f"seed-{run}-"))
    _seed_members(project_rows)
    images = [
        Image(
            project=p,
            reference=ref,
            digest="sha256:" + uuid.uuid4().hex * 2,
            size=rng.randint(2, 400) * 1024**2,
        )
        for p in project_rows
        for ref in IMAGES
    ]
    Image.objects.bulk_create(images, batch_size=1000)
    by_project: dict[int, list[Image]] = {}
    for image in images:
        by_project.setdefault(image.project_id, []).append(image)
    container_rows = []
    online = [h for h in host_rows if h.status == "online"] or host_rows
    for i in range(containers):
        project = project_rows[i % len(project_rows)]
        image = rng.choice(by_project[project.pk])
        state = rng.choice(STATES)
        container_rows.append(
            Container(
                project=project,
                name=f"app-{i:05d}",
                host=rng.choice(online),
                image=image,
                image_reference=image.reference,
                command=["/bin/sh", "-c", "sleep infinity"],
                memory_limit=rng.choice([64, 128, 256, 512]) * 1024**2,
                cpu_millicores=rng.choice([100, 250, 500, 1000]),
                labels={"tier": rng.choice(["web", "db", "cache"])},
                desired_state="running" if state != ObservedState.STOPPED else "stopped",
                observed_state=state,
                observed_at=now,
                started_at=now - timedelta(minutes=rng.randint(1, 10_000)),
            )
        )
    Container.objects.bulk_create(container_rows, batch_size=2000)
    ContainerEvent.objects.bulk_create(
        [
            ContainerEvent(container=c, kind=c.observed_state, message="seeded")
            for c in container_rows[:500]
        ],
        batch_size=1000,
    )
    operations = _seed_operations(container_rows, rng)
    _analyze()
    return {
        "hosts": hosts,
        "projects": projects,
        "containers": containers,
        "images": len(images),
        "operations": operations,
    }


OP_KINDS = ["agent.containers.create", "agent.containers.start", "agent.containers.stop"]
OP_ERRORS = [
    ("image_pull_failed", "registry answered 404 for busybox:9.9"),
    ("host_unavailable", "host went offline before the command was sent"),
    ("lost", "no answer from the host before the deadline"),
]


def _seed_operations(containers: list[Container], rng: random.Random) -> int:
    """One operation per ten containers, most succeeded, some failed with a reason."""
    rows = []
    for container in containers[::10]:
        failed = rng.random() < 0.15
        code, error = rng.choice(OP_ERRORS) if failed else ("", "")
        rows.append(
            Operation(
                kind=rng.choice(OP_KINDS),
                host=container.host,
                target_type="container",
                target_id=str(container.pk),
                project_slug=container.project.slug,
                status="failed" if failed else "succeeded",
                error_code=code,
                error=error,
                finished_at=timezone.now(),
            )
        )
    Operation.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


def _analyze() -> None:
    """Refresh PostgreSQL's planner statistics: right after a bulk insert it still believes the
    tables are empty and sorts every row instead of walking an index (0.4 ms vs 370 ms for
    the container list here). Autovacuum would do the same a little later."""
    if connection.vendor != "postgresql":
        return
    tables = [
        m._meta.db_table
        for m in (
            Host,
            HostStatusChange,
            Project,
            Image,
            Container,
            ContainerEvent,
            Membership,
            Operation,
        )
    ]
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f'ANALYZE "{table}"')  # table names come from the models


def _host(i: int, run: str, now: Any, rng: random.Random) -> Host:
    status = rng.choices(["online", "unknown", "offline"], weights=[90, 4, 6])[0]
    cpus = rng.choice([8, 16, 32, 64])
    total = rng.choice([32, 64, 128, 256]) * GIB
    certified = rng.random() < 0.8
    return Host(
        name=f"seed-{run}-node{i:04d}",
        address=f"10.{i // 250}.{i % 250}.10",
        status=status,
        maintenance=rng.random() < 0.03,
        labels={SEED_LABEL: "1", "zone": rng.choice(["a", "b", "c"])},
        agent_version="0.1.0",
        public_key="seed",
        last_heartbeat_at=now
        - timedelta(seconds=rng.randint(1, 30 if status == "online" else 900)),
        load1=round(rng.uniform(0.1, cpus * 0.8), 2),
        cpus=cpus,
        memory_total=total,
        memory_available=int(total * rng.uniform(0.2, 0.9)),
        kernel=rng.choice(KERNELS),
        os_name=rng.choice(OSES),
        virtualization=rng.choice(["none", "kvm"]),
        cgroup_version=rng.choice(["v1", "v2", "v2"]),
        selinux_mode=rng.choice(["enforcing", "disabled"]) if certified else "disabled",
        certification="certified" if certified else "not_certified",
        certification_profile="certified-container-host",
        findings=_findings(certified),
        inventory={
            "cpu": {"model": "Seeded CPU", "count": cpus},
            "memory": {"total": total},
            "os": {"name": "seeded"},
        },
    )


def _seed_members(projects: list[Project]) -> None:
    """A viewer and an operator per seeded project, so the UI has people to show."""
    user_model = get_user_model()
    rows = []
    for project in projects:
        for role in (Role.OPERATOR, Role.VIEWER):
            user, _ = user_model.objects.get_or_create(username=f"{project.slug}-{role}")
            rows.append(Membership(project=project, user=user, role=role))
    Membership.objects.bulk_create(rows, ignore_conflicts=True)
