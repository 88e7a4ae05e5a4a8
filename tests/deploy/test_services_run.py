"""The control-plane units' commands, run as systemd would run them from this checkout: the
ExecStart= line with its specifiers expanded, Environment= plus the filled-in env.example, the
WorkingDirectory=, then SIGTERM to the main process (KillMode=mixed) within TimeoutStopSec=.

The web process runs behind the example nginx with DEBUG off: Django must see HTTPS through
it (no redirect loop), static files come from nginx, and gunicorn tells systemd it is ready.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.deploy.harness import (
    DEPLOY,
    SITE_NAME,
    expand_specifiers,
    read_env_file,
    render_nginx_site,
    unit_value,
)
from tests.support.procs import REPO, Proc, free_port, running, wait_for, wait_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
UNITS = DEPLOY / "systemd"
HOSTNAME = socket.gethostname()


def from_checkout(value: str) -> str:
    return value.replace("/opt/corral/.venv/", f"{REPO}/.venv/").replace("/opt/corral", str(REPO))


def unit_argv(name: str) -> list[str]:
    line = unit_value(UNITS / name, "Service", "ExecStart")
    return shlex.split(from_checkout(expand_specifiers(line, hostname=HOSTNAME)))


def unit_env(name: str, var_dir: Path, **overrides: str) -> dict[str, str]:
    """Environment= then EnvironmentFile= (which wins, as in systemd), then test overrides;
    /var/lib/corral becomes ``var_dir``."""
    env: dict[str, str] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for assignment in shlex.split(unit_value(UNITS / name, "Service", "Environment")):
        key, _, value = assignment.partition("=")
        env[key] = value
    assert unit_value(UNITS / name, "Service", "EnvironmentFile") == "/etc/corral/corral.env"
    env.update(read_env_file(DEPLOY / "env.example"))
    env.update(
        SECRET_KEY=secrets.token_urlsafe(50),
        CORRAL_FERNET_KEYS=Fernet.generate_key().decode(),
        DATABASE_URL=f"sqlite:///{var_dir}/corral.sqlite3",
        CELERY_BROKER_URL="filesystem://",
        CORRAL_AGENT_BROKER_URL="filesystem://",
    )
    env = {k: v.replace("/var/lib/corral", str(var_dir)) for k, v in env.items()}
    env.update(overrides)
    return env


def stop_like_systemd(proc: Proc, name: str) -> float:
    """SIGTERM to the main process only; returns how long it took to exit."""
    limit = float(unit_value(UNITS / name, "Service", "TimeoutStopSec"))
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    code = proc.popen.wait(timeout=limit)
    took = time.monotonic() - started
    assert code == 0, f"{name} exited {code} on SIGTERM:\n{proc.log()[-3000:]}"
    return took


def get(
    port: int, path: str, *, tls: Path | None = None, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    conn: http.client.HTTPConnection
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    else:
        import ssl

        context = ssl.create_default_context(cafile=str(tls))
        context.check_hostname = False
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=20)
    conn.request("GET", path, headers={"Host": SITE_NAME, **(headers or {})})
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
def test_web_unit_serves_django_over_https_behind_the_example_nginx(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    web_port = free_port()
    notify = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(60)
    env = unit_env(
        "corral-web.service",
        var_dir,
        CORRAL_WEB_BIND=f"127.0.0.1:{web_port}",
        CORRAL_WEB_WORKERS="1",
        CORRAL_WEB_THREADS="4",
        NOTIFY_SOCKET=str(notify),
    )
    # The README's steps before the first start.
    collect = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert collect.returncode == 0, collect.stderr
    manifest = json.loads((var_dir / "static" / "staticfiles.json").read_text())["paths"]
    css = next(hashed for name, hashed in sorted(manifest.items()) if name.endswith(".css"))

    cwd = Path(
        from_checkout(unit_value(UNITS / "corral-web.service", "Service", "WorkingDirectory"))
    )
    with running("web", unit_argv("corral-web.service"), env=env, cwd=cwd, log_dir=tmp_path) as web:
        try:
            message = listener.recv(4096).decode()
        finally:
            listener.close()
        assert "READY=1" in message.splitlines(), message  # Type=notify holds
        wait_port("127.0.0.1", web_port)

        prefix = tmp_path / "nginx"
        prefix.mkdir()
        site = render_nginx_site(
            prefix,
            http_port=free_port(),
            https_port=free_port(),
            upstream_port=web_port,
            static_dir=var_dir / "static",
        )
        with running("nginx", site.argv("-g", "daemon off;"), log_dir=tmp_path):
            wait_port("127.0.0.1", site.https_port)

            # Straight to gunicorn over plain HTTP: Django insists on HTTPS ...
            direct = get(web_port, "/login/")
            assert direct.status == 301
            assert direct.getheader("Location") == f"https://{SITE_NAME}/login/"
            # ... and through nginx it knows the request came over HTTPS: the page itself.
            page = get(site.https_port, "/login/", tls=site.cert)
            assert page.status == 200, page.body  # type: ignore[attr-defined]
            assert b"<form" in page.body  # type: ignore[attr-defined]
            assert page.msg.get_all("Strict-Transport-Security") == [
                "max-age=31536000; includeSubDomains"
            ]
            cookie = page.getheader("Set-Cookie") or ""
            assert "csrftoken=" in cookie and "Secure" in cookie, cookie

            health = get(site.https_port, "/healthz", tls=site.cert)
            assert health.status == 200, health.body  # type: ignore[attr-defined]

            static = get(
                site.https_port,
                f"/static/{css}",
                tls=site.cert,
                headers={"Accept-Encoding": "gzip"},
            )
            assert static.status == 200
            assert (
                static.getheader("Cache-Control") == "max-age=2592000"
            )  # nginx's, not whitenoise's
            if (var_dir / "static" / f"{css}.gz").exists():
                assert static.getheader("Content-Encoding") == "gzip"
        took = stop_like_systemd(web, "corral-web.service")
        print(f"corral-web stopped {took:.2f} s after SIGTERM")
    assert f"/static/{css}" not in web.log()  # gunicorn never saw the static request


@pytest.mark.parametrize(
    ("name", "ready"),
    [
        ("corral-worker.service", f"controlplane@{HOSTNAME} ready."),
        ("corral-beat.service", "beat: Starting..."),
    ],
)
def test_celery_units_start_and_stop_cleanly_on_sigterm(
    name: str, ready: str, tmp_path: Path
) -> None:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    env = unit_env(name, var_dir)
    cwd = Path(from_checkout(unit_value(UNITS / name, "Service", "WorkingDirectory")))
    with running(name, unit_argv(name), env=env, cwd=cwd, log_dir=tmp_path) as proc:
        wait_for(lambda: ready in proc.log() or not proc.alive(), 90, f"{name}: {ready!r}")
        assert proc.alive(), proc.log()[-3000:]
        if name == "corral-beat.service":
            # beat sends the liveness sweep at once, to the broker named in the env file.
            queue = var_dir / "broker" / "queue"
            wait_for(lambda: queue.is_dir() and any(queue.iterdir()), 30, "a periodic task sent")
            assert any(var_dir.glob("celerybeat-schedule*"))
        took = stop_like_systemd(proc, name)
        print(f"{name} stopped {took:.2f} s after SIGTERM")
