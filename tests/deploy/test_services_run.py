"""The control-plane units' commands, run as systemd would run them from this checkout: the
ExecStart= line with its specifiers expanded, Environment= plus the filled-in env.example, the
WorkingDirectory=, then SIGTERM to the main process (KillMode=mixed) within TimeoutStopSec=.

The web process runs behind the example nginx with DEBUG off: Django must see HTTPS through
it (no redirect loop), static files come from nginx, and gunicorn tells systemd it is ready.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.harness import (
    SITE_NAME,
    UNITS,
    from_checkout,
    private_redis,
    render_nginx_site,
    stop_like_systemd,
    unit_argv,
    unit_env,
    unit_value,
)
from tests.support.procs import REPO, free_port, running, wait_for, wait_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
HOSTNAME = socket.gethostname()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def get(
    port: int, path: str, *, tls: Path | None = None, headers: dict[str, str] | None = None
) -> Answer:
    conn: http.client.HTTPConnection
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    else:
        context = ssl.create_default_context(cafile=str(tls))
        context.check_hostname = False
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=20)
    conn.request("GET", path, headers={"Host": SITE_NAME, **(headers or {})})
    response = conn.getresponse()
    answer = Answer(response.status, response.msg, response.read())
    conn.close()
    return answer


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    with private_redis(tmp_path) as url:
        yield url


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
def test_web_unit_serves_django_over_https_behind_the_example_nginx(
    tmp_path: Path, broker: str
) -> None:
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
        CELERY_BROKER_URL=broker,
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
            assert direct.header("Location") == f"https://{SITE_NAME}/login/"
            # ... and through nginx it knows the request came over HTTPS: the page itself.
            page = get(site.https_port, "/login/", tls=site.cert)
            assert page.status == 200, page.body
            assert b"<form" in page.body
            assert page.headers.get_all("Strict-Transport-Security") == [
                "max-age=31536000; includeSubDomains"
            ]
            cookie = page.header("Set-Cookie") or ""
            assert "csrftoken=" in cookie and "Secure" in cookie, cookie

            health = get(site.https_port, "/healthz", tls=site.cert)
            assert health.status == 200, health.body

            static = get(
                site.https_port,
                f"/static/{css}",
                tls=site.cert,
                headers={"Accept-Encoding": "gzip"},
            )
            assert static.status == 200
            assert static.header("Cache-Control") == "max-age=2592000"  # nginx's, not whitenoise's
            if (var_dir / "static" / f"{css}.gz").exists():
                assert static.header("Content-Encoding") == "gzip"
        took = stop_like_systemd(web, "corral-web.service")
        print(f"corral-web stopped {took:.2f} s after SIGTERM")
    assert f"/static/{css}" not in web.log()  # gunicorn never saw the static request


def queued(broker: str) -> int:
    """Messages waiting on the controlplane queue (a Redis list under kombu's transport)."""
    import redis

    client = redis.Redis.from_url(broker)
    try:
        length = client.llen("controlplane")
        assert isinstance(length, int)
        return length
    finally:
        client.close()


@pytest.mark.parametrize(
    ("name", "ready"),
    [
        ("corral-worker.service", f"controlplane@{HOSTNAME} ready."),
        ("corral-beat.service", "beat: Starting..."),
        ("corral-ingest.service", "ingesting heartbeats from controlplane.heartbeats"),
    ],
)
def test_celery_units_start_and_stop_cleanly_on_sigterm(
    name: str, ready: str, tmp_path: Path, broker: str
) -> None:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    env = unit_env(name, var_dir, CELERY_BROKER_URL=broker)
    cwd = Path(from_checkout(unit_value(UNITS / name, "Service", "WorkingDirectory")))
    with running(name, unit_argv(name), env=env, cwd=cwd, log_dir=tmp_path) as proc:
        wait_for(lambda: ready in proc.log() or not proc.alive(), 90, f"{name}: {ready!r}")
        assert proc.alive(), proc.log()[-3000:]
        if name == "corral-beat.service":
            # beat sends the liveness sweep at once, to the broker named in the env file.
            wait_for(lambda: queued(broker) > 0, 30, "a periodic task on the controlplane queue")
            assert any(var_dir.glob("celerybeat-schedule*"))
        took = stop_like_systemd(proc, name)
        print(f"{name} stopped {took:.2f} s after SIGTERM")
