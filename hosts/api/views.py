"""Hosts API: hosts (read for members, write for fleet admins), enrollment tokens, enroll."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from hosts import selectors, services
from hosts.api.serializers import (
    AuditEntrySerializer,
    EnrollmentTokenSerializer,
    EnrollSerializer,
    HostDetailSerializer,
    HostSerializer,
    HostStatusChangeSerializer,
)
from hosts.filtersets import HostFilterSet
from hosts.keys import public_key_text
from hosts.models import AuditEntry, EnrollmentToken, Host


class IsStaffOrReadOnly(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        return request.method in permissions.SAFE_METHODS or bool(request.user.is_staff)


class HostViewSet(viewsets.ModelViewSet):
    permission_classes = [IsStaffOrReadOnly]
    filterset_class = HostFilterSet
    search_fields = ["name", "address", "kernel", "os_name"]
    ordering_fields = ["name", "status", "last_heartbeat_at", "created_at"]

    def get_queryset(self) -> QuerySet[Host]:
        return selectors.host_list()

    def get_serializer_class(self) -> type:
        return HostDetailSerializer if self.action == "retrieve" else HostSerializer

    def perform_create(self, serializer: BaseSerializer[Host]) -> None:
        serializer.instance = services.host_create(**serializer.validated_data)

    @extend_schema(responses=HostStatusChangeSerializer(many=True))
    @action(detail=True, methods=["get"])
    def timeline(self, request: Request, pk: str | None = None) -> Response:
        host = self.get_object()
        rows = host.status_changes.all()[:200]
        return Response(HostStatusChangeSerializer(rows, many=True).data)

    @extend_schema(request=None, responses=HostSerializer)
    @action(detail=True, methods=["post"])
    def maintenance(self, request: Request, pk: str | None = None) -> Response:
        host = self.get_object()
        data = request.data if isinstance(request.data, dict) else {}
        enabled = data.get("enabled", True) in (True, "true", "1", 1)
        Host.objects.filter(pk=host.pk).update(maintenance=enabled)
        host.refresh_from_db()
        return Response(HostSerializer(host).data)


class EnrollmentTokenViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    permission_classes = [permissions.IsAdminUser]
    serializer_class = EnrollmentTokenSerializer
    queryset = EnrollmentToken.objects.select_related("host", "used_by")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        token, secret = services.enrollment_token_create(
            created_by=request.user,
            project_slug=data.get("project_slug", ""),
            host=data.get("host"),
            ttl_seconds=data.get("ttl_seconds"),
            note=data.get("note", ""),
        )
        body = dict(self.get_serializer(token).data)
        body["token"] = secret
        server = settings.CORRAL["PUBLIC_URL"]
        body["command"] = f"python -m agent enroll --server {server} --token {secret}"
        return Response(body, status=status.HTTP_201_CREATED)


class EnrollView(APIView):
    """Agents enroll here with a single-use token (no user session)."""

    authentication_classes: list[type] = []
    permission_classes = [permissions.AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "enroll"

    @extend_schema(request=EnrollSerializer, responses={201: dict})
    def post(self, request: Request) -> Response:
        serializer = EnrollSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        host = services.host_enroll(
            token=data["token"],
            name=data["name"],
            public_key=data["public_key"],
            address=data.get("address", ""),
            agent_version=data.get("agent_version", ""),
            host_id=str(data["host_id"]) if data.get("host_id") else None,
        )
        return Response(
            {
                "host_id": str(host.pk),
                "name": host.name,
                "queue": host.queue,
                "controlplane_public_key": public_key_text(),
                "broker_url": settings.CORRAL["AGENT_BROKER_URL"],
                "broker_transport_options": settings.CELERY_BROKER_TRANSPORT_OPTIONS
                if settings.CORRAL["AGENT_BROKER_URL"].startswith("filesystem")
                else {},
                "heartbeat_interval": settings.CORRAL["HEARTBEAT_INTERVAL"],
            },
            status=status.HTTP_201_CREATED,
        )


class AuditViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit log: fleet admins only."""

    permission_classes = [permissions.IsAdminUser]
    serializer_class = AuditEntrySerializer
    queryset = AuditEntry.objects.all()
    filterset_fields = [
        "action",
        "username",
        "method",
        "object_type",
        "object_id",
        "project_slug",
        "outcome",
    ]
    search_fields = ["path", "username", "object_id"]
