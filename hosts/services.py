"""Host workflows: enrollment, liveness, inventory, operations. Views, API and tasks call these."""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from agent.protocol.messages import InventoryReport, OperationResult
from config.errors import EnrollmentRefused, InvalidTransition
from hosts.choices import (
    HOST_TRANSITIONS,
    OPERATION_ACTIVE,
    OPERATION_TRANSITIONS,
    HostStatus,
    OperationStatus,
)
from hosts.models import (
    ControlPlaneState,
    EnrollmentToken,
    Host,
    HostStatusChange,
    InventoryChange,
    Operation,
    OperationEvent,
)

logger = logging.getLogger(__name__)
TOKEN_PREFIX = "crl_"  # noqa: S105 - a prefix that marks tokens, not a secret


def _cfg(name: str) -> Any:
    return settings.CORRAL[name]


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --- enrollment ----------------------------------------------------------------------------


def host_create(*, name: str, address: str = "", labels: dict[str, str] | None = None) -> Host:
    host = Host(name=name, address=address, labels=labels or {})
    host.full_clean()
    host.save()
    return host


def enrollment_token_create(
    *,
    created_by: Any = None,
    project_slug: str = "",
    host: Host | None = None,
    ttl_seconds: float | None = None,
    note: str = "",
) -> tuple[EnrollmentToken, str]:
    """Create a single-use token. Returns the row and the secret, which is shown once."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    ttl = ttl_seconds if ttl_seconds is not None else _cfg("ENROLLMENT_TOKEN_TTL")
    token = EnrollmentToken.objects.create(
        token_hash=hash_token(secret),
        prefix=secret[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + 6],
        project_slug=project_slug,
        host=host,
        note=note,
        created_by=created_by if getattr(created_by, "pk", None) else None,
        expires_at=timezone.now() + timedelta(seconds=ttl),
    )
    return token, secret


@transaction.atomic
def host_enroll(
    *,
    token: str,
    name: str,
    public_key: str,
    address: str = "",
    agent_version: str = "",
    host_id: str | None = None,
) -> Host:
    """Consume a token and bind a host to the agent's public key. Re-enrolling an existing host
    (by the token's host or the agent's own host id) rotates its key; the host keeps its id."""
    from agent.protocol.envelope import public_key_from_text

    public_key_from_text(public_key)  # ProtocolError (400, names the field) when malformed
    row = EnrollmentToken.objects.select_for_update().filter(token_hash=hash_token(token)).first()
    now = timezone.now()
    if row is None:
        raise EnrollmentRefused("Unknown enrollment token.")
    if row.used_at is not None:
        raise EnrollmentRefused(
            f"This enrollment token was already used at {row.used_at:%Y-%m-%d %H:%M:%S} UTC; "
            "create a new one."
        )
    if row.expires_at <= now:
        raise EnrollmentRefused(
            f"This enrollment token expired at {row.expires_at:%Y-%m-%d %H:%M:%S} UTC; "
            "create a new one."
        )
    host = row.host
    if host is None and host_id:
        host = Host.objects.filter(pk=host_id).first()
    if host is None:
        existing = Host.objects.filter(name=name).first()
        if existing is not None:
            raise EnrollmentRefused(
                f"A host named {name!r} already exists; re-enroll it with its host id "
                "or a token created for it."
            )
        host = Host(name=name)
        host.full_clean(exclude=["id"])
    host.address = address or host.address
    host.public_key = public_key
    host.agent_version = agent_version
    host.enrolled_at = now
    host.last_seq = 0
    if row.project_slug:
        host.project_slug = row.project_slug
    host.save()
    row.used_at = now
    row.used_by = host
    row.save(update_fields=["used_at", "used_by"])
    logger.info("host %s (%s) enrolled with token %s", host.name, host.pk, row.prefix)
    return host


# --- liveness ------------------------------------------------------------------------------


def host_set_status(host: Host, to: str, *, reason: str = "") -> bool:
    """Compare-and-set a host's liveness status; writes a history row when it changed."""
    current = host.status
    if current == to:
        return False
    if to not in HOST_TRANSITIONS.get(current, set()):
        raise InvalidTransition(f"Host {host.name} cannot go from {current} to {to}.")
    now = timezone.now()
    changed = Host.objects.filter(pk=host.pk, status=current).update(
        status=to, status_changed_at=now
    )
    if changed:
        HostStatusChange.objects.create(host=host, from_status=current, to_status=to, reason=reason)
        host.status, host.status_changed_at = to, now
        logger.info("host %s (%s): %s -> %s (%s)", host.name, host.pk, current, to, reason)
    return bool(changed)


