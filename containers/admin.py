"""Django admin for projects, memberships, images and containers."""

from __future__ import annotations

from django.contrib import admin

from containers import models


class MembershipInline(admin.TabularInline):
    model = models.Membership
    extra = 1


@admin.register(models.Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "max_containers", "cpu_weight", "require_certified_hosts"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


@admin.register(models.Container)
class ContainerAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "project",
        "host",
        "mode",
        "desired_state",
        "observed_state",
        "created_at",
    ]
    list_filter = ["observed_state", "desired_state", "mode", "project"]
    search_fields = ["name", "id", "image_reference"]
    list_select_related = ["project", "host"]
    readonly_fields = ["observed_state", "observed_at", "exit_code", "pid", "selinux_label"]


@admin.register(models.Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["reference", "project", "digest", "certification", "size"]
    list_filter = ["certification", "source"]
    search_fields = ["reference", "digest"]
