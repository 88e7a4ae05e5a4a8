"""Pages not covered elsewhere (images, audit, pagination, removed containers) and the small
pure helpers behind the templates (sizes, percentages, sparklines, CPU from usage deltas)."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from containers.models import Container, Image
from frontend.forms import FormErrors, parse_pairs, parse_size
from frontend.templatetags.corral import bytes_h, percent, plain_error, sparkline
from frontend.views.containers import _log_text, stats_series
from hosts.models import AuditEntry
from tests.frontend.actors import client_for


@pytest.mark.django_db
def test_images_show_findings_with_hints_only_to_their_project(fleet: dict[str, Any]) -> None:
    Image.objects.create(
        project=fleet["project_a"],
        reference="app:1.0",
        certification="not_certified",
        findings=[
            {
                "id": "cert.image.E002",
                "verdict": "fail",
                "message": "runs as root",
                "hint": "Set USER in the Dockerfile.",
            }
        ],
    )
    Image.objects.create(project=fleet["project_b"], reference="secret-b:2.0")
    body = client_for(fleet["op_a"]).get("/images/").content.decode()
    assert "app:1.0" in body and "cert.image.E002" in body and "Set USER" in body
    assert "secret-b:2.0" not in body
    assert "secret-b:2.0" in client_for(fleet["admin"]).get("/images/").content.decode()


@pytest.mark.django_db
def test_audit_log_lists_mutating_requests_and_filters(fleet: dict[str, Any]) -> None:
    client = client_for(fleet["admin"])
    client.post(f"/hosts/{fleet['host1'].pk}/maintenance/", {"enabled": "1"})
    assert AuditEntry.objects.filter(username="fleet-admin").exists()
    body = client.get("/audit/?username=fleet-admin").content.decode()
    assert "/maintenance/" in body
    assert "/maintenance/" not in client.get("/audit/?username=nobody").content.decode()


@pytest.mark.django_db
def test_container_list_paginates(fleet: dict[str, Any]) -> None:
    Container.objects.bulk_create(
        Container(project=fleet["project_a"], name=f"bulk-{i:03d}", image_reference="x:1")
        for i in range(60)
    )
    client = client_for(fleet["op_a"])
    first = client.get("/containers/").content.decode()
    assert "61 containers" in first and "Page 1 of 2" in first and 'rel="next"' in first
    second = client.get("/containers/?page=2").content.decode()
    assert "Page 2 of 2" in second and 'rel="prev"' in second
    assert "Page 2 of 2" in client.get("/containers/?page=99").content.decode()


@pytest.mark.django_db
def test_removed_container_page_stops_polling(fleet: dict[str, Any]) -> None:
    c_a = fleet["c_a"]
    Container.objects.filter(pk=c_a.pk).update(removed_at=timezone.now(), observed_state="removed")
    body = client_for(fleet["op_a"]).get(f"/containers/{c_a.pk}/").content.decode()
    assert "logs are gone" in body and "every 2s" not in body and 'data-action="start"' not in body


@pytest.mark.django_db
def test_container_page_shows_published_ports_and_activation_sockets(
    fleet: dict[str, Any],
) -> None:
    c_a = fleet["c_a"]
    Container.objects.filter(pk=c_a.pk).update(
        ports=[{"container_port": 80, "host_port": 8080, "protocol": "tcp", "host_ip": "0.0.0.0"}],
        sockets=[
            {"name": "web", "protocol": "tcp", "host_ip": "127.0.0.1", "port": 18090},
            {"name": "ctl", "protocol": "unix", "path": "/run/ctl.sock"},
        ],
        idle_stop_seconds=30,
    )
    body = client_for(fleet["op_a"]).get(f"/containers/{c_a.pk}/").content.decode()
    assert "0.0.0.0:8080 → 80/tcp" in body
    assert "web: tcp 127.0.0.1:18090" in body and "ctl: unix:/run/ctl.sock" in body
    assert "stopped after 30 s without a connection" in body


def test_sizes_and_percentages_read_well() -> None:
    assert bytes_h(None) == "—"
    assert bytes_h(512) == "512 B"
    assert bytes_h(256 * 1024**2) == "256.0 MiB"
    assert percent(1, 3) == 33 and percent(5, 0) == 0 and percent(9, 3) == 100
    assert parse_size("256M") == 256 * 1024**2
    assert parse_size("1.5GiB") == int(1.5 * 1024**3)
    assert parse_size("6291456") == 6291456
    with pytest.raises(ValueError, match="256M"):
        parse_size("lots")


def test_pairs_parse_and_name_the_bad_line() -> None:
    assert parse_pairs("A=1\n\n B = two words \nC=", "env") == {"A": "1", "B": "two words", "C": ""}
    with pytest.raises(FormErrors) as info:
        parse_pairs("A=1\noops", "labels")
    assert info.value.errors == {"labels": ["Line 2: expected KEY=VALUE, got 'oops'."]}


def test_sparkline_scales_points_and_escapes_its_label() -> None:
    svg = sparkline([0, 5, 10], 100, 20, "<cpu>")
    assert "polyline" in svg and "&lt;cpu&gt;" in svg and "<cpu>" not in svg
    assert "0.0,18.0" in svg and "100.0,2.0" in svg  # lowest at the bottom, highest at the top
    assert "collecting samples" in sparkline([1], 100, 20, "x")


def test_cpu_percent_comes_from_usage_deltas() -> None:
    samples = [
        {"t": 0.0, "cpu_ns": 0.0, "mem": 10.0, "limit": 100.0},
        {"t": 2.0, "cpu_ns": 1e9, "mem": 20.0, "limit": 100.0},  # 1 s of CPU in 2 s
        {"t": 3.0, "cpu_ns": 1e9, "mem": 30.0, "limit": 100.0},  # idle
    ]
    series = stats_series(samples)
    assert series["cpu_series"] == [50.0, 0.0]
    assert series["mem_series"] == [10.0, 20.0, 30.0]
    assert (series["cpu_now"], series["mem_now"], series["mem_limit"]) == (0.0, 30.0, 100.0)
    assert stats_series([])["cpu_now"] is None


def test_agent_log_entries_become_lines() -> None:
    entry = {"time": "2026-11-29T05:07:36Z", "ts": 1.0, "stream": "stderr", "log": "oops\n"}
    assert _log_text(entry) == {"text": "oops", "stream": "stderr"}
    assert _log_text("plain\n") == {"text": "plain", "stream": "stdout"}


def test_operation_errors_in_plain_words() -> None:
    assert plain_error("lost", "") == "The host did not answer before the deadline"
    assert plain_error("host_unavailable", "host a is offline") == (
        "The host could not be reached: host a is offline"
    )
    assert plain_error("weird_code", "agent said no") == "agent said no"


@pytest.mark.django_db
def test_seed_fleet_creates_and_clears_its_rows_only(fleet: dict[str, Any]) -> None:
    from django.contrib.auth import get_user_model
    from django.core.management import CommandError, call_command

    from hosts.models import Host, Operation

    call_command("seed_fleet", hosts=6, containers=30, projects=2, verbosity=0)
    seeded = Host.objects.filter(labels__has_key="corral.seed")
    assert seeded.count() == 6
    assert Container.objects.filter(project__slug__startswith="seed-").count() == 30
    assert Operation.objects.filter(project_slug__startswith="seed-").count() == 3
    call_command("seed_fleet", hosts=0, containers=0, projects=0, clear=True, verbosity=0)
    assert not seeded.exists()
    assert not Container.objects.filter(project__slug__startswith="seed-").exists()
    assert Container.objects.filter(name="web-a").exists()  # the fleet's own rows stay
    assert not get_user_model().objects.filter(username__startswith="seed-").exists()
    with pytest.raises(CommandError, match="--hosts must be zero or more"):
        call_command("seed_fleet", hosts=-1, verbosity=0)
    with pytest.raises(CommandError, match="needs at least one host"):
        call_command("seed_fleet", hosts=0, containers=5, verbosity=0)
