"""Serializers of the containers API: shapes only; rules live in models and services."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agent.protocol.containers import ENV_NAME_RE, PortMapping
from agent.protocol.errors import ProtocolError
from containers import validators
from containers.choices import NetworkMode, Role
from containers.models import Container, ContainerEvent, Image, Membership, Project
from hosts.models import Host

# What the control plane and the agents maintain: shown by the API, never written through it.
OBSERVED_FIELDS = (
    "desired_state",
    "observed_state",
    "observed_at",
    "exit_code",
    "pid",
    "restart_count",
    "selinux_label",
    "ip_address",
    "detail",
    "started_at",
    "finished_at",
    "created_at",
    "updated_at",
)
RESTART_RE = re.compile(r"^(no|always|on-failure(:(\d{1,4}))?)$")


class ProjectSerializer(serializers.ModelSerializer):
    container_count = serializers.IntegerField(read_only=True, default=0)

    class Meta:
        model = Project
        fields = [
            "id",
            "slug",
            "name",
            "description",
            "max_containers",
            "max_memory_bytes",
            "max_cpu_millicores",
            "cpu_weight",
            "require_certified_hosts",
            "require_certified_images",
            "host_profile",
            "image_profile",
            "allow_host_network",
            "container_count",
            "created_at",
        ]
        read_only_fields = ["id", "created_at", "container_count"]


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.SlugRelatedField(
        source="user", slug_field="username", queryset=get_user_model().objects.all()
    )
    role = serializers.ChoiceField(choices=Role.choices)

    class Meta:
        model = Membership
        fields = ["id", "username", "role"]


# Documents the shape in the OpenAPI schema; the rules, with messages naming
# ``sockets[i].<field>``, are in containers.validators (shared with the model's clean()).
class SocketSerializer(serializers.Serializer):
    """A socket of a socket-activated container: tcp or udp with host_ip and port, or unix
    with an absolute path. Handed over as fds 3.. in the order given."""

    name = serializers.CharField(help_text="Its LISTEN_FDNAMES entry: letters, digits, _ . -")
    protocol = serializers.ChoiceField(choices=validators.SOCKET_PROTOCOLS, default="tcp")
    host_ip = serializers.IPAddressField(
        required=False, default="127.0.0.1", help_text="tcp/udp: the host address to bind"
    )
    port = serializers.IntegerField(
        required=False, min_value=1, max_value=65535, help_text="tcp/udp: the host port"
    )
    path = serializers.CharField(required=False, help_text="unix: absolute path on the host")


@extend_schema_field(SocketSerializer(many=True))
class SocketListField(serializers.ListField):
    """A list of sockets, validated as a whole (names must be unique)."""

    child = serializers.DictField()


class ContainerSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    host = serializers.PrimaryKeyRelatedField(
        queryset=Host.objects.defer("inventory"),
        required=False,
        allow_null=True,
        help_text="Pin to this host; leave empty to let placement choose.",
    )
    host_name = serializers.CharField(source="host.name", read_only=True, default=None)
    image = serializers.CharField(
        source="image_reference",
        required=False,
        allow_blank=True,
        help_text="Image reference, e.g. registry:5000/app:1.2",
    )
    restart_policy = serializers.CharField(
        required=False, default="no", help_text="no | on-failure[:N] | always"
    )
    command = serializers.ListField(child=serializers.CharField(), required=False)
    args = serializers.ListField(child=serializers.CharField(), required=False)
    env = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False)
    labels = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False)
    placement = serializers.DictField(child=serializers.CharField(), required=False)
    network_mode = serializers.ChoiceField(choices=NetworkMode.choices, default="none")
    ports = serializers.ListField(child=serializers.DictField(), required=False)
    sockets = SocketListField(
        required=False,
        help_text="Socket activation: the host's agent binds these and starts the container on "
        "the first connection, passing them as fds 3.. (LISTEN_FDS, LISTEN_FDNAMES).",
    )
    idle_stop_seconds = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="Stop a socket-activated container after this many seconds without a "
        "connection; the next connection starts it again.",
    )

    class Meta:
        model = Container
        fields = [
            "id",
            "project",
            "name",
            "host",
            "host_name",
            "mode",
            "image",
            "command",
            "args",
            "env",
            "working_dir",
            "user",
            "cpu_weight",
            "cpu_millicores",
            "memory_limit",
            "pids_limit",
            "restart_policy",
            "network_mode",
            "ports",
            "sockets",
            "idle_stop_seconds",
            "labels",
            "placement",
            *OBSERVED_FIELDS,
        ]
        read_only_fields = ["id", *OBSERVED_FIELDS]

    def to_representation(self, instance: Container) -> dict[str, Any]:
        data = super().to_representation(instance)
        policy = instance.restart_policy
        if policy == "on-failure" and instance.restart_max_retries:
            policy = f"on-failure:{instance.restart_max_retries}"
        data["restart_policy"] = policy
        return data

    def validate_restart_policy(self, value: str) -> str:
        if not RESTART_RE.match(value):
            raise serializers.ValidationError("Use no, always, on-failure or on-failure:N.")
        return value

    def validate_env(self, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not ENV_NAME_RE.match(k)]
        if bad:
            raise serializers.ValidationError(f"Not a valid variable name: {bad[0]!r}.")
        return value

    def validate_ports(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for i, item in enumerate(value):
            try:
                out.append(PortMapping.from_dict(item).to_dict())
                validators.check_host_port(f"ports[{i}].host_port", item["host_port"])
            except ProtocolError as exc:
                raise serializers.ValidationError(
                    f"ports[{i}].{exc.field}: {exc.message}"
                ) from None
            except DjangoValidationError as exc:
                raise serializers.ValidationError(exc.messages) from None
        return out

    def validate_sockets(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            return validators.socket_list(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        policy = attrs.pop("restart_policy", "no")
        name, _, retries = policy.partition(":")
        attrs["restart_policy"] = name
        attrs["restart_max_retries"] = int(retries or 0)
        return attrs


class ContainerActionSerializer(serializers.Serializer):
    timeout = serializers.IntegerField(required=False, default=10, min_value=0, max_value=3600)
    force = serializers.BooleanField(required=False, default=False)


class ContainerEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = ContainerEvent
        fields = ["at", "kind", "message", "data"]


class ImageSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    hosts = serializers.SerializerMethodField(help_text="Hosts holding the image")

    class Meta:
        model = Image
        fields = [
            "id",
            "project",
            "reference",
            "digest",
            "source",
            "registry_url",
            "size",
            "platform",
            "config",
            "labels",
            "layers",
            "certification",
            "findings",
            "hosts",
            "created_at",
        ]
        read_only_fields = [
            "id",
            "digest",
            "source",
            "size",
            "platform",
            "config",
            "labels",
            "layers",
            "certification",
            "findings",
            "hosts",
            "created_at",
        ]
        # Registration goes through containers.images.services (idempotent per reference).
        validators: list[Any] = []

    def get_hosts(self, image: Image) -> list[dict[str, str]]:
        return [
            {"id": str(loc.host_id), "name": loc.host.name, "pulled_at": loc.pulled_at.isoformat()}
            for loc in image.locations.all()
        ]


class ImageUploadSerializer(serializers.Serializer):
    project = serializers.SlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    archive = serializers.FileField(help_text="docker save archive or OCI image-layout tarball")
    name = serializers.CharField(required=False, allow_blank=True, default="")
    tag = serializers.CharField(required=False, allow_blank=True, default="")


class ImagePullSerializer(serializers.Serializer):
    hosts = serializers.PrimaryKeyRelatedField(
        queryset=Host.objects.all(), many=True, allow_empty=False
    )


class RegistryCredentialSerializer(serializers.Serializer):
    """Write: the password. Read: never the password (not even encrypted)."""

    project = serializers.SlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    registry = serializers.CharField(max_length=255)
    username = serializers.CharField(max_length=255)
    password = serializers.CharField(write_only=True, trim_whitespace=False)
    ca_pem = serializers.CharField(required=False, allow_blank=True, default="", write_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)
