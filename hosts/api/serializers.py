"""Serializers of the hosts API. Shapes only; rules live in models and services."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from hosts.models import AuditEntry, EnrollmentToken, Host, HostStatusChange, Operation


class HostSerializer(serializers.ModelSerializer):
    queue = serializers.CharField(read_only=True)

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "address",
            "status",
            "status_changed_at",
            "maintenance",
            "labels",
            "project_slug",
            "agent_version",
            "enrolled_at",
            "last_heartbeat_at",
            "load1",
            "memory_available",
            "memory_total",
            "cpus",
            "kernel",
            "os_name",
            "virtualization",
            "cgroup_version",
            "selinux_mode",
            "certification",
            "inventory_at",
            "queue",
            "created_at",
        ]
        read_only_fields = [
            f
            for f in fields
            if f not in ("name", "address", "labels", "maintenance", "project_slug")
        ]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        instance = Host(
            **{
                **(
                    {}
                    if self.instance is None
                    else {
                        f.name: getattr(self.instance, f.name) for f in Host._meta.concrete_fields
                    }
                ),
                **attrs,
            }
        )
        instance.full_clean(exclude=["id"], validate_unique=self.instance is None)
        return attrs


class HostDetailSerializer(HostSerializer):
    class Meta(HostSerializer.Meta):
        fields = [*HostSerializer.Meta.fields, "inventory"]
        read_only_fields = [*HostSerializer.Meta.read_only_fields, "inventory"]


class HostStatusChangeSerializer(serializers.ModelSerializer):
    class Meta:
        model = HostStatusChange
        fields = ["from_status", "to_status", "reason", "at"]


class EnrollmentTokenSerializer(serializers.ModelSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once, at creation.")
    ttl_seconds = serializers.IntegerField(
        write_only=True, required=False, min_value=60, max_value=30 * 86400
    )
    command = serializers.CharField(read_only=True)

    class Meta:
        model = EnrollmentToken
        fields = [
            "id",
            "prefix",
            "project_slug",
            "host",
            "note",
            "created_at",
            "expires_at",
            "used_at",
            "used_by",
            "token",
            "ttl_seconds",
            "command",
        ]
        read_only_fields = ["id", "prefix", "created_at", "expires_at", "used_at", "used_by"]


class EnrollSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=128)
    name = serializers.CharField(max_length=253)
    public_key = serializers.CharField(max_length=64)
    address = serializers.CharField(max_length=255, required=False, allow_blank=True)
    agent_version = serializers.CharField(max_length=32, required=False, allow_blank=True)
    host_id = serializers.UUIDField(required=False)


class OperationSerializer(serializers.ModelSerializer):
    host_name = serializers.CharField(source="host.name", read_only=True, default=None)
    requested_by = serializers.CharField(
        source="requested_by.username", read_only=True, default=None
    )

    class Meta:
        model = Operation
        fields = [
            "id",
            "kind",
            "host",
            "host_name",
            "target_type",
            "target_id",
            "project_slug",
            "requested_by",
            "status",
            "error_code",
            "error",
            "step",
            "result",
            "progress_done",
            "progress_total",
            "created_at",
            "sent_at",
            "started_at",
            "finished_at",
            "deadline",
        ]
        read_only_fields = fields


class AuditEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "at",
            "username",
            "action",
            "method",
            "path",
            "object_type",
            "object_id",
            "project_slug",
            "remote_addr",
            "status_code",
            "outcome",
        ]
        read_only_fields = fields
