"""FilterSets shared by the hosts API and UI lists."""

from __future__ import annotations

import django_filters

from hosts.models import Host, Operation


class HostFilterSet(django_filters.FilterSet):
    label = django_filters.CharFilter(method="filter_label", help_text="key=value")

    class Meta:
        model = Host
        fields = [
            "status",
            "maintenance",
            "virtualization",
            "cgroup_version",
            "selinux_mode",
            "certification",
            "kernel",
            "project_slug",
        ]

    def filter_label(self, queryset, name, value):  # type: ignore[no-untyped-def]
        key, _, val = value.partition("=")
        return queryset.filter(**{f"labels__{key}": val}) if key else queryset


class OperationFilterSet(django_filters.FilterSet):
    class Meta:
        model = Operation
        fields = ["status", "kind", "host", "target_type", "target_id", "project_slug"]
