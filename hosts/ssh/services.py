"""SSH bootstrap workflows: add a target, scan and confirm its host key, install, uninstall.

The API and the Celery task call these. An install or uninstall is an Operation of kind
``controlplane.ssh.install`` / ``controlplane.ssh.uninstall`` run by the control plane's worker;
every step is an OperationEvent with its redacted output.
"""

from __future__ import annotations

import logging
import shlex
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from config.errors import CorralError, OperationConflict
from hosts import secrets
from hosts.choices import OPERATION_ACTIVE, OperationStatus
from hosts.models import AuditEntry, Host, Operation
from hosts.models_ssh import DEFAULT_PREFIX, SSHAuth, SSHTarget, SSHTargetState
from hosts.services import (
    enrollment_token_create,
    operation_create,
    operation_event,
    operation_fail,
    operation_transition,
)
from hosts.ssh import bundle as bundle_mod
from hosts.ssh import client, validation
from hosts.ssh.errors import SSHError
from hosts.ssh.installer import HostFacts, Installer

logger = logging.getLogger(__name__)
KIND_INSTALL = "controlplane.ssh.install"
KIND_UNINSTALL = "controlplane.ssh.uninstall"
TASK_NAME = "controlplane.ssh.run"
DEFAULT_HEARTBEAT_TIMEOUT = 120.0
OPERATION_DEADLINE = 1800.0


class SSHRefused(CorralError):
    """An SSH action refused before or while connecting (maps to 400 with its code)."""

    http_status = 400

    def __init__(self, error: SSHError) -> None:
        super().__init__(error.message, step=error.step, **_jsonable(error.extra))
        self.code = error.code


def _jsonable(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if isinstance(v, (str, int, list))}


# --- targets -------------------------------------------------------------------------------


def ssh_target_create(
    *,
    name: str,
    address: str,
    port: int = 22,
    user: str = "root",
    private_key: str = "",
    passphrase: str = "",
    password: str = "",
    allow_password: bool = False,
    host_key_fingerprint: str = "",
    host_key_type: str = "",
    sudo: bool = False,
    install_prefix: str = DEFAULT_PREFIX,
    created_by: Any = None,
) -> SSHTarget:
    """Validate and store a target; secrets are encrypted before they touch the database."""
    if private_key:
        # Fail now, naming the field, rather than at install time.
        try:
            client._load_private_key(private_key, passphrase)
        except SSHError as exc:
            raise SSHRefused(exc) from None
    target = SSHTarget(
        name=name,
        address=address,
        port=port,
        user=user,
        auth=SSHAuth.PASSWORD if password and not private_key else SSHAuth.KEY,
        allow_password=allow_password,
        private_key_encrypted=secrets.encrypt(private_key) if private_key else "",
        passphrase_encrypted=secrets.encrypt(passphrase) if passphrase else "",
        password_encrypted=secrets.encrypt(password) if password else "",
        host_key_fingerprint=host_key_fingerprint,
        host_key_type=host_key_type,
        sudo=sudo,
        install_prefix=install_prefix,
        created_by=created_by if getattr(created_by, "pk", None) else None,
    )
    target.full_clean()
    target.save()
    logger.info("ssh target %s (%s) added", target.pk, target)
    return target


