"""Django admin for operators managing the whole fleet."""

from __future__ import annotations

from django.contrib import admin

from hosts import models


@admin.register(models.Host)
class HostAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "status",
        "maintenance",
        "virtualization",
        "kernel",
        "cgroup_version",
        "selinux_mode",
        "certification",
        "last_heartbeat_at",
        "agent_version",
    ]
    list_filter = [
        "status",
        "maintenance",
        "virtualization",
        "cgroup_version",
        "selinux_mode",
        "certification",
    ]
    search_fields = ["name", "address", "kernel"]
    readonly_fields = [
        "id",
        "public_key",
        "last_heartbeat_at",
        "last_seq",
        "inventory",
        "findings",
        "enrolled_at",
        "status",
        "status_changed_at",
    ]
    actions = ["enter_maintenance", "leave_maintenance"]

    @admin.action(description="Put in maintenance (no new containers)")
    def enter_maintenance(self, request, queryset):  # type: ignore[no-untyped-def]
        queryset.update(maintenance=True)

    @admin.action(description="Take out of maintenance")
    def leave_maintenance(self, request, queryset):  # type: ignore[no-untyped-def]
        queryset.update(maintenance=False)


@admin.register(models.Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "host", "status", "error_code", "requested_by", "created_at"]
    list_filter = ["status", "kind"]
    search_fields = ["id", "target_id", "error"]
    readonly_fields = [f.name for f in models.Operation._meta.fields]


@admin.register(models.EnrollmentToken)
class EnrollmentTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "project_slug", "host", "created_at", "expires_at", "used_at"]
    readonly_fields = ["token_hash", "prefix", "used_at", "used_by"]


@admin.register(models.AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["at", "username", "method", "action", "path", "status_code", "outcome"]
    list_filter = ["method", "outcome"]
    search_fields = ["username", "path", "object_id"]
    readonly_fields = [f.name for f in models.AuditEntry._meta.fields]


admin.site.register(models.HostStatusChange)
admin.site.register(models.CertificationChange)
