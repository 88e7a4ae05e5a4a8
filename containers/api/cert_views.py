"""Certification API: profiles, the fleet policy, a project's policy, the event timeline and
the JSON report of a host (the image report is ``/images/<id>/certification``)."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from containers import certification, selectors
from containers.choices import Role
from containers.permissions import has_role
from hosts.models import Host


class FleetPolicySerializer(serializers.Serializer[Any]):
    host_profile = serializers.CharField(required=False)
    image_profile = serializers.CharField(required=False)


class ProjectPolicySerializer(serializers.Serializer[Any]):
    host_profile = serializers.CharField(required=False)
    image_profile = serializers.CharField(required=False)
    require_certified_hosts = serializers.BooleanField(required=False)
    require_certified_images = serializers.BooleanField(required=False)


def _fleet_body() -> dict[str, Any]:
    policy = certification.fleet_policy()
    return {
        "host_profile": policy.host_profile,
        "image_profile": policy.image_profile,
        "updated_at": policy.updated_at.isoformat(),
        "updated_by": policy.updated_by.username if policy.updated_by else None,
    }


class ProfilesView(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        return Response(certification.profiles_describe())


class FleetPolicyView(APIView):
    """Everyone signed in reads the fleet policy; only fleet admins change it."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        return Response(_fleet_body())

    @extend_schema(request=FleetPolicySerializer, responses=OpenApiTypes.OBJECT)
    def put(self, request: Request) -> Response:
        if not request.user.is_staff:
            raise PermissionDenied("Only fleet admins change the fleet certification policy.")
        params = FleetPolicySerializer(data=request.data)
        params.is_valid(raise_exception=True)
        certification.fleet_policy_set(user=request.user, **params.validated_data)
        return Response(_fleet_body())


class ProjectPolicyView(APIView):
    """A project's certification policy. Project admins choose profiles and whether images
    must be certified; requiring certified hosts is a fleet admin's decision (as for quotas)."""

    def _project(self, request: Request, slug: str) -> Any:
        return get_object_or_404(selectors.project_list(request.user), slug=slug)

    def _body(self, project: Any) -> dict[str, Any]:
        return {
            "project": project.slug,
            "host_profile": certification.host_profile_for(project),
            "image_profile": certification.image_profile_for(project),
            "require_certified_hosts": project.require_certified_hosts,
            "require_certified_images": project.require_certified_images,
            "history": [
                {
                    "at": c.at.isoformat(),
                    "field": c.field,
                    "from": c.old,
                    "to": c.new,
                    "by": c.user.username if c.user else None,
                }
                for c in project.policy_changes.select_related("user")[:100]
            ],
        }

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, slug: str) -> Response:
        return Response(self._body(self._project(request, slug)))

    @extend_schema(request=ProjectPolicySerializer, responses=OpenApiTypes.OBJECT)
    def put(self, request: Request, slug: str) -> Response:
        project = self._project(request, slug)
        if not has_role(request.user, project, Role.ADMIN):
            raise PermissionDenied(f"You need the admin role in project {project.slug}.")
        params = ProjectPolicySerializer(data=request.data)
        params.is_valid(raise_exception=True)
        fields = dict(params.validated_data)
        if "require_certified_hosts" in fields and not request.user.is_staff:
            raise PermissionDenied("Only fleet admins change host requirements.")
        project = certification.project_policy_set(user=request.user, project=project, **fields)
        return Response(self._body(project))


class EventsView(APIView):
    @extend_schema(parameters=[OpenApiParameter("limit", int)], responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        try:
            limit = max(1, min(int(request.query_params.get("limit", 100)), 500))
        except ValueError:
            limit = 100
        return Response(certification.certification_events(limit=limit, user=request.user))


class HostCertificationView(APIView):
    """JSON export of a host's certification report (hosts are visible fleet-wide)."""

    @extend_schema(parameters=[OpenApiParameter("profile", str)], responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, pk: str) -> Response:
        host = get_object_or_404(Host, pk=pk)
        profile = request.query_params.get("profile") or None
        return Response(certification.host_report(host, profile=profile))


urlpatterns = [
    path("certification/profiles/", ProfilesView.as_view(), name="certification-profiles"),
    path("certification/policy/", FleetPolicyView.as_view(), name="certification-policy"),
    path(
        "certification/projects/<slug:slug>/",
        ProjectPolicyView.as_view(),
        name="certification-project",
    ),
    path("certification/events/", EventsView.as_view(), name="certification-events"),
    path(
        "hosts/<uuid:pk>/certification/",
        HostCertificationView.as_view(),
        name="host-certification",
    ),
]