def _connection_target(target: SSHTarget, *, timeout: float = 10.0) -> client.Target:
    """Validate every field again (the row may predate a rule) and decrypt the credential."""
    validation.validate_address(target.address)
    validation.validate_port(target.port)
    validation.validate_user(target.user)
    validation.validate_prefix(target.install_prefix)
    validation.validate_host_name(target.name)
    if not target.host_key_pinned:
        raise SSHError(
            "host_key_not_pinned",
            f"{target}: no confirmed host key; scan it and confirm the fingerprint first",
            step="validate",
        )
    validation.validate_fingerprint(target.host_key_fingerprint)
    validation.validate_key_type(target.host_key_type)
    if target.auth == SSHAuth.PASSWORD and not target.allow_password:
        raise SSHError("invalid_input", "auth: password authentication is not allowed",
                       step="validate", field="auth")  # fmt: skip
    try:
        return client.Target(
            address=target.address,
            port=target.port,
            user=target.user,
            host_key_fingerprint=target.host_key_fingerprint,
            host_key_type=target.host_key_type,
            private_key=secrets.decrypt(target.private_key_encrypted)
            if target.private_key_encrypted
            else "",
            passphrase=secrets.decrypt(target.passphrase_encrypted)
            if target.passphrase_encrypted
            else "",
            password=secrets.decrypt(target.password_encrypted)
            if target.auth == SSHAuth.PASSWORD
            else "",
            connect_timeout=timeout,
        )
    except secrets.SecretError as exc:
        raise SSHError("secret_unavailable", str(exc), step="validate") from None


# --- host key ------------------------------------------------------------------------------


def ssh_host_key_scan(*, target: SSHTarget, timeout: float = 10.0) -> dict[str, str]:
    """Connect without authenticating and return the host key for the operator to confirm."""
    try:
        validation.validate_address(target.address)
        validation.validate_port(target.port)
        fp, kind = client.scan_host_key(
            target.address, target.port, key_type_wanted=target.host_key_type or None,
            timeout=timeout,
        )  # fmt: skip
    except SSHError as exc:
        raise SSHRefused(exc) from None
    return {"fingerprint": fp, "type": kind, "address": target.address, "port": str(target.port)}


@transaction.atomic
def ssh_host_key_confirm(
    *, target: SSHTarget, fingerprint: str, key_type: str, user: Any, remote_addr: str = ""
) -> SSHTarget:
    """Trust on first use, only with the operator's confirmation: the key is scanned again
    and pinned only if it is the one the operator confirmed. Recorded in the audit log."""
    try:
        validation.validate_fingerprint(fingerprint)
        validation.validate_key_type(key_type)
    except SSHError as exc:
        raise SSHRefused(exc) from None
    seen = ssh_host_key_scan(target=target)
    if seen["fingerprint"] != fingerprint or seen["type"] != key_type:
        raise SSHRefused(
            SSHError(
                "host_key_mismatch",
                f"host key mismatch: expected {fingerprint} ({key_type}), "
                f"got {seen['fingerprint']} ({seen['type']})",
                step="confirm host key",
            )
        )
    previous = (target.host_key_fingerprint, target.host_key_type)
    target.host_key_fingerprint, target.host_key_type = fingerprint, key_type
    target.host_key_confirmed_by = user if getattr(user, "pk", None) else None
    target.host_key_confirmed_at = timezone.now()
    target.save()
    AuditEntry.objects.create(
        user=target.host_key_confirmed_by,
        username=user.get_username() if getattr(user, "pk", None) else "",
        action="ssh-host-key-confirm",
        object_type="ssh-host",
        object_id=str(target.pk),
        remote_addr=remote_addr or None,
        outcome="ok",
        detail={
            "address": target.address,
            "port": target.port,
            "fingerprint": fingerprint,
            "type": key_type,
            "previous_fingerprint": previous[0],
            "previous_type": previous[1],
        },
    )
    logger.info("ssh target %s: host key %s (%s) confirmed", target.pk, fingerprint, key_type)
    return target


# --- operations ----------------------------------------------------------------------------


