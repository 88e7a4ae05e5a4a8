"""Containers API: projects and members, containers with asynchronous actions (each returns
the Operation to poll), logs, stats, events; images; operations. Every list is scoped to the
caller's projects, so another tenant's object answers 404."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from agent.protocol import names
from agent.protocol.messages import ContainerAction, LogsRequest
from config.errors import CorralError
from containers import certification as cert_services
from containers import selectors, services
from containers.api.serializers import (
    ContainerActionSerializer,
    ContainerEventSerializer,
    ContainerSerializer,
    ImagePullSerializer,
    ImageSerializer,
    ImageUploadSerializer,
    MembershipSerializer,
    ProjectSerializer,
    RegistryCredentialSerializer,
)
from containers.choices import Role
from containers.filtersets import ContainerFilterSet, ImageFilterSet
from containers.images import services as image_services
from containers.models import Container, Image, Membership, Project
from containers.models_images import RegistryCredential
from containers.permissions import has_role
from hosts.api.serializers import OperationSerializer
from hosts.filtersets import OperationFilterSet
from hosts.models import Operation


def require_role(request: Request, project: Project, role: str) -> None:
    if not has_role(request.user, project, role):
        raise PermissionDenied(f"You need the {role} role in project {project.slug}.")


def operation_response(op: Operation, accepted: int = status.HTTP_202_ACCEPTED) -> Response:
    body = OperationSerializer(op).data
    if op.status == "failed" and op.error_code == "host_unavailable":
        return Response(
            {"detail": op.error, "code": op.error_code, "operation": body},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    return Response(body, status=accepted)


class ProjectViewSet(viewsets.ModelViewSet):
    queryset = Project.objects.none()  # for the schema; get_queryset scopes
    serializer_class = ProjectSerializer
    lookup_field = "slug"
    search_fields = ["slug", "name"]

    def get_queryset(self) -> QuerySet[Project]:
        return selectors.project_list(self.request.user)

    def get_permissions(self) -> list[Any]:
        if self.action in ("create", "destroy"):
            return [permissions.IsAdminUser()]
        return [permissions.IsAuthenticated()]

    def perform_update(self, serializer: BaseSerializer[Project]) -> None:
        assert isinstance(serializer.instance, Project)
        require_role(self.request, serializer.instance, Role.ADMIN)
        quota_fields = {
            "max_containers",
            "max_memory_bytes",
            "max_cpu_millicores",
            "require_certified_hosts",
            "allow_host_network",
        }
        if quota_fields & set(serializer.validated_data) and not self.request.user.is_staff:
            raise PermissionDenied("Only fleet admins change quotas and host policies.")
        serializer.save()

    @action(detail=True, methods=["get"])
    def usage(self, request: Request, slug: str | None = None) -> Response:
        return Response(services.project_usage(self.get_object()))

    @extend_schema(request=MembershipSerializer, responses=MembershipSerializer(many=True))
    @action(detail=True, methods=["get", "post", "delete"])
    def members(self, request: Request, slug: str | None = None) -> Response:
        project = self.get_object()
        if request.method == "GET":
            rows = Membership.objects.filter(project=project).select_related("user")
            return Response(MembershipSerializer(rows, many=True).data)
        require_role(request, project, Role.ADMIN)
        serializer = MembershipSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = serializer.validated_data["user"]
        if request.method == "DELETE":
            Membership.objects.filter(project=project, user=user).delete()
            return Response(status=status.HTTP_204_NO_CONTENT)
        row, _ = Membership.objects.update_or_create(
            project=project, user=user, defaults={"role": serializer.validated_data["role"]}
        )
        return Response(MembershipSerializer(row).data, status=status.HTTP_201_CREATED)


class ContainerViewSet(viewsets.ModelViewSet):
    queryset = Container.objects.none()  # for the schema; get_queryset scopes
    serializer_class = ContainerSerializer
    filterset_class = ContainerFilterSet
    search_fields = ["name"]
    ordering_fields = ["name", "created_at", "observed_state"]
    http_method_names = ["get", "post", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Container]:
        return selectors.container_list(self.request.user)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        project = data.pop("project")
        if not selectors.project_list(request.user).filter(pk=project.pk).exists():
            raise ValidationError({"project": [f"Object with slug={project.slug} does not exist."]})
        require_role(request, project, Role.OPERATOR)
        container, op = services.container_create(
            user=request.user, project=project, host=data.pop("host", None), **data
        )
        serializer.instance = container  # its fields are built already: answer with them
        body = dict(serializer.data)
        body["operation"] = OperationSerializer(op).data
        return Response(body, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._action(request, "remove")

    def _action(self, request: Request, name: str) -> Response:
        container = self.get_object()
        require_role(request, container.project, Role.OPERATOR)
        params = ContainerActionSerializer(data=request.data or request.query_params)
        params.is_valid(raise_exception=True)
        op = services.container_action(
            user=request.user, container=container, action=name, **params.validated_data
        )
        return operation_response(op)

    @extend_schema(request=ContainerActionSerializer, responses=OperationSerializer)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        return self._action(request, "start")

    @extend_schema(request=ContainerActionSerializer, responses=OperationSerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str | None = None) -> Response:
        return self._action(request, "stop")

    @extend_schema(request=ContainerActionSerializer, responses=OperationSerializer)
    @action(detail=True, methods=["post"])
    def restart(self, request: Request, pk: str | None = None) -> Response:
        return self._action(request, "restart")

    @extend_schema(request=ContainerActionSerializer, responses=OperationSerializer)
    @action(detail=True, methods=["post"])
    def remove(self, request: Request, pk: str | None = None) -> Response:
        return self._action(request, "remove")

    @extend_schema(responses=ContainerEventSerializer(many=True))
    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str | None = None) -> Response:
        rows = self.get_object().events.all()[:500]
        return Response(ContainerEventSerializer(rows, many=True).data)

    @extend_schema(responses=OperationSerializer(many=True))
    @action(detail=True, methods=["get"])
    def operations(self, request: Request, pk: str | None = None) -> Response:
        container = self.get_object()
        rows = Operation.objects.filter(target_id=str(container.pk)).select_related(
            "host", "requested_by"
        )[:200]
        return Response(OperationSerializer(rows, many=True).data)

    @action(detail=True, methods=["get"])
    def stats(self, request: Request, pk: str | None = None) -> Response:
        container = self.get_object()
        op = services.container_query(
            user=request.user,
            container=container,
            kind=names.AGENT_CONTAINER_STATS,
            payload=ContainerAction(container_id=str(container.pk)),
        )
        if op.status != "succeeded":
            return operation_response(op, status.HTTP_504_GATEWAY_TIMEOUT)
        return Response(op.result.get("stats", {}))

    @extend_schema(
        parameters=[
            OpenApiParameter("tail", int),
            OpenApiParameter("since", float),
            OpenApiParameter("follow", bool),
        ]
    )
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, pk: str | None = None) -> Any:
        container = self.get_object()
        try:
            tail = int(request.query_params.get("tail", 100))
            since = request.query_params.get("since")
            since_f = float(since) if since else None
        except ValueError:
            raise ValidationError({"tail": ["tail and since must be numbers."]}) from None
        if not 0 <= tail <= 100_000:
            raise ValidationError({"tail": ["Must be between 0 and 100000."]})
        if request.query_params.get("follow") in ("1", "true", "yes"):
            return StreamingHttpResponse(
                self._follow(request, container, tail, since_f), content_type="application/x-ndjson"
            )
        op = self._logs_once(request, container, tail, since_f)
        if op.status != "succeeded":
            return operation_response(op, status.HTTP_504_GATEWAY_TIMEOUT)
        return Response({"lines": op.result.get("lines", [])})

    def _logs_once(
        self, request: Request, container: Container, tail: int | None, since: float | None
    ) -> Operation:
        return services.container_query(
            user=request.user,
            container=container,
            kind=names.AGENT_CONTAINER_LOGS,
            payload=LogsRequest(container_id=str(container.pk), tail=tail, since=since),
        )

    def _follow(
        self, request: Request, container: Container, tail: int, since: float | None
    ) -> Iterator[str]:
        deadline = time.monotonic() + 3600
        first = True
        while time.monotonic() < deadline:
            op = self._logs_once(request, container, tail if first else None, since)
            first = False
            for line in op.result.get("lines", []):
                since = max(since or 0.0, float(line.get("ts", 0)) + 1e-6)
                yield json.dumps(line) + "\n"
            container.refresh_from_db(fields=["observed_state", "removed_at"])
            if container.removed_at or container.observed_state in ("exited", "stopped"):
                return
            time.sleep(1.0)


class ImageViewSet(viewsets.ModelViewSet):
    """Images of the caller's projects: register by reference, upload an archive, pull onto
    hosts (an Operation per host), collect garbage on hosts, certification report, and the
    project's registry credentials (write-only passwords)."""

    queryset = Image.objects.none()  # for the schema; get_queryset scopes
    serializer_class = ImageSerializer
    filterset_class = ImageFilterSet
    search_fields = ["reference", "digest"]
    http_method_names = ["get", "post", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Image]:
        image_services.image_pulls_sync()
        return selectors.image_list(self.request.user).prefetch_related("locations__host")

    def _project(self, project: Project) -> Project:
        if not selectors.project_list(self.request.user).filter(pk=project.pk).exists():
            raise ValidationError({"project": [f"Object with slug={project.slug} does not exist."]})
        require_role(self.request, project, Role.OPERATOR)
        return project

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        image = image_services.image_register(
            user=request.user,
            project=self._project(data["project"]),
            reference=data["reference"],
            registry_url=data.get("registry_url", ""),
        )
        return Response(self.get_serializer(image).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: Image) -> None:
        require_role(self.request, instance.project, Role.OPERATOR)
        if instance.containers.filter(removed_at__isnull=True).exists():
            raise CorralError(
                f"Image {instance.reference} is used by live containers.", field="image"
            )
        instance.delete()

    @extend_schema(request=ImageUploadSerializer, responses=ImageSerializer(many=True))
    @action(detail=False, methods=["post"], parser_classes=[MultiPartParser, FormParser])
    def upload(self, request: Request) -> Response:
        params = ImageUploadSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        project = self._project(data["project"])
        archive = data["archive"]
        with tempfile.NamedTemporaryFile(suffix=".tar") as tmp:
            if hasattr(archive, "temporary_file_path"):  # large uploads are on disk already
                path = Path(archive.temporary_file_path())
            else:
                for chunk in archive.chunks():
                    tmp.write(chunk)
                tmp.flush()
                path = Path(tmp.name)
            images = image_services.image_upload(
                user=request.user, project=project, archive=path, name=data["name"], tag=data["tag"]
            )
        body = self.get_serializer(images, many=True).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=ImagePullSerializer, responses=OperationSerializer(many=True))
    @action(detail=True, methods=["post"])
    def pull(self, request: Request, pk: str | None = None) -> Response:
        image = self.get_object()
        require_role(request, image.project, Role.OPERATOR)
        params = ImagePullSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        ops = image_services.image_pull(
            user=request.user, image=image, hosts=list(params.validated_data["hosts"])
        )
        return Response(OperationSerializer(ops, many=True).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses=OperationSerializer(many=True))
    @action(detail=True, methods=["post"])
    def gc(self, request: Request, pk: str | None = None) -> Response:
        image = self.get_object()
        require_role(request, image.project, Role.OPERATOR)
        ops = image_services.image_gc(user=request.user, image=image)
        return Response(OperationSerializer(ops, many=True).data, status=status.HTTP_202_ACCEPTED)

    @action(detail=True, methods=["get"])
    def certification(self, request: Request, pk: str | None = None) -> Response:
        return Response(cert_services.image_report(self.get_object()))

    @extend_schema(
        request=RegistryCredentialSerializer,
        responses=RegistryCredentialSerializer(many=True),
        parameters=[OpenApiParameter("project", str), OpenApiParameter("registry", str)],
    )
    @action(detail=False, methods=["get", "post", "delete"])
    def credentials(self, request: Request) -> Response:
        if request.method == "POST":
            params = RegistryCredentialSerializer(data=request.data)
            params.is_valid(raise_exception=True)
            data = dict(params.validated_data)
            project = self._project(data.pop("project"))
            require_role(request, project, Role.ADMIN)
            cred = image_services.credential_set(user=request.user, project=project, **data)
            body = RegistryCredentialSerializer(cred).data
            return Response(body, status=status.HTTP_201_CREATED)
        slug = request.query_params.get("project", "")
        found = selectors.project_list(request.user).filter(slug=slug).first()
        if found is None:
            raise ValidationError({"project": [f"Object with slug={slug} does not exist."]})
        project = found
        rows = RegistryCredential.objects.filter(project=project).select_related("project")
        if request.method == "DELETE":
            require_role(request, project, Role.ADMIN)
            registry = request.query_params.get("registry", "")
            if not rows.filter(registry=registry).delete()[0]:
                raise ValidationError({"registry": [f"No credentials for {registry!r}."]})
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(RegistryCredentialSerializer(rows, many=True).data)


class OperationViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Operation.objects.none()  # for the schema; get_queryset scopes
    serializer_class = OperationSerializer
    filterset_class = OperationFilterSet
    search_fields = ["kind", "error", "target_id"]

    def get_queryset(self) -> QuerySet[Operation]:
        return selectors.operation_list(self.request.user)
