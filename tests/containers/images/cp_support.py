"""Actors, hosts and test images for the control-plane image and certification tests."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.test import APIClient

from containers.choices import Role
from containers.models import Membership, Project
from hosts.models import Host
from tests.agent.images.imgtest_helpers import (
    BuiltImage,
    Entry,
    build_image,
    busybox_entries,
    tar_directory,
    write_docker_save,
    write_oci_layout,
)

GIB = 1 << 30


def make_user(username: str, *, staff: bool = False) -> Any:
    return get_user_model().objects.create_user(username, password="x", is_staff=staff)


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def make_project(slug: str, **fields: Any) -> Project:
    return Project.objects.create(slug=slug, name=slug.title(), **fields)


def member(user: Any, project: Project, role: str = Role.OPERATOR) -> Any:
    Membership.objects.create(user=user, project=project, role=role)
    return user


def make_host(name: str, **fields: Any) -> Host:
    defaults: dict[str, Any] = {
        "status": "online",
        "public_key": "test-key",
        "cpus": 4,
        "memory_total": 8 * GIB,
        "memory_available": 6 * GIB,
        "last_heartbeat_at": timezone.now(),
    }
    defaults.update(fields)
    return Host.objects.create(name=name, **defaults)


def passing_image() -> BuiltImage:
    """busybox, runs as uid 1000, no package database, no dangerous modes."""
    return build_image([busybox_entries()])


DPKG_STATUS = (
    b"Package: telnetd\nStatus: install ok installed\nVersion: 0.17\n\n"
    b"Package: busybox\nStatus: install ok installed\nVersion: 1.36\n"
)


def failing_image() -> BuiltImage:
    """Runs as root (E003), has the prohibited telnetd installed (E007), and ships a
    world-writable setuid file (which the agent's unpacker neutralises: o+w is dropped)."""
    evil = [Entry("usr", "dir"), Entry("usr/bin", "dir")]
    evil.append(Entry("usr/bin/evil", data=b"#!/bin/sh\n", mode=0o4777))
    evil += [Entry("var", "dir"), Entry("var/lib", "dir"), Entry("var/lib/dpkg", "dir")]
    evil.append(Entry("var/lib/dpkg/status", data=DPKG_STATUS))
    return build_image([busybox_entries(), evil], config_extra={"User": ""})


def docker_save(tmp: Path, image: BuiltImage, tags: list[str], *, new_format: bool) -> Path:
    path = tmp / f"save-{'new' if new_format else 'old'}-{image.digest[7:19]}.tar"
    write_docker_save(path, image, tags, new_format=new_format)
    return path


def oci_tarball(tmp: Path, image: BuiltImage, ref: str | None) -> Path:
    layout = tmp / f"layout-{image.digest[7:19]}"
    write_oci_layout(layout, [(image.manifest, ref)], image.blobs)
    path = tmp / f"layout-{image.digest[7:19]}.tar"
    tar_directory(layout, path)
    return path


def upload(client: APIClient, project: str, path: Path, **extra: str) -> Any:
    with open(path, "rb") as f:
        data = {"project": project, "archive": io.BytesIO(f.read()), **extra}
    data["archive"].name = path.name  # type: ignore[attr-defined]
    return client.post("/api/v1/images/upload/", data, format="multipart")