@transaction.atomic
def ssh_operation_start(
    *,
    target: SSHTarget,
    action: str,
    requested_by: Any = None,
    heartbeat_timeout: float | None = None,
) -> Operation:
    """Record an install/uninstall Operation and hand it to the control-plane worker after
    commit. Refused (409) while another operation on this target is active."""
    if action not in ("install", "uninstall"):
        raise SSHRefused(SSHError("invalid_input", f"action: unknown action {action!r}"))
    locked = SSHTarget.objects.select_for_update().get(pk=target.pk)
    busy = Operation.objects.filter(
        target_type="ssh-host", target_id=str(locked.pk), status__in=OPERATION_ACTIVE
    ).first()
    if busy is not None:
        raise OperationConflict(f"operation {busy.pk} ({busy.kind}) is still {busy.status}")
    op = operation_create(
        kind=KIND_INSTALL if action == "install" else KIND_UNINSTALL,
        host=locked.host,
        target_type="ssh-host",
        target_id=str(locked.pk),
        requested_by=requested_by,
        payload={
            "action": action,
            "heartbeat_timeout": float(heartbeat_timeout or DEFAULT_HEARTBEAT_TIMEOUT),
        },
        deadline_seconds=OPERATION_DEADLINE,
    )
    op_id = str(op.pk)
    transaction.on_commit(lambda: _dispatch(op_id))
    return op


def _dispatch(op_id: str) -> None:
    """Hand the operation to the control-plane worker (after commit). A broker outage leaves
    the operation pending; the deadline sweep marks it timed out."""
    from config.celery import app

    try:
        with app.connection_for_write() as conn:
            result = app.send_task(
                TASK_NAME,
                kwargs={"message": {"schema_version": 1, "operation_id": op_id}},
                queue="controlplane",
                task_id=op_id,
                connection=conn,
            )
    except Exception as exc:
        logger.error("operation %s: could not hand %s to the broker: %s", op_id, TASK_NAME, exc)
        return
    operation_transition(op_id, OperationStatus.SENT, celery_task_id=result.id or "")


