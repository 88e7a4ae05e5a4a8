"""Named actors and a small fleet shared by the UI view tests and the browser tests: a fleet
admin (staff), an operator and a viewer of project A, a member of project B only, hosts and
one container per project."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from containers.models import Container, Membership, Project
from hosts.models import Host

GIB = 1024**3


def make_user(username: str, *, staff: bool = False) -> Any:
    return get_user_model().objects.create_user(
        username=username, password="pw-" + username, is_staff=staff
    )


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_host(name: str, **fields: Any) -> Host:
    defaults: dict[str, Any] = {
        "status": "online",
        "public_key": "test-key",
        "cpus": 4,
        "memory_total": 8 * GIB,
        "memory_available": 6 * GIB,
        "load1": 0.5,
        "kernel": "6.1.0-test",
        "os_name": "Debian GNU/Linux 12",
        "virtualization": "kvm",
        "cgroup_version": "v1",
        "selinux_mode": "disabled",
        "last_heartbeat_at": timezone.now(),
    }
    defaults.update(fields)
    return Host.objects.create(name=name, **defaults)


def build_fleet() -> dict[str, Any]:
    """Named actors, projects A and B, two hosts and one container per project."""
    admin = make_user("fleet-admin", staff=True)
    op_a = make_user("operator-a")
    viewer_a = make_user("viewer-a")
    member_b = make_user("member-b")
    project_a = Project.objects.create(slug="proj-a", name="Project A", max_containers=10)
    project_b = Project.objects.create(slug="proj-b", name="Project B")
    Membership.objects.create(project=project_a, user=op_a, role="operator")
    Membership.objects.create(project=project_a, user=viewer_a, role="viewer")
    Membership.objects.create(project=project_b, user=member_b, role="operator")
    host1 = make_host(
        "node-1",
        certification="not_certified",
        findings=[
            {
                "id": "cert.selinux.E001",
                "verdict": "fail",
                "message": "SELinux is disabled",
                "hint": "Enable SELinux in enforcing mode.",
                "evidence": {"mode": "disabled"},
            },
            {"id": "cert.cgroup.I001", "verdict": "pass", "message": "cgroups present"},
        ],
        inventory={
            "cpu": {"model": "Test CPU", "count": 4},
            "disks": [{"device": "vda", "size": 1000}],
        },
    )
    host2 = make_host("node-2", status="offline", certification="certified")
    dedicated_b = make_host("node-b-only", project_slug="proj-b")
    c_a = Container.objects.create(
        project=project_a,
        name="web-a",
        host=host1,
        image_reference="busybox:1.36",
        observed_state="running",
        memory_limit=256 * 1024**2,
    )
    c_b = Container.objects.create(
        project=project_b,
        name="db-b",
        host=host1,
        image_reference="postgres:16",
        observed_state="exited",
    )
    return {
        "admin": admin,
        "op_a": op_a,
        "viewer_a": viewer_a,
        "member_b": member_b,
        "project_a": project_a,
        "project_b": project_b,
        "host1": host1,
        "host2": host2,
        "dedicated_b": dedicated_b,
        "c_a": c_a,
        "c_b": c_b,
    }