def host_heartbeat_record(
    host: Host,
    *,
    seq: int,
    agent_version: str,
    load1: float | None,
    memory_available: int | None,
    memory_total: int | None,
    now: datetime | None = None,
) -> bool:
    """Record a heartbeat with one UPDATE (no row per beat). ``seq`` must grow: a replayed or
    reordered beat changes nothing. Returns False when the beat was stale."""
    now = now or timezone.now()
    updated = Host.objects.filter(pk=host.pk, last_seq__lt=seq).update(
        last_seq=seq,
        last_heartbeat_at=now,
        agent_version=agent_version,
        load1=load1,
        memory_available=memory_available,
        **({"memory_total": memory_total} if memory_total else {}),
    )
    if not updated:
        return False
    host.last_seq, host.last_heartbeat_at = seq, now
    if host.status != HostStatus.ONLINE:
        host_set_status(host, HostStatus.ONLINE, reason="heartbeat received")
    return True


def control_plane_resumed_at(now: datetime) -> datetime | None:
    """Note that reports are being ingested; if nothing was ingested for longer than the
    unknown threshold, the control plane (not the fleet) was away: restart liveness clocks."""
    gap = timedelta(seconds=_cfg("UNKNOWN_AFTER"))
    state, _ = ControlPlaneState.objects.get_or_create(pk=1)
    if state.last_ingest_at is None or now - state.last_ingest_at > gap:
        ControlPlaneState.objects.filter(pk=1).update(last_ingest_at=now, resumed_at=now)
        return now
    if now - state.last_ingest_at > timedelta(seconds=1):
        ControlPlaneState.objects.filter(pk=1).update(last_ingest_at=now)
    return state.resumed_at


def hosts_liveness_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """online -> unknown -> offline by time since the last heartbeat. Safe to run from several
    processes at once (compare-and-set), so it does not depend on one beat process."""
    now = now or timezone.now()
    state, _ = ControlPlaneState.objects.get_or_create(pk=1)
    grace_from = state.resumed_at
    startup_grace = timedelta(seconds=_cfg("STARTUP_GRACE"))
    if grace_from is not None and now - grace_from < startup_grace:
        return {"unknown": 0, "offline": 0}
    ControlPlaneState.objects.filter(pk=1).update(last_sweep_at=now)

    def cutoff(seconds: float) -> datetime:
        cut = now - timedelta(seconds=seconds)
        # A host cannot have been silent for longer than we have been listening.
        return min(cut, grace_from) if grace_from and grace_from > cut else cut

    counts = {"unknown": 0, "offline": 0}
    offline_cut = cutoff(_cfg("OFFLINE_AFTER"))
    unknown_cut = cutoff(_cfg("UNKNOWN_AFTER"))
    stale_offline = Host.objects.filter(status__in=[HostStatus.ONLINE, HostStatus.UNKNOWN]).filter(
        Q(last_heartbeat_at__lt=offline_cut) | Q(last_heartbeat_at__isnull=True)
    )
    for host in stale_offline:
        if host_set_status(host, HostStatus.OFFLINE, reason="no heartbeat"):
            counts["offline"] += 1
    for host in Host.objects.filter(status=HostStatus.ONLINE, last_heartbeat_at__lt=unknown_cut):
        if host_set_status(host, HostStatus.UNKNOWN, reason="missed heartbeats"):
            counts["unknown"] += 1
    return counts