def ssh_operation_run(operation_id: str) -> Operation:
    """The worker's side: run the operation to a final status. Never raises SSHError."""
    op = Operation.objects.get(pk=operation_id)
    if op.status not in OPERATION_ACTIVE:
        logger.info("operation %s is already %s; not running it again", op.pk, op.status)
        return op
    target = SSHTarget.objects.get(pk=op.target_id)
    operation_transition(op.pk, OperationStatus.RUNNING, step="validate")

    def record(message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        operation_event(op, message, level=level, data=data)
        Operation.objects.filter(pk=op.pk).update(step=message[:64])

    action = op.payload.get("action", "install")
    busy_state = SSHTargetState.INSTALLING if action == "install" else SSHTargetState.UNINSTALLING
    SSHTarget.objects.filter(pk=target.pk).update(state=busy_state)
    try:
        conn = _connection_target(target)
        record(f"connecting to {target}")
        with client.connect(conn) as session:
            record("connected; host key matches the pinned "
                   f"{target.host_key_fingerprint} ({target.host_key_type})")  # fmt: skip
            installer = Installer(
                session,
                prefix=target.install_prefix,
                sudo=target.sudo,
                record=record,
                secrets=[conn.password, conn.passphrase],
                min_free_mb=int(op.payload.get("min_free_mb", 300)),
            )
            if action == "install":
                result = _install(op, target, installer)
            else:
                result = _uninstall(op, target, installer)
    except SSHError as exc:
        record(f"{exc.code}: {exc.message}", level="error")
        operation_fail(op, code=exc.code, error=exc.message, step=exc.step)
        SSHTarget.objects.filter(pk=target.pk).update(state=SSHTargetState.FAILED)
    except Exception as exc:
        logger.exception("operation %s: unexpected error", op.pk)
        record(f"internal error: {type(exc).__name__}", level="error")
        operation_fail(op, code="internal_error", error=f"{type(exc).__name__}: {exc}")
        SSHTarget.objects.filter(pk=target.pk).update(state=SSHTargetState.FAILED)
    else:
        operation_transition(op.pk, OperationStatus.SUCCEEDED, result=result, step="done")
    op.refresh_from_db()
    return op


def _install(op: Operation, target: SSHTarget, installer: Installer) -> dict[str, Any]:
    facts = installer.probe()
    record = installer.record
    built = bundle_mod.build(python=facts.python_full, arch=facts.arch, glibc=facts.glibc)
    record("bundle ready", data={"version": built.version, "sha256": built.sha256})
    previous = installer.installed_version()
    host, created = _host_for(target)
    Operation.objects.filter(pk=op.pk).update(host=host)
    _token, secret = enrollment_token_create(
        created_by=op.requested_by, host=host, ttl_seconds=900, note=f"ssh install {op.pk}"
    )
    installer.secrets.append(secret)
    started = timezone.now()
    swapped = had_previous = False
    try:
        installer.stage(str(built.path), built.sha256)
        installer.stop()
        had_previous = installer.swap()
        swapped = True
        installer.enroll(
            server=str(settings.CORRAL["PUBLIC_URL"]), token=secret, name=target.name,
            address=target.address,
        )  # fmt: skip
        installer.start(facts)
        _wait_heartbeat(host, since=started, installer=installer,
                        timeout=float(op.payload.get("heartbeat_timeout", 120)))  # fmt: skip
        installer.commit()
    except SSHError:
        _rollback(installer, swapped=swapped, had_previous=had_previous, facts=facts)
        if created:
            Host.objects.filter(pk=host.pk).delete()
        raise
    SSHTarget.objects.filter(pk=target.pk).update(
        host=host,
        state=SSHTargetState.INSTALLED,
        installed_version=built.version,
        installed_at=timezone.now(),
    )
    record(f"agent {built.version} installed and online"
           + (f" (upgraded from {previous})" if previous else ""))  # fmt: skip
    return {"host_id": str(host.pk), "version": built.version, "previous_version": previous,
            "upgraded": bool(previous)}  # fmt: skip


def _rollback(installer: Installer, *, swapped: bool, had_previous: bool,
              facts: HostFacts) -> None:  # fmt: skip
    try:
        installer.rollback(swapped=swapped, had_previous=had_previous, facts=facts)
        installer.record("rolled back: nothing of this attempt is left on the host")
    except SSHError as exc:
        logger.warning("rollback failed: %s", exc)


def _host_for(target: SSHTarget) -> tuple[Host, bool]:
    """The host this target enrolls as: its own, one of the same name, or a new pending one."""
    if target.host_id:
        host = Host.objects.filter(pk=target.host_id).first()
        if host is not None:
            return host, False
    existing = Host.objects.filter(name=target.name).first()
    if existing is not None:
        return existing, False
    from hosts.services import host_create

    return host_create(name=target.name, address=target.address), True


def _wait_heartbeat(host: Host, *, since: Any, installer: Installer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    installer.record(f"waiting up to {timeout:g} s for the first heartbeat")
    while time.monotonic() < deadline:
        if Host.objects.filter(pk=host.pk, last_heartbeat_at__gte=since).exists():
            installer.record("first heartbeat received: host is online")
            return
        time.sleep(0.5)
    log = installer.sh(
        f"tail -n 30 {shlex.quote(installer.prefix + '/log/agent.log')} 2>/dev/null || true",
        step="agent log (last lines)",
        check=False,
    )
    tail = installer.redact(log.stdout.strip().splitlines()[-1] if log.stdout.strip() else "")
    raise SSHError(
        "heartbeat_timeout",
        f"the agent started but sent no heartbeat within {timeout:g} s"
        + (f"; its log ends with: {tail}" if tail else ""),
        step="wait for heartbeat",
    )


def _uninstall(op: Operation, target: SSHTarget, installer: Installer) -> dict[str, Any]:
    installer.probe(uninstall=True)
    remaining = installer.uninstall()
    if remaining:
        installer.record(
            f"{len(remaining)} container(s) remain on the host (their shims keep running): "
            + ", ".join(remaining[:20]),
            level="warning",
            data={"containers": remaining},
        )
    SSHTarget.objects.filter(pk=target.pk).update(
        state=SSHTargetState.UNINSTALLED, installed_version="", installed_at=None
    )
    installer.record(f"agent removed from {target.install_prefix}")
    return {"remaining_containers": remaining}
