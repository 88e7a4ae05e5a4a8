"""Container workflows: create with quotas and placement, actions, results and heartbeats from
agents, reconciliation of desired and observed state. Views, API, admin and tasks call these."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from agent.protocol import names
from agent.protocol.containers import ContainerSpec, ContainerStatus
from agent.protocol.messages import ContainerAction, CreateContainer, PullImage
from config.errors import CorralError, InvalidTransition, QuotaExceeded
from containers.choices import ContainerMode, DesiredState, ObservedState
from containers.models import Container, ContainerEvent, Image, Project
from containers.placement import place
from hosts import dispatch
from hosts.choices import OPERATION_ACTIVE, CertificationStatus
from hosts.models import RELATED_HOST_LARGE_FIELDS, Host, Operation
from hosts.services import operation_create, operation_event

logger = logging.getLogger(__name__)

CPU_PERIOD_US = 100_000
LIVE_STATES = (ObservedState.CREATED, ObservedState.RUNNING, ObservedState.PAUSED)


class ImageNotCertified(CorralError):
    http_status = 409
    code = "image_not_certified"


class PortInUse(CorralError):
    http_status = 409
    code = "port_in_use"


def _same_binding(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same unix socket path, or same host port and protocol on the same address (0.0.0.0 is
    every address)."""
    if "path" in a or "path" in b:
        return a.get("path") == b.get("path")
    if int(a["host_port"]) != int(b["host_port"]) or a.get("protocol", "tcp") != b.get(
        "protocol", "tcp"
    ):
        return False
    wildcard = "0.0.0.0"  # noqa: S104 - compared, not bound
    ip_a, ip_b = a.get("host_ip", wildcard), b.get("host_ip", wildcard)
    return wildcard in (ip_a, ip_b) or ip_a == ip_b


