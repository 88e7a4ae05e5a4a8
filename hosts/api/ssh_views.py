"""SSH bootstrap API (fleet admins only): add a host by SSH, scan and confirm its host key,
install (idempotent; again = upgrade), uninstall, and follow the operations with their steps.
Credentials are write-only: no answer ever contains a key, passphrase or password."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from hosts.models import Operation, OperationEvent
from hosts.models_ssh import DEFAULT_PREFIX, SSHTarget
from hosts.ssh import services


class SSHTargetSerializer(serializers.ModelSerializer):
    private_key = serializers.CharField(write_only=True, required=False, allow_blank=True,
                                        trim_whitespace=False)  # fmt: skip
    passphrase = serializers.CharField(write_only=True, required=False, allow_blank=True,
                                       trim_whitespace=False)  # fmt: skip
    password = serializers.CharField(write_only=True, required=False, allow_blank=True,
                                     trim_whitespace=False)  # fmt: skip
    install = serializers.BooleanField(write_only=True, required=False, default=True)
    heartbeat_timeout = serializers.FloatField(
        write_only=True, required=False, min_value=1.0, max_value=1800.0
    )
    host_key_pinned = serializers.BooleanField(read_only=True)

    class Meta:
        model = SSHTarget
        fields = [
            "id", "name", "address", "port", "user", "auth", "allow_password", "sudo",
            "install_prefix", "host_key_fingerprint", "host_key_type", "host_key_pinned",
            "host_key_confirmed_at", "host", "state", "installed_version", "installed_at",
            "created_at", "private_key", "passphrase", "password", "install",
            "heartbeat_timeout",
        ]  # fmt: skip
        read_only_fields = [
            "auth", "host", "state", "installed_version", "installed_at", "created_at",
            "host_key_confirmed_at",
        ]  # fmt: skip
        extra_kwargs = {"install_prefix": {"default": DEFAULT_PREFIX}}

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("private_key") and not attrs.get("password"):
            raise serializers.ValidationError(
                {"private_key": "Give a private_key (or a password with allow_password=true)."}
            )
        password_only = attrs.get("password") and not attrs.get("private_key")
        if password_only and not attrs.get("allow_password"):
            raise serializers.ValidationError(
                {"allow_password": "Password authentication needs allow_password=true."}
            )
        return attrs


class OperationEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = OperationEvent
        fields = ["at", "level", "message", "data"]


class SSHOperationSerializer(serializers.ModelSerializer):
    events = OperationEventSerializer(many=True, read_only=True)

    class Meta:
        model = Operation
        fields = [
            "id", "kind", "host", "status", "error_code", "error", "step", "payload", "result",
            "created_at", "started_at", "finished_at", "events",
        ]  # fmt: skip


class HostKeySerializer(serializers.Serializer):
    fingerprint = serializers.CharField(max_length=64)
    type = serializers.CharField(max_length=32)


class StartSerializer(serializers.Serializer):
    heartbeat_timeout = serializers.FloatField(required=False, min_value=1.0, max_value=1800.0)


class SSHTargetViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Hosts added by SSH. Creating one with a pinned host key starts the install at once."""

    permission_classes = [permissions.IsAdminUser]
    serializer_class = SSHTargetSerializer

    def get_queryset(self) -> QuerySet[SSHTarget]:
        return SSHTarget.objects.select_related("host")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        install = data.pop("install", True)
        heartbeat_timeout = data.pop("heartbeat_timeout", None)
        target = services.ssh_target_create(created_by=request.user, **data)
        body: dict[str, Any] = {"ssh_host": SSHTargetSerializer(target).data, "operation": None}
        if install and target.host_key_pinned:
            op = services.ssh_operation_start(
                target=target, action="install", requested_by=request.user,
                heartbeat_timeout=heartbeat_timeout,
            )  # fmt: skip
            body["operation"] = SSHOperationSerializer(op).data
        elif not target.host_key_pinned:
            body["next"] = (
                "No host key was given: POST scan-host-key/, check the fingerprint with the "
                "host's owner, then POST it to confirm-host-key/ and install/."
            )
        return Response(body, status=status.HTTP_201_CREATED)

    def _start(self, request: Request, action_name: str) -> Response:
        target = self.get_object()
        params = StartSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        op = services.ssh_operation_start(
            target=target, action=action_name, requested_by=request.user,
            heartbeat_timeout=params.validated_data.get("heartbeat_timeout"),
        )  # fmt: skip
        return Response(SSHOperationSerializer(op).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=StartSerializer, responses={202: SSHOperationSerializer})
    @action(detail=True, methods=["post"])
    def install(self, request: Request, pk: str | None = None) -> Response:
        return self._start(request, "install")

    @extend_schema(request=StartSerializer, responses={202: SSHOperationSerializer})
    @action(detail=True, methods=["post"])
    def uninstall(self, request: Request, pk: str | None = None) -> Response:
        return self._start(request, "uninstall")

    @extend_schema(request=None, responses=HostKeySerializer)
    @action(detail=True, methods=["post"], url_path="scan-host-key")
    def scan_host_key(self, request: Request, pk: str | None = None) -> Response:
        """Show the key the host presents now; nothing is trusted until it is confirmed."""
        found = services.ssh_host_key_scan(target=self.get_object())
        return Response(found)

    @extend_schema(request=HostKeySerializer, responses=SSHTargetSerializer)
    @action(detail=True, methods=["post"], url_path="confirm-host-key")
    def confirm_host_key(self, request: Request, pk: str | None = None) -> Response:
        params = HostKeySerializer(data=request.data)
        params.is_valid(raise_exception=True)
        target = services.ssh_host_key_confirm(
            target=self.get_object(),
            fingerprint=params.validated_data["fingerprint"],
            key_type=params.validated_data["type"],
            user=request.user,
            remote_addr=request.META.get("REMOTE_ADDR", ""),
        )
        return Response(SSHTargetSerializer(target).data)

    @extend_schema(responses=SSHOperationSerializer(many=True))
    @action(detail=True, methods=["get"])
    def operations(self, request: Request, pk: str | None = None) -> Response:
        target = self.get_object()
        ops = (
            Operation.objects.filter(target_type="ssh-host", target_id=str(target.pk))
            .prefetch_related("events")
            .order_by("-created_at")[:20]
        )
        return Response(SSHOperationSerializer(ops, many=True).data)
