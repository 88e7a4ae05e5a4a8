"""`make run` on embedded defaults (SQLite, the filesystem broker): the real stack as
subprocesses, driven over HTTP like a newcomer's browser would."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support.procs import REPO, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


class Browser:
    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with self.opener.open(self.base + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def login(self, username: str, password: str) -> int:
        _, page = self.get("/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, page[:500]
        data = urllib.parse.urlencode(
            {"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)}
        ).encode()
        request = urllib.request.Request(
            self.base + "/login/", data=data, headers={"Referer": self.base + "/login/"}
        )
        with self.opener.open(request, timeout=10) as response:
            return response.status


def test_make_run_serves_ui_api_docs_and_health_then_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL") and not k.startswith("CORRAL_")
    }
    env.update(
        {
            "CORRAL_VAR_DIR": str(tmp_path / "var"),
            "CORRAL_BIND": f"127.0.0.1:{port}",
            "CORRAL_ADMIN_PASSWORD": "first-admin-password-123",
        }
    )
    log = open(tmp_path / "make-run.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    browser = Browser(f"http://127.0.0.1:{port}")
    try:
        wait_for(
            lambda: (
                "Corral is running at" in (tmp_path / "make-run.log").read_text()
                or proc.poll() is not None
            ),
            180,
            "make run to start everything",
        )
        output = (tmp_path / "make-run.log").read_text()
        assert proc.poll() is None, output[-3000:]
        assert browser.get("/login/")[0] == 200
        assert "admin account created: admin / first-admin-password-123" in output
        assert f"Corral is running at http://127.0.0.1:{port}/" in output

        status, body = browser.get("/healthz")
        assert status == 200, body
        assert json.loads(body)["checks"] == {
            **json.loads(body)["checks"],
            "database": "ok",
            "broker": "ok",
        }
        assert browser.get("/api/v1/hosts/")[0] in (401, 403)
        assert browser.login("admin", "first-admin-password-123") == 200
        status, docs = browser.get("/api/docs/")
        assert status == 200 and "swagger" in docs.lower()
        if os.geteuid() == 0:
            # As root, a local agent enrolled as the first host and reports in.
            def local_host_online() -> bool:
                code, text = browser.get("/api/v1/hosts/")
                rows = json.loads(text)["results"] if code == 200 else []
                return bool(rows) and rows[0]["status"] == "online"

            wait_for(local_host_online, 90, "the local agent's host to be online")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            log.close()
    time.sleep(0.5)
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "processes left running after Ctrl-C"
