"""Install operations that fail against a real sshd: each ends ``failed`` with its code and a
sentence, records its steps, and leaves nothing on the host (no prefix, no staging)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hosts.models import Operation
from hosts.models_ssh import SSHTarget
from hosts.ssh import services
from tests.hosts.ssh.sshd_support import SSHHost, make_key, temporary_user

pytestmark = [pytest.mark.privileged, pytest.mark.django_db]


def add_target(host: SSHHost, **changes: Any) -> SSHTarget:
    values: dict[str, Any] = {
        "name": f"node-{host.netns}",
        "address": host.address,
        "port": host.port,
        "user": "root",
        "private_key": host.client_key.private_text,
        "host_key_fingerprint": host.host_key.fingerprint,
        "host_key_type": host.host_key.key_type,
        "install_prefix": str(host.work / "opt" / "corral-agent"),
    }
    values.update(changes)
    return services.ssh_target_create(**values)


def run_install(target: SSHTarget, capture: Any, **payload: Any) -> Operation:
    with capture(execute=False):  # the worker's task is called directly below
        op = services.ssh_operation_start(target=target, action="install")
    if payload:
        Operation.objects.filter(pk=op.pk).update(payload={**op.payload, **payload})
    return services.ssh_operation_run(str(op.pk))


def assert_nothing_left(target: SSHTarget) -> None:
    prefix = Path(target.install_prefix)
    leftovers = [p for p in (prefix, Path(f"{prefix}.new"), Path(f"{prefix}.old")) if p.exists()]
    assert leftovers == []
    # Upload directories made during this test (another run may own older ones).
    since = target.created_at.timestamp() - 1
    uploads = [p for p in Path("/tmp").glob("corral-bundle.*") if p.stat().st_mtime >= since]
    assert uploads == []


def test_non_root_user_without_sudo_gets_one_prerequisite_error(
    sshd: SSHHost, django_capture_on_commit_callbacks: Any
) -> None:
    key = make_key(sshd.work, "user_key")
    with temporary_user(sshd, key) as user:
        target = add_target(sshd, user=user, private_key=key.private_text)
        op = run_install(target, django_capture_on_commit_callbacks)
    assert op.status == "failed" and op.error_code == "prerequisite_missing"
    assert op.error.startswith("prerequisites missing: root or passwordless sudo")
    assert f"logged in as {user!r}" in op.error
    assert op.step == "prerequisites"
    target.refresh_from_db()
    assert target.state == "failed"
    assert_nothing_left(target)


def test_sudo_requested_but_not_installed_is_named(
    sshd: SSHHost, django_capture_on_commit_callbacks: Any
) -> None:
    key = make_key(sshd.work, "user_key")
    with temporary_user(sshd, key) as user:
        target = add_target(sshd, user=user, private_key=key.private_text, sudo=True)
        op = run_install(target, django_capture_on_commit_callbacks)
    assert op.error_code == "prerequisite_missing"
    assert "passwordless sudo for" in op.error
    assert "sudo is not installed" in op.error or "sudo asks for a password" in op.error


def test_changed_host_key_fails_the_operation_before_authentication(
    sshd: SSHHost, django_capture_on_commit_callbacks: Any
) -> None:
    target = add_target(sshd)
    pinned = sshd.host_key.fingerprint
    sshd.start_sshd(host_key=make_key(sshd.work, "new_host_key"))
    op = run_install(target, django_capture_on_commit_callbacks)
    assert op.error_code == "host_key_mismatch"
    assert f"expected {pinned} (ssh-ed25519), got {sshd.host_key.fingerprint}" in op.error
    assert "Accepted publickey" not in sshd.sshd_log()
    assert_nothing_left(target)


def test_wrong_key_fails_with_authentication_failed(
    sshd: SSHHost, django_capture_on_commit_callbacks: Any
) -> None:
    target = add_target(sshd, private_key=make_key(sshd.work, "stranger").private_text)
    op = run_install(target, django_capture_on_commit_callbacks)
    assert (op.error_code, op.step) == ("authentication_failed", "connect")
    assert "authentication failed for user 'root'" in op.error


def test_closed_port_fails_with_connection_refused(
    sshd: SSHHost, django_capture_on_commit_callbacks: Any
) -> None:
    target = add_target(sshd, port=2999)
    op = run_install(target, django_capture_on_commit_callbacks)
    assert op.error_code == "connection_refused"
    assert "connection refused" in op.error


@contextlib.contextmanager
def counting_listener(address: str) -> Iterator[tuple[int, list[object]]]:
    """A TCP listener that records every connection it gets."""
    sock = socket.socket()
    sock.bind((address, 0))
    sock.listen(8)
    sock.settimeout(0.2)
    seen: list[object] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, peer = sock.accept()
            except (TimeoutError, OSError):
                continue
            seen.append(peer)
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], seen
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user", "root; rm -rf /"),
        ("install_prefix", "/opt/$(touch /tmp/crl-pwned)"),
        ("install_prefix", "/opt/../etc"),
        ("address", "127.0.0.1; reboot"),
    ],
)
def test_malicious_stored_value_is_refused_before_any_connection(
    sshd: SSHHost, django_capture_on_commit_callbacks: Any, field: str, value: str
) -> None:
    with counting_listener(sshd.host_side) as (port, seen):
        target = add_target(sshd, address=sshd.host_side, port=port)
        # A row written past the model's validation (an old row, a raw SQL edit).
        SSHTarget.objects.filter(pk=target.pk).update(**{field: value})
        target.refresh_from_db()
        op = run_install(target, django_capture_on_commit_callbacks)
        assert seen == []
    assert (op.error_code, op.step) == ("invalid_input", "validate")
    assert op.error.startswith(f"{field}: ")
    assert not Path("/tmp/crl-pwned").exists()


@pytest.mark.slow
def test_full_disk_fails_with_disk_full_and_removes_staging(
    sshd: SSHHost, django_capture_on_commit_callbacks: Any
) -> None:
    small = sshd.work / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "crlssh-small", str(small)],
                   check=True)  # fmt: skip
    try:
        target = add_target(sshd, install_prefix=str(small / "corral-agent"))
        op = run_install(target, django_capture_on_commit_callbacks, min_free_mb=1)
        assert op.error_code == "disk_full", (op.error_code, op.error)
        assert "no space left on the host" in op.error
        assert_nothing_left(target)
        assert sorted(p.name for p in small.iterdir()) == []
        messages = [e.message for e in op.events.all()]
        assert "rolled back: nothing of this attempt is left on the host" in messages
    finally:
        subprocess.run(["umount", str(small)], check=False)


@pytest.mark.slow
def test_enrollment_failure_after_the_swap_removes_the_new_install_and_the_host(
    sshd: SSHHost, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    """The bundle is staged, the venv built and swapped in; then the control plane cannot be
    reached from the host. The rollback removes everything, including the pending Host."""
    from hosts.models import Host

    closed = socket.socket()
    closed.bind((sshd.host_side, 0))  # bound, never listening: connections are refused
    try:
        settings.CORRAL = {
            **settings.CORRAL, "PUBLIC_URL": f"http://{sshd.host_side}:{closed.getsockname()[1]}"
        }  # fmt: skip
        target = add_target(sshd)
        op = run_install(target, django_capture_on_commit_callbacks)
    finally:
        closed.close()
    assert (op.error_code, op.step) == ("enrollment_failed", "enroll"), op.error
    assert "cannot reach the control plane" in op.error
    messages = [e.message for e in op.events.all()]
    assert messages.index("swap in new version") < messages.index("enroll")
    assert "rollback: remove new install" in messages
    assert_nothing_left(target)
    assert not Host.objects.filter(name=target.name).exists()
    assert "crl_" not in " ".join(str(e.data) + e.message for e in op.events.all())


@pytest.mark.slow
def test_passwordless_sudo_user_installs_and_rolls_back_as_root(
    sshd: SSHHost, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    """A non-root login with sudo=true: prerequisites pass, staging and the swap run through
    `sudo -n`, and the rollback after a failed enrollment removes the root-owned files."""
    if shutil.which("sudo") is None:
        pytest.skip("sudo is not installed (tests/system-packages.txt lists it)")
    key = make_key(sshd.work, "sudo_user_key")
    closed = socket.socket()
    closed.bind((sshd.host_side, 0))
    try:
        settings.CORRAL = {
            **settings.CORRAL, "PUBLIC_URL": f"http://{sshd.host_side}:{closed.getsockname()[1]}"
        }  # fmt: skip
        with temporary_user(sshd, key, sudo=True) as user:
            target = add_target(sshd, user=user, private_key=key.private_text, sudo=True)
            op = run_install(target, django_capture_on_commit_callbacks)
    finally:
        closed.close()
    assert op.error_code == "enrollment_failed", op.error
    facts = next(e.data["facts"] for e in op.events.all() if e.message == "prerequisites met")
    assert facts["uid"] != "0" and facts["sudo"] == "ok"
    assert "create venv (offline)" in [e.message for e in op.events.all()]
    assert_nothing_left(target)


def test_password_login_works_when_allowed_and_a_wrong_one_is_authentication_failed(
    sshd: SSHHost, django_capture_on_commit_callbacks: Any
) -> None:
    key = make_key(sshd.work, "unused_key")
    with temporary_user(sshd, key, password="correct horse 9") as user:
        right = services.ssh_target_create(
            name="pw-right", address=sshd.address, port=sshd.port, user=user,
            password="correct horse 9", allow_password=True,
            host_key_fingerprint=sshd.host_key.fingerprint, host_key_type="ssh-ed25519",
            install_prefix=str(sshd.work / "opt" / "corral-agent"),
        )  # fmt: skip
        op = run_install(right, django_capture_on_commit_callbacks)
        # Authenticated (then refused as not root): the password path works end to end.
        assert op.error_code == "prerequisite_missing", op.error
        wrong = services.ssh_target_create(
            name="pw-wrong", address=sshd.address, port=sshd.port, user=user,
            password="wrong", allow_password=True,
            host_key_fingerprint=sshd.host_key.fingerprint, host_key_type="ssh-ed25519",
        )  # fmt: skip
        op = run_install(wrong, django_capture_on_commit_callbacks)
    assert op.error_code == "authentication_failed"
    assert "(password refused)" in op.error
    assert "wrong" not in " ".join(e.message + str(e.data) for e in op.events.all())


@pytest.mark.slow
def test_failed_upgrade_restores_and_restarts_the_previous_version(
    sshd: SSHHost, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    """A previous install (identity, config, logs, a running stand-in agent) survives an
    upgrade that fails after the swap: it is moved back and started again."""
    prefix = sshd.work / "opt" / "corral-agent"
    repo = Path(__file__).resolve().parents[3]
    (prefix / "bin").mkdir(parents=True)
    (prefix / "venv" / "bin").mkdir(parents=True)
    (prefix / "state").mkdir()
    (prefix / "log").mkdir()
    shutil.copy(repo / "deploy" / "corral-agentctl.sh", prefix / "bin" / "corral-agentctl")
    stand_in = prefix / "venv" / "bin" / "python"
    stand_in.write_text("#!/bin/sh\nexec sleep 300\n")
    stand_in.chmod(0o755)
    (prefix / "VERSION").write_text("0.0.9+previous\n")
    (prefix / "agent.json").write_text('{"previous": true}\n')
    (prefix / "state" / "agent_key.pem").write_text("previous key\n")
    start = ["sh", str(prefix / "bin" / "corral-agentctl"), str(prefix), "start"]
    subprocess.run(sshd.exec_argv(start), check=True, capture_output=True)
    old_pid = int((prefix / "run" / "agent.pid").read_text())

    closed = socket.socket()
    closed.bind((sshd.host_side, 0))
    try:
        settings.CORRAL = {
            **settings.CORRAL, "PUBLIC_URL": f"http://{sshd.host_side}:{closed.getsockname()[1]}"
        }  # fmt: skip
        target = add_target(sshd)
        op = run_install(target, django_capture_on_commit_callbacks)
    finally:
        closed.close()
    assert op.error_code == "enrollment_failed", op.error
    messages = [e.message for e in op.events.all()]
    assert "rollback: restore previous version" in messages
    assert (prefix / "VERSION").read_text() == "0.0.9+previous\n"
    assert (prefix / "agent.json").read_text() == '{"previous": true}\n'
    assert (prefix / "state" / "agent_key.pem").read_text() == "previous key\n"
    assert not Path(f"{prefix}.new").exists() and not Path(f"{prefix}.old").exists()
    new_pid = int((prefix / "run" / "agent.pid").read_text())
    assert new_pid != old_pid and Path(f"/proc/{new_pid}").exists()  # stopped, then restarted
    subprocess.run(sshd.exec_argv([*start[:-1], "stop"]), check=True, capture_output=True)


def test_uninstall_tells_the_operator_which_containers_remain(
    sshd: SSHHost, django_capture_on_commit_callbacks: Any
) -> None:
    prefix = sshd.work / "opt" / "corral-agent"
    runtime = sshd.work / "runtime"
    (runtime / "web-1").mkdir(parents=True)
    (runtime / "db-1").mkdir()
    (prefix / "venv" / "bin").mkdir(parents=True)
    (prefix / "state").mkdir()
    (prefix / "venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    (prefix / "agent.json").write_text(f'{{"runtime_root": "{runtime}"}}\n')
    (prefix / "state" / "agent_key.pem").write_text("key\n")
    target = add_target(sshd)
    with django_capture_on_commit_callbacks(execute=False):
        op = services.ssh_operation_start(target=target, action="uninstall")
    op = services.ssh_operation_run(str(op.pk))
    assert op.status == "succeeded", op.error
    assert op.result == {"remaining_containers": ["db-1", "web-1"]}
    warning = op.events.get(level="warning")
    assert warning.message.startswith("2 container(s) remain on the host")
    assert not prefix.exists()
    assert sorted(p.name for p in runtime.iterdir()) == ["db-1", "web-1"]  # not ours to remove
    target.refresh_from_db()
    assert target.state == "uninstalled"
