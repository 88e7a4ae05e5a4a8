"""FilterSets shared by the containers API and the UI lists."""

from __future__ import annotations

import django_filters
from django.db.models import Q, QuerySet

from containers.models import Container, Image


class ContainerFilterSet(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug")
    host = django_filters.CharFilter(method="filter_host", help_text="host id or name")
    state = django_filters.CharFilter(field_name="observed_state")
    desired_state = django_filters.CharFilter()
    image = django_filters.CharFilter(field_name="image_reference", lookup_expr="icontains")
    label = django_filters.CharFilter(method="filter_label", help_text="key=value")
    q = django_filters.CharFilter(method="filter_q", help_text="search by name")

    class Meta:
        model = Container
        fields = ["project", "host", "state", "desired_state", "image", "mode", "label"]

    def filter_host(self, queryset: QuerySet[Container], name: str, value: str) -> QuerySet:
        return queryset.filter(
            Q(host__name=value) | Q(host__id__iexact=value)
            if len(value) == 36
            else Q(host__name=value)
        )

    def filter_label(self, queryset: QuerySet[Container], name: str, value: str) -> QuerySet:
        key, _, val = value.partition("=")
        return queryset.filter(**{f"labels__{key}": val}) if key else queryset

    def filter_q(self, queryset: QuerySet[Container], name: str, value: str) -> QuerySet:
        return queryset.filter(name__icontains=value)


class ImageFilterSet(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug")

    class Meta:
        model = Image
        fields = ["project", "certification", "source"]