def _host_bindings(ports: list[Any], sockets: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """What a container takes on its host, each with its field: published ports and the
    sockets its agent binds for socket activation."""
    out = [(f"ports[{i}].host_port", dict(p)) for i, p in enumerate(ports)]
    for i, s in enumerate(sockets):
        if s.get("protocol") == "unix":
            out.append((f"sockets[{i}].path", {"path": s["path"]}))
        else:
            binding = {"host_ip": s["host_ip"], "host_port": s["port"], "protocol": s["protocol"]}
            out.append((f"sockets[{i}].port", binding))
    return out


def _where(binding: dict[str, Any]) -> str:
    if "path" in binding:
        return str(binding["path"])
    host_ip = binding.get("host_ip", "0.0.0.0")  # noqa: S104 - shown, not bound
    return f"{host_ip}:{binding['host_port']}/{binding.get('protocol', 'tcp')}"


def ports_conflict_check(container: Container) -> None:
    """Refuse (409) a published host port or an activation socket that another live
    container on the same host, or an earlier entry of this one, already holds; names the
    field and the holder."""
    mine = _host_bindings(container.ports, container.sockets)
    if not mine or container.host_id is None:
        return
    others = (
        Container.objects.filter(host_id=container.host_id, removed_at__isnull=True)
        .exclude(pk=container.pk)
        .only("id", "name", "ports", "sockets")
    )
    host_name = container.host.name if container.host is not None else "?"
    for i, (field, binding) in enumerate(mine):
        where = _where(binding)
        for earlier_field, earlier in mine[:i]:
            if _same_binding(binding, earlier):
                raise PortInUse(f"{where} is already taken by {earlier_field}.", field=field)
        for other in others:
            if any(
                _same_binding(binding, b) for _, b in _host_bindings(other.ports, other.sockets)
            ):
                raise PortInUse(
                    f"{where} is already taken on host {host_name} by container "
                    f"{other.name} ({other.pk}).",
                    field=field,
                    holder=str(other.pk),
                )


def container_event(container: Container | Any, kind: str, message: str = "", **data: Any) -> None:
    """Record an event of a container (given as an instance or by its id)."""
    ContainerEvent.objects.create(
        container_id=container.pk if isinstance(container, Container) else container,
        kind=kind,
        message=message[:512],
        data=data,
    )


# --- quotas --------------------------------------------------------------------------------


def project_usage(project: Project, *, name: str | None = None) -> dict[str, int]:
    """What the project's live containers hold, in one query; with ``name``, also how many
    of them have that name (``name_taken``)."""
    live = project.containers.filter(removed_at__isnull=True)
    extra = {"named": Count("pk", filter=Q(name=name))} if name is not None else {}
    agg = live.aggregate(
        memory=Sum("memory_limit"), cpu=Sum("cpu_millicores"), count=Count("pk"), **extra
    )
    usage = {
        "containers": int(agg["count"]),
        "memory_bytes": int(agg["memory"] or 0),
        "cpu_millicores": int(agg["cpu"] or 0),
    }
    if name is not None:
        usage["name_taken"] = int(agg["named"])
    return usage


def quota_check(
    project: Project, container: Container, usage: dict[str, int] | None = None
) -> None:
    """Raise QuotaExceeded naming the quota, its limit and the current use."""
    usage = usage or project_usage(project)
    checks = (
        ("max_containers", project.max_containers, usage["containers"], 1),
        (
            "max_memory_bytes",
            project.max_memory_bytes,
            usage["memory_bytes"],
            container.memory_limit or 0,
        ),
        (
            "max_cpu_millicores",
            project.max_cpu_millicores,
            usage["cpu_millicores"],
            container.cpu_millicores or 0,
        ),
    )
    for quota, limit, used, wanted in checks:
        if limit is not None and used + wanted > limit:
            raise QuotaExceeded(
                f"Project {project.slug}: quota {quota} is {limit}, {used} in use, "
                f"this container needs {wanted}.",
                quota=quota,
                limit=limit,
                used=used,
                requested=wanted,
            )


# --- specs ---------------------------------------------------------------------------------


def container_spec(container: Container) -> ContainerSpec:
    """The wire spec an agent receives; validated by the protocol (field errors -> 400)."""
    resources = {
        "cpu_weight": container.cpu_weight,
        "memory_limit": container.memory_limit,
        "pids_limit": container.pids_limit,
    }
    if container.cpu_millicores:
        resources["cpu_quota_us"] = container.cpu_millicores * CPU_PERIOD_US // 1000
    data: dict[str, Any] = {
        "id": str(container.pk),
        "name": container.name,
        "project": container.project.slug,
        "mode": container.mode,
        "command": list(container.command),
        "args": list(container.args),
        "env": dict(container.env),
        "hostname": container.name.replace("_", "-").replace(".", "-")[:63],
        "resources": {k: v for k, v in resources.items() if v is not None},
        "restart_policy": {
            "name": container.restart_policy,
            "max_retries": container.restart_max_retries,
        },
        "network": {"mode": container.network_mode, "ports": list(container.ports)},
        "labels": dict(container.labels),
    }
    if container.working_dir:
        data["working_dir"] = container.working_dir
    if container.user:
        data["user"] = container.user
    if container.mode == ContainerMode.IMAGE and container.image is not None:
        _apply_image_defaults(data, container.image)
    if container.sockets:
        data["sockets"] = list(container.sockets)
        data["idle_stop_seconds"] = container.idle_stop_seconds
    if container.mode == ContainerMode.IMAGE:
        image: dict[str, Any] = {"reference": container.image_reference}
        if container.image and container.image.digest:
            image["digest"] = container.image.digest
        data["image"] = image
    return ContainerSpec.from_dict(data)


def _apply_image_defaults(data: dict[str, Any], image: Image) -> None:
    """The image's Entrypoint/Cmd/Env/WorkingDir/User fill what the user left empty (as with
    `docker run`: a command replaces the entrypoint, args replace Cmd; env merges, user wins)."""
    from containers.images.services import image_defaults

    defaults = image_defaults(image)
    if not data["command"]:
        data["command"] = defaults["command"]
        if not data["args"]:
            data["args"] = defaults["args"]
    data["env"] = {**defaults["env"], **data["env"]}
    if "working_dir" not in data and defaults["working_dir"]:
        data["working_dir"] = defaults["working_dir"]
    if "user" not in data and defaults["user"]:
        data["user"] = defaults["user"]


def _pull_for(container: Container) -> PullImage | None:
    """How the host fetches the container's image when it does not hold it: uploads from the
    control plane's registry with a per-host token, registry images with the project's
    credentials (both only inside the signed command)."""
    if container.mode != ContainerMode.IMAGE or container.image is None or container.host is None:
        return None
    from containers.images.services import pull_message

    return pull_message(container.image, container.host)


# --- create --------------------------------------------------------------------------------


def _image_for(project: Project, reference: str) -> Image:
    """The project's Image for ``reference``; refused (409 with the failing finding ids) when
    the project requires certified images and this one is not certified under its profile."""
    from containers import certification

    image, _ = Image.objects.get_or_create(project=project, reference=reference)
    if project.require_certified_images:
        profile = certification.image_profile_for(project)
        verdict, failed = certification.evaluate_raw(image.findings, profile)
        if verdict != CertificationStatus.CERTIFIED:
            state = "not certified" if failed else "not certified yet (no findings)"
            raise ImageNotCertified(
                f"Project {project.slug} requires images certified under {profile}; "
                f"{reference} is {state}" + (f" (failed: {', '.join(failed)})." if failed else "."),
                failed_findings=failed,
                profile=profile,
            )
    return image


@transaction.atomic
def container_create(
    *, user: Any, project: Project, host: Host | None = None, **fields: Any
) -> tuple[Container, Operation]:
    """Validate, check quotas, place, record, and send the create command after commit."""
    project = Project.objects.select_for_update().get(pk=project.pk)
    container = Container(project=project, created_by=user, **fields)
    # Uniqueness of the name is checked below with a sentence of our own; project and user
    # are the objects just loaded, so their existence needs no query.
    container.full_clean(
        exclude=["id", "host", "image", "project", "created_by"], validate_constraints=False
    )
    usage = project_usage(project, name=container.name)
    if usage["name_taken"]:
        raise CorralError(
            f"A container named {container.name!r} already exists in project {project.slug}.",
            field="name",
        )
    if container.network_mode == "host" and not project.allow_host_network:
        raise CorralError(
            f"Project {project.slug} may not use the host network.", field="network_mode"
        )
    quota_check(project, container, usage)
    if container.mode == ContainerMode.IMAGE:
        container.image = _image_for(project, container.image_reference)
    decision = place(project, container, pinned=host)
    container.host = decision.host
    ports_conflict_check(container)
    container.save()
    spec = container_spec(container)
    op = operation_create(
        kind=names.AGENT_CONTAINER_CREATE,
        host=container.host,
        target_type="container",
        target_id=str(container.pk),
        project_slug=project.slug,
        requested_by=user,
        payload={"name": container.name},
    )
    operation_event(op, decision.explanation, data={"scores": decision.scores})
    container_event(container, "create", decision.explanation, operation=str(op.pk))
    dispatch.send_command(
        op,
        names.AGENT_CONTAINER_CREATE,
        CreateContainer(
            spec=spec,
            start=container.desired_state == DesiredState.RUNNING,
            pull=_pull_for(container),
        ),
    )
    return container, op


# --- actions -------------------------------------------------------------------------------

ACTIONS = {
    "start": (names.AGENT_CONTAINER_START, DesiredState.RUNNING),
    "stop": (names.AGENT_CONTAINER_STOP, DesiredState.STOPPED),
    "restart": (names.AGENT_CONTAINER_RESTART, DesiredState.RUNNING),
    "remove": (names.AGENT_CONTAINER_REMOVE, DesiredState.REMOVED),
}


@transaction.atomic
def container_action(
    *, user: Any, container: Container, action: str, timeout: int = 10, force: bool = False
) -> Operation:
    if action not in ACTIONS:
        raise CorralError(f"Unknown action {action!r}.", field="action")
    kind, desired = ACTIONS[action]
    locked = (
        Container.objects.select_for_update(of=("self",))
        .select_related("host", "project")
        .defer(*RELATED_HOST_LARGE_FIELDS)
        .get(pk=container.pk)
    )
    if locked.removed_at is not None or locked.desired_state == DesiredState.REMOVED:
        raise InvalidTransition(f"Container {locked.name} was removed; nothing to {action}.")
    if action == "remove" and locked.observed_state == ObservedState.RUNNING and not force:
        raise InvalidTransition(
            f"Container {locked.name} is running; stop it first or remove with force=true."
        )
    Container.objects.filter(pk=locked.pk).update(desired_state=desired)
    op = operation_create(
        kind=kind,
        host=locked.host,
        target_type="container",
        target_id=str(locked.pk),
        project_slug=locked.project.slug,
        requested_by=user,
        payload={"action": action, "timeout": timeout, "force": force},
    )
    container_event(locked, action, f"{action} requested", operation=str(op.pk))
    dispatch.send_command(
        op, kind, ContainerAction(container_id=str(locked.pk), timeout=timeout, force=force)
    )
    return op


def container_query(
    *, user: Any, container: Container, kind: str, payload: Any, wait: float = 10.0
) -> Operation:
    """Ask the agent for logs or stats and wait (bounded) for the answer."""
    if container.host is None:
        raise CorralError(f"Container {container.name} is not placed on a host.")
    dispatch.require_reachable(container.host)
    with transaction.atomic():
        op = operation_create(
            kind=kind,
            host=container.host,
            target_type="container",
            target_id=str(container.pk),
            project_slug=container.project.slug,
            requested_by=user,
            deadline_seconds=max(wait * 3, 30),
        )
        dispatch.send_command(op, kind, payload)
    deadline = time.monotonic() + wait
    delay = 0.005
    while time.monotonic() < deadline:
        op.refresh_from_db(fields=["status", "result", "error", "error_code"])
        if op.status not in OPERATION_ACTIVE:
            return op
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return op


# --- reports from agents -------------------------------------------------------------------


def _observed_fields(status: ContainerStatus, now: datetime) -> dict[str, Any]:
    state = {"stopped": ObservedState.STOPPED}.get(status.state, status.state)
    fields: dict[str, Any] = {
        "observed_state": state,
        "observed_at": now,
        "pid": status.pid,
        "exit_code": status.exit_code,
        "restart_count": status.restart_count,
        "detail": status.detail[:512],
    }
    if status.selinux_label:
        fields["selinux_label"] = status.selinux_label
    if status.ip_address:
        fields["ip_address"] = status.ip_address
    if status.started_at:
        fields["started_at"] = datetime.fromtimestamp(status.started_at, tz=UTC)
    if status.finished_at:
        fields["finished_at"] = datetime.fromtimestamp(status.finished_at, tz=UTC)
    return fields


def container_apply_result(op: Operation) -> None:
    """Fold a finished container operation into the container's observed state (written by id:
    the row is not read first)."""
    if op.target_type != "container" or not op.target_id:
        return
    cid, now = op.target_id, timezone.now()
    row = Container.objects.filter(pk=cid)
    if op.status == "succeeded":
        if op.kind == names.AGENT_CONTAINER_REMOVE:
            if row.update(observed_state=ObservedState.REMOVED, removed_at=now, observed_at=now):
                container_event(cid, "removed", "removed from the host")
            return
        raw = op.result.get("status")
        if isinstance(raw, dict):
            status = ContainerStatus.from_dict(raw)
            if row.update(**_observed_fields(status, now)):
                container_event(cid, status.state, f"{op.kind.rsplit('.', 1)[-1]} succeeded")
    elif op.status == "failed":
        if op.kind == names.AGENT_CONTAINER_CREATE:
            row.update(
                observed_state=ObservedState.FAILED,
                observed_at=now,
                detail=f"{op.error_code}: {op.error}"[:512],
            )
        if row.exists():
            container_event(cid, "error", f"{op.kind}: {op.error}", code=op.error_code)


_LAST_SEEN: dict[str, tuple[Any, ...]] = {}


def containers_apply_heartbeat(
    host: Host, statuses: list[ContainerStatus], *, check_missing: bool = True
) -> int:
    """Update observed state from a heartbeat; writes only what changed since the last beat
    this process saw. Containers the host runs that we do not know are reported, never killed."""
    now = timezone.now()
    changed = 0
    seen_ids = set()
    for status in statuses:
        seen_ids.add(status.id)
        key = (status.state, status.pid, status.exit_code, status.restart_count)
        if _LAST_SEEN.get(status.id) == key:
            continue
        updated = (
            Container.objects.filter(pk=status.id, host=host)
            .exclude(observed_state=ObservedState.REMOVED)
            .update(**_observed_fields(status, now))
        )
        if updated:
            _LAST_SEEN[status.id] = key
            changed += 1
        elif not Container.objects.filter(pk=status.id).exists():
            unknown = set(host.labels.get("corral.unmanaged", "").split(",")) - {""}
            if status.id not in unknown:
                logger.warning(
                    "host %s runs container %s that the control plane does not know; left running",
                    host.pk,
                    status.id,
                )
    if not check_missing:
        return changed
    grace = now - timedelta(seconds=2 * settings.CORRAL["HEARTBEAT_INTERVAL"])
    missing = Container.objects.filter(
        host=host,
        removed_at__isnull=True,
        observed_state__in=(*LIVE_STATES, ObservedState.EXITED, ObservedState.STOPPED),
        observed_at__lt=grace,
    ).exclude(pk__in=seen_ids)
    for container in missing:
        Container.objects.filter(pk=container.pk).update(
            observed_state=ObservedState.MISSING, observed_at=now
        )
        _LAST_SEEN.pop(str(container.pk), None)
        container_event(container, "missing", f"not reported by host {host.name}")
        changed += 1
    return changed


# --- reconciliation ------------------------------------------------------------------------


def containers_reconcile(*, now: datetime | None = None) -> dict[str, int]:
    """Converge observed toward desired state for containers with no operation in flight:
    remove what should be gone, stop what should be stopped, recreate what should run but is
    missing (per restart policy). Unknown containers on hosts are only reported."""
    counts = {"removed": 0, "stopped": 0, "recreated": 0, "reported": 0}
    busy = Operation.objects.filter(status__in=OPERATION_ACTIVE, target_type="container")
    candidates = (
        Container.objects.filter(removed_at__isnull=True, host__status="online")
        .exclude(pk__in=list(busy.values_list("target_id", flat=True)))
        .select_related("host", "project", "image")
        .defer(*RELATED_HOST_LARGE_FIELDS)
    )
    for c in candidates.filter(desired_state=DesiredState.REMOVED):
        _resend(c, "remove", force=True)
        counts["removed"] += 1
    for c in candidates.filter(
        desired_state=DesiredState.STOPPED, observed_state=ObservedState.RUNNING
    ):
        _resend(c, "stop")
        counts["stopped"] += 1
    for c in candidates.filter(
        desired_state=DesiredState.RUNNING, observed_state=ObservedState.MISSING
    ):
        if c.restart_policy == "no":
            container_event(c, "drift", "should run but is missing; restart policy is 'no'")
            counts["reported"] += 1
            continue
        with transaction.atomic():
            op = operation_create(
                kind=names.AGENT_CONTAINER_CREATE,
                host=c.host,
                target_type="container",
                target_id=str(c.pk),
                project_slug=c.project.slug,
                payload={"reconcile": True},
            )
            dispatch.send_command(
                op,
                names.AGENT_CONTAINER_CREATE,
                CreateContainer(spec=container_spec(c), pull=_pull_for(c)),
            )
        counts["recreated"] += 1
    return counts


def _resend(container: Container, action: str, force: bool = False) -> None:
    kind, _ = ACTIONS[action]
    with transaction.atomic():
        op = operation_create(
            kind=kind,
            host=container.host,
            target_type="container",
            target_id=str(container.pk),
            project_slug=container.project.slug,
            payload={"action": action, "reconcile": True},
        )
        dispatch.send_command(
            op, kind, ContainerAction(container_id=str(container.pk), force=force)
        )