# --- inventory -----------------------------------------------------------------------------


def _indexed_columns(inv: dict[str, Any]) -> dict[str, Any]:
    """The few inventory facts people filter by, copied into indexed columns."""

    def section(name: str) -> dict[str, Any]:
        value = inv.get(name)
        return value if isinstance(value, dict) else {}

    cpu, mem, kernel, osr = section("cpu"), section("memory"), section("kernel"), section("os")
    virt, cgroups, selinux = section("virtualization"), section("cgroups"), section("selinux")
    version = cgroups.get("version")
    return {
        "cpus": cpu.get("online") or cpu.get("threads"),
        "memory_total": mem.get("total_bytes"),
        "kernel": str(kernel.get("release", ""))[:128],
        "os_name": str(osr.get("pretty_name") or osr.get("id") or "")[:128],
        "virtualization": str(virt.get("kind") or "")[:32],
        "cgroup_version": f"v{version}" if version in (1, 2) else "",
        "selinux_mode": str(selinux.get("mode", ""))[:16],
    }


def _diff_sections(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for key in sorted(set(old) | set(new)):
        if key not in old:
            changes[key] = "added"
        elif key not in new:
            changes[key] = "removed"
        elif old[key] != new[key]:
            changes[key] = "changed"
    return changes


@transaction.atomic
def host_inventory_record(host: Host, report: InventoryReport) -> bool:
    """Store the latest inventory snapshot, its indexed columns and what changed."""
    locked = Host.objects.select_for_update().get(pk=host.pk)
    if report.inventory_hash and report.inventory_hash == locked.inventory_hash:
        return False
    changes = _diff_sections(locked.inventory or {}, report.inventory)
    for field, value in _indexed_columns(report.inventory).items():
        if value not in (None, ""):
            setattr(locked, field, value)
    locked.inventory = report.inventory
    locked.inventory_hash = report.inventory_hash
    locked.inventory_at = timezone.now()
    locked.save()
    if changes:
        InventoryChange.objects.create(host=locked, changes=changes)
    return True


# --- operations ----------------------------------------------------------------------------


def operation_create(
    *,
    kind: str,
    host: Host | None,
    target_type: str = "",
    target_id: str = "",
    project_slug: str = "",
    requested_by: Any = None,
    payload: dict[str, Any] | None = None,
    deadline_seconds: float | None = None,
) -> Operation:
    seconds = deadline_seconds if deadline_seconds is not None else _cfg("OPERATION_DEADLINE")
    return Operation.objects.create(
        kind=kind,
        host=host,
        target_type=target_type,
        target_id=target_id,
        project_slug=project_slug,
        requested_by=requested_by if getattr(requested_by, "pk", None) else None,
        payload=payload or {},
        deadline=timezone.now() + timedelta(seconds=seconds),
    )


def operation_transition(op_id: Any, to: str, **fields: Any) -> bool:
    """Compare-and-set an operation's status along OPERATION_TRANSITIONS."""
    return operation_transition_fields(op_id, to, fields) is not None


def operation_transition_fields(
    op_id: Any, to: str, fields: dict[str, Any]
) -> dict[str, Any] | None:
    """As operation_transition; returns every field written (with the status and the time
    stamp of the new state), or None when the operation was not in a state to move to ``to``."""
    allowed_from = [s for s, targets in OPERATION_TRANSITIONS.items() if to in targets]
    fields = {**fields, "status": to}
    now = timezone.now()
    if to == OperationStatus.SENT:
        fields.setdefault("sent_at", now)
    elif to == OperationStatus.RUNNING:
        fields.setdefault("started_at", now)
    elif to not in OPERATION_ACTIVE:
        fields.setdefault("finished_at", now)
    updated = Operation.objects.filter(pk=op_id, status__in=allowed_from).update(**fields)
    return fields if updated else None


def operation_fail(op: Operation, *, code: str, error: str, step: str = "") -> bool:
    done = operation_transition(
        op.pk, OperationStatus.FAILED, error_code=code, error=error, step=step
    )
    if done:
        op.status, op.error_code, op.error = OperationStatus.FAILED, code, error
        logger.warning("operation %s (%s) failed: %s: %s", op.pk, op.kind, code, error)
    return done


def operation_event(
    op: Operation | Any, message: str, *, level: str = "info", data: dict[str, Any] | None = None
) -> OperationEvent:
    op_id = op.pk if isinstance(op, Operation) else op
    return OperationEvent.objects.create(
        operation_id=op_id, message=message, level=level, data=data or {}
    )


def operation_result_apply(host: Host, result: OperationResult) -> Operation | None:
    """Apply an agent's result. The operation must be this host's: a host can only ever speak
    for itself, so a result for another host's operation is ignored and logged."""
    op = Operation.objects.filter(pk=result.operation_id).first()
    if op is None:
        logger.warning("host %s reported on unknown operation %s", host.pk, result.operation_id)
        return None
    if op.host_id != host.pk:
        logger.warning(
            "host %s reported on operation %s of host %s: rejected",
            host.pk,
            op.pk,
            op.host_id,
        )
        return None
    if result.status == "running":
        to, fields = OperationStatus.RUNNING, {"step": result.step, **_progress(result.result)}
    elif result.status == "succeeded":
        # Progress reports travel as results of their own and a worker may apply the last one
        # after this (it is then refused: running never follows succeeded): a succeeded
        # operation with a known total has done all of it.
        to, fields = (
            OperationStatus.SUCCEEDED,
            {
                "result": result.result,
                "step": result.step,
                "progress_done": Coalesce(F("progress_total"), F("progress_done")),
                **_progress(result.result),
            },
        )
    else:
        to, fields = (
            OperationStatus.FAILED,
            {
                "error_code": result.error_code,
                "error": result.error,
                "step": result.step,
                "result": result.result,
            },
        )
    written = operation_transition_fields(op.pk, to, fields)
    if written is not None:
        for name, value in written.items():  # what the compare-and-set wrote: no read back
            if isinstance(value, Coalesce):  # progress_done: the total, when one is known
                value = op.progress_total if op.progress_total is not None else op.progress_done
            setattr(op, name, value)
    else:
        if to == OperationStatus.FAILED:
            operation_event(
                op, f"agent refused: {result.error_code}: {result.error}", level="warning"
            )
        op.refresh_from_db()
    return op


def _progress(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    if isinstance(result.get("done"), int):
        out["progress_done"] = result["done"]
    if isinstance(result.get("total"), int):
        out["progress_total"] = result["total"]
    return out


def operations_expire(*, now: datetime | None = None) -> int:
    """Sent or running operations past their deadline become ``lost``; pending ones (never
    handed to the broker) ``timed_out``."""
    now = now or timezone.now()
    count = 0
    for op in Operation.objects.filter(status__in=OPERATION_ACTIVE, deadline__lt=now):
        to = (
            OperationStatus.TIMED_OUT
            if op.status == OperationStatus.PENDING
            else OperationStatus.LOST
        )
        message = (
            "the command was never handed to the broker before its deadline"
            if to == OperationStatus.TIMED_OUT
            else "no answer from the host before the deadline"
        )
        if operation_transition(op.pk, to, error_code=to, error=message):
            count += 1
    return count


@transaction.atomic
def host_send(
    *,
    host: Host,
    kind: str,
    payload: Any,
    requested_by: Any = None,
    deadline_seconds: float | None = None,
) -> Operation:
    """Record an operation for ``host`` and send the command after commit (ping, inventory,
    certification re-run...). An offline host fails the operation at once with the reason."""
    from hosts import dispatch

    op = operation_create(
        kind=kind,
        host=host,
        target_type="host",
        target_id=str(host.pk),
        project_slug=host.project_slug,
        requested_by=requested_by,
        deadline_seconds=deadline_seconds,
    )
    dispatch.send_command(op, kind, payload)
    return op
