"""The control-plane units' hardening does not break them: web, worker and beat run their
ExecStart= as an unprivileged user with no capabilities, no_new_privs, a read-only file system
except the var dir, and a private /tmp (tests/deploy/sandbox.py, since PID 1 here is not
systemd), and still serve pages, answer /healthz, and run beat's periodic tasks end to end.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.deploy.harness import (
    UNITS,
    from_checkout,
    private_redis,
    stop_like_systemd,
    unit_argv,
    unit_env,
    unit_value,
)
from tests.support.procs import REPO, Proc, free_port, running, wait_for, wait_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.privileged]
SANDBOX = Path(__file__).with_name("sandbox.py")


def others_can_run(path: Path) -> bool:
    """Whether a user other than the owner can execute ``path`` (o+x on it and its parents)."""
    real = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in [real, *real.parents])


# nobody stands in for the corral user, unless this checkout's interpreter is out of its reach
# (a virtualenv made from a Python under /root); then root without a single capability.
UID = 65534 if others_can_run(REPO / ".venv" / "bin" / "python3") else 0


def sandboxed(var_dir: Path, argv: list[str]) -> list[str]:
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        sys.executable, str(SANDBOX), "--uid", str(UID), "--rw", str(var_dir), "--", *argv,
    ]  # fmt: skip


@pytest.fixture
def var_dir() -> Iterator[Path]:
    """Outside /tmp (the sandbox hides /tmp), owned by the service user, removed afterwards."""
    path = REPO / "var" / "test" / f"deploy-sandbox-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    with private_redis(tmp_path) as url:
        yield url


def prepare(var_dir: Path, env: dict[str, str]) -> None:
    """The README's steps run by the operator: migrate and collectstatic, then chown."""
    for args in (["migrate", "--noinput", "-v0"], ["collectstatic", "--noinput", "-v0"]):
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(var_dir)], check=True)


def test_the_sandbox_is_real(var_dir: Path) -> None:
    """The control: outside the var dir nothing is writable, and no capability is left."""
    var_dir.chmod(0o777)
    probe = (
        f"touch {var_dir}/ok && touch /tmp/ok && ! touch {REPO}/var/nope 2>/dev/null && "
        "grep -q '^CapEff:.0000000000000000$' /proc/self/status && "
        f"grep -q '^NoNewPrivs:.1$' /proc/self/status && test $(id -u) = {UID}"
    )
    done = subprocess.run(
        sandboxed(var_dir, ["sh", "-c", probe]), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert (var_dir / "ok").exists() and not (REPO / "var" / "nope").exists()


def test_web_worker_and_beat_work_under_the_hardening(
    var_dir: Path, tmp_path: Path, broker: str
) -> None:
    web_port = free_port()
    envs = {
        name: unit_env(
            name,
            var_dir,
            CORRAL_WEB_BIND=f"127.0.0.1:{web_port}",
            CORRAL_WEB_WORKERS="1",
            CELERY_BROKER_URL=broker,
            CORRAL_AGENT_BROKER_URL=broker,
        )
        for name in (
            "corral-web.service",
            "corral-worker.service",
            "corral-beat.service",
            "corral-ingest.service",
        )
    }
    # One set of secrets for the three, as one env file would give.
    shared = envs["corral-web.service"]
    for env in envs.values():
        env.update(SECRET_KEY=shared["SECRET_KEY"], CORRAL_FERNET_KEYS=shared["CORRAL_FERNET_KEYS"])
    prepare(var_dir, shared)

    def start(name: str) -> AbstractContextManager[Proc]:
        cwd = Path(from_checkout(unit_value(UNITS / name, "Service", "WorkingDirectory")))
        argv = sandboxed(var_dir, unit_argv(name))
        return running(name, argv, env=envs[name], cwd=cwd, log_dir=tmp_path)

    with (
        start("corral-web.service") as web,
        start("corral-worker.service") as worker,
        start("corral-beat.service") as beat,
        start("corral-ingest.service") as ingest,
    ):
        wait_port("127.0.0.1", web_port, timeout=60)
        conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=20)
        conn.request("GET", "/healthz", headers={"Host": "corral.example.org"})
        health = conn.getresponse()
        body = json.loads(health.read())
        assert health.status == 200, (body, web.log()[-3000:])
        assert body["status"] == "ok"
        # The page as nginx would ask for it (gunicorn trusts X-Forwarded-Proto from loopback).
        conn.request(
            "GET", "/login/", headers={"Host": "corral.example.org", "X-Forwarded-Proto": "https"}
        )
        page = conn.getresponse()
        assert page.status == 200 and b"<form" in page.read(), web.log()[-3000:]
        conn.close()

        # beat -> Redis -> worker -> database (in the var dir), all inside the sandbox.
        def sweep_succeeded() -> bool:
            return any(
                "liveness_sweep" in line and "succeeded" in line
                for line in worker.log().splitlines()
            )

        wait_for(sweep_succeeded, 90, "the worker to run beat's liveness sweep")
        wait_for(
            lambda: "ingesting heartbeats from" in ingest.log() or not ingest.alive(),
            60,
            "the heartbeat consumer to start",
        )
        for proc, name in (
            (ingest, "corral-ingest.service"),
            (beat, "corral-beat.service"),
            (worker, "corral-worker.service"),
            (web, "corral-web.service"),
        ):
            assert proc.alive(), proc.log()[-3000:]
            stop_like_systemd(proc, name)
    for proc in (web, worker, beat, ingest):
        assert "Read-only file system" not in proc.log(), proc.log()[-3000:]
        assert "Permission denied" not in proc.log(), proc.log()[-3000:]


def test_worker_builds_an_agent_bundle_under_the_hardening(var_dir: Path, tmp_path: Path) -> None:
    """The SSH bootstrap's first step on the worker: `pip download` of the agent's wheels and
    the bundle, with nothing writable but the var dir (which is also HOME, for pip)."""
    env = unit_env("corral-worker.service", var_dir)
    assert env["HOME"] == str(var_dir)
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(var_dir)], check=True)
    code = """
import inspect, platform
import django
django.setup()
from hosts.ssh.bundle import build
# The target's Python as the bundle API of the day wants it ("3.11.2", or (3, 11) before).
wanted = str(inspect.signature(build).parameters["python"].annotation)
version = platform.python_version()
python = version if wanted == "str" else tuple(int(p) for p in version.split(".")[:2])
bundle = build(python=python, arch=platform.machine(), glibc=(2, 36))
print("BUNDLE", bundle.path, bundle.version)
"""
    done = subprocess.run(
        sandboxed(var_dir, [sys.executable, "-c", code]),
        cwd=REPO,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    bundle = Path(done.stdout.split("BUNDLE ", 1)[1].split()[0])
    assert bundle.is_file() and bundle.is_relative_to(var_dir)
