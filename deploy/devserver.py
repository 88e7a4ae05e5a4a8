#!/usr/bin/env python
"""``make run``: Corral on one machine with embedded defaults (SQLite under var/, a broker that
needs no server): migrate, make sure an admin exists, then run the web server (gunicorn), the
control-plane worker and beat, the heartbeat consumer, and - as root - a local agent enrolled
as the first host.
Ctrl-C stops everything."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
BIND = os.environ.get("CORRAL_BIND", "127.0.0.1:8000")


def manage(*args: str) -> None:
    subprocess.run([sys.executable, str(REPO / "manage.py"), *args], check=True, cwd=REPO)


def ensure_admin() -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    User = get_user_model()
    username = os.environ.get("CORRAL_ADMIN_USER", "admin")
    if User.objects.filter(username=username).exists():
        print(f"admin account: {username} (already exists)")
        return
    password = os.environ.get("CORRAL_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    User.objects.create_superuser(username=username, email="", password=password)
    print(f"admin account created: {username} / {password}  (shown once)", flush=True)


def local_agent_argv() -> list[str] | None:
    if os.geteuid() != 0:
        print(
            "not root: no local agent (an agent needs root for namespaces and cgroups); "
            "add hosts from the UI (Hosts -> Add host) or `python -m agent enroll`"
        )
        return None
    from django.conf import settings

    state = Path(settings.VAR_DIR) / "agent"
    config = state / "agent.json"
    if not config.exists():
        from hosts.services import enrollment_token_create

        _, token = enrollment_token_create(note="local agent (make run)")
        return [
            str(VENV_BIN / "python"),
            "-m",
            "agent",
            "--config",
            str(config),
            "enroll",
            "--server",
            f"http://{BIND}",
            "--token",
            token,
            "--state-dir",
            str(state),
        ]
    return [str(VENV_BIN / "python"), "-m", "agent", "--config", str(config), "run"]


def main() -> int:
    manage("migrate", "--noinput", "-v0")
    manage("collectstatic", "--noinput", "-v0")
    ensure_admin()
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, cwd=REPO, start_new_session=True)
        procs.append(proc)
        return proc

    celery = [str(VENV_BIN / "celery"), "-A", "config"]
    start(
        [
            str(VENV_BIN / "gunicorn"),
            "config.wsgi",
            "-b",
            BIND,
            "-w",
            "2",
            "--threads",
            "4",
            "--access-logfile",
            "-",
        ]
    )
    start([*celery, "worker", "-Q", "controlplane", "-c", "2", "-l", "INFO"])
    start([sys.executable, "manage.py", "ingest_heartbeats"])  # the agents' heartbeats
    start([*celery, "beat", "-l", "INFO"])
    agent = local_agent_argv()
    if agent is not None:
        time.sleep(2)  # let the web server bind before the agent enrolls
        if "enroll" in agent:
            subprocess.run(agent, check=True, cwd=REPO)
            agent = [*agent[: agent.index("enroll")], "run"]
        start(agent)
    print(
        f"\nCorral is running at http://{BIND}/  (API docs: /api/docs/) - Ctrl-C stops it\n",
        flush=True,
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in procs):
        time.sleep(0.5)
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
