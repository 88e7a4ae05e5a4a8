"""End to end: a fresh host (network namespace + Debian's sshd) is added through the API with
its pinned host key; the control-plane worker installs the agent over SSH; the agent enrolls
over HTTP and heartbeats through Redis, so the host comes online. Then: install again is an
upgrade of the same host, a changed host key is refused, and uninstall leaves nothing."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.fernet import Fernet
from rest_framework.test import APIClient

from hosts.models import Host, Operation
from hosts.models_ssh import SSHTarget
from tests.hosts.ssh.sshd_support import SSHHost, make_key, ssh_host

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.privileged]
FINAL = ("succeeded", "failed", "timed_out", "lost")


@contextlib.contextmanager
def tcp_relay(listen_host: str, target: tuple[str, int]) -> Iterator[int]:
    """Forward connections from ``listen_host:<port>`` to ``target`` (the live server listens
    on loopback only; the agent in the namespace reaches it through our veth address)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((listen_host, 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()
    open_socks: list[socket.socket] = []

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(target, timeout=10)
            upstream.settimeout(None)
            client.settimeout(None)
            open_socks.extend([client, upstream])
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()
        for sock in open_socks:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def fresh_host(stack: Any, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[SSHHost]:
    """sshd in a namespace, the control plane reachable from it, a worker that can decrypt."""
    from config.celery import app

    live = urlsplit(stack.live_url)
    with ssh_host() as host, tcp_relay(host.host_side, (live.hostname, live.port)) as port:
        public_url = f"http://{host.host_side}:{port}"
        key = Fernet.generate_key().decode()
        settings.CORRAL = {
            **settings.CORRAL,
            "FERNET_KEYS": [key],
            "PUBLIC_URL": public_url,
            "AGENT_BROKER_URL": stack.broker.agent_url,
        }
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, host.host_side]
        stack.env.update(
            {
                "CORRAL_FERNET_KEYS": key,
                "CORRAL_PUBLIC_URL": public_url,
                "CORRAL_AGENT_BROKER_URL": stack.broker.agent_url,
            }
        )
        # Operations are handed to the private broker the worker consumes.
        to_private = app.connection_for_write

        def private_broker(url: str | None = None, **kwargs: Any) -> Any:
            return to_private(stack.broker.local_url, **kwargs)

        monkeypatch.setattr(app, "connection_for_write", private_broker)
        # Two processes: the install waits for a heartbeat that the other one ingests.
        stack.start_worker(concurrency=2)
        yield host


def wait_final(op_id: str, timeout: float = 300) -> Operation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = Operation.objects.get(pk=op_id)
        if op.status in FINAL:
            return op
        time.sleep(0.25)
    raise AssertionError(f"operation {op_id} still {op.status} after {timeout}s")


def describe(op: Operation) -> str:
    lines = [f"{op.status} {op.error_code}: {op.error}"]
    for event in op.events.all():
        lines.append(f"  [{event.level}] {event.message} {str(event.data)[:600]}")
    return "\n".join(lines)


def agent_pid(prefix: Path) -> int:
    pid = int((prefix / "run" / "agent.pid").read_text())
    os.kill(pid, 0)  # raises if it is not running
    return pid


def test_add_host_by_ssh_installs_an_agent_that_comes_online(
    fresh_host: SSHHost, stack: Any, django_user_model: Any
) -> None:
    host = fresh_host
    admin = django_user_model.objects.create_user("ada", is_staff=True)
    api = APIClient()
    api.force_authenticate(admin)
    prefix = host.work / "opt" / "corral-agent"

    # --- add the host: install, enroll, first heartbeat ---------------------------------
    created = api.post("/api/v1/ssh-hosts/", {
        "name": "ssh-node-1", "address": host.address, "port": host.port, "user": "root",
        "private_key": host.client_key.private_text,
        "host_key_fingerprint": host.host_key.fingerprint, "host_key_type": "ssh-ed25519",
        "install_prefix": str(prefix), "heartbeat_timeout": 90,
    }, format="json")  # fmt: skip
    assert created.status_code == 201, created.data
    target_id = created.data["ssh_host"]["id"]
    op = wait_final(created.data["operation"]["id"])
    assert op.status == "succeeded", describe(op)
    node = Host.objects.get(name="ssh-node-1")
    assert node.status == "online" and node.last_heartbeat_at is not None
    assert node.address == host.address
    assert (prefix / "venv" / "bin" / "python").exists()
    assert oct((prefix / "state" / "agent_key.pem").stat().st_mode & 0o777) == "0o600"
    assert not Path(f"{prefix}.new").exists() and not Path(f"{prefix}.old").exists()
    first_pid = agent_pid(prefix)
    assert first_pid in {int(p) for p in os.listdir("/proc") if p.isdigit()}
    messages = [e.message for e in op.events.all()]
    for step in ("prerequisites met", "create venv (offline)", "swap in new version", "enroll",
                 "first heartbeat received: host is online"):  # fmt: skip
        assert step in messages, messages
    token_events = " ".join(str(e.data) for e in op.events.all())
    assert "crl_" not in token_events  # the enrollment token is redacted from every step

    # --- install again: an upgrade of the same host ---------------------------------------
    again = api.post(f"/api/v1/ssh-hosts/{target_id}/install/", {"heartbeat_timeout": 90},
                     format="json")  # fmt: skip
    assert again.status_code == 202, again.data
    op2 = wait_final(again.data["id"])
    assert op2.status == "succeeded", describe(op2)
    assert op2.result["upgraded"] is True and op2.result["host_id"] == str(node.pk)
    assert Host.objects.filter(name="ssh-node-1").count() == 1
    assert agent_pid(prefix) != first_pid

    # --- the host key changes: refused, naming both fingerprints; the install stays -------
    pinned = host.host_key
    host.start_sshd(host_key=make_key(host.work, "reinstalled_host_key"))
    refused = api.post(f"/api/v1/ssh-hosts/{target_id}/install/", {}, format="json")
    op3 = wait_final(refused.data["id"])
    assert op3.error_code == "host_key_mismatch", describe(op3)
    assert (
        f"host key mismatch: expected {pinned.fingerprint} (ssh-ed25519), "
        f"got {host.host_key.fingerprint} (ssh-ed25519)"
    ) in op3.error
    assert (prefix / "agent.json").exists()
    host.start_sshd(host_key=pinned)

    # --- uninstall: no agent process, files, unit or credentials left ---------------------
    pid = agent_pid(prefix)
    removed = api.post(f"/api/v1/ssh-hosts/{target_id}/uninstall/", {}, format="json")
    op4 = wait_final(removed.data["id"])
    assert op4.status == "succeeded", describe(op4)
    assert not prefix.exists() and not Path(f"{prefix}.new").exists()
    assert not Path("/etc/systemd/system/corral-agent.service").exists()
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists()
    assert SSHTarget.objects.get(pk=target_id).state == "uninstalled"
    listed = api.get(f"/api/v1/ssh-hosts/{target_id}/operations/").data
    assert [o["status"] for o in listed] == ["succeeded", "failed", "succeeded", "succeeded"]
