"""deploy/gunicorn.conf.py: threaded workers sized from the usable CPUs, every number from the
environment, a malformed value refused naming the variable - as gunicorn itself reads it."""

from __future__ import annotations

import os
import runpy
import subprocess
from typing import Any

import pytest

from tests.deploy.harness import DEPLOY
from tests.support.procs import REPO

CONF = DEPLOY / "gunicorn.conf.py"
GUNICORN = REPO / ".venv" / "bin" / "gunicorn"


def load(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name in list(os.environ):
        if name.startswith("CORRAL_WEB_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_defaults_suit_one_machine_behind_nginx(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load(monkeypatch)
    assert conf["bind"] == ["127.0.0.1:8000"]
    assert conf["worker_class"] == "gthread"
    assert conf["workers"] == 2 * len(os.sched_getaffinity(0)) + 1
    assert conf["threads"] == 8
    assert conf["timeout"] == 60
    assert conf["forwarded_allow_ips"] == "127.0.0.1,::1"
    assert conf["max_requests_jitter"] == conf["max_requests"] // 10


def test_workers_follow_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert load(monkeypatch)["workers"] == 3


def test_every_number_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load(
        monkeypatch,
        CORRAL_WEB_BIND="unix:/run/corral/web.sock",
        CORRAL_WEB_WORKERS="3",
        CORRAL_WEB_THREADS="16",
        CORRAL_WEB_TIMEOUT="90",
        CORRAL_WEB_GRACEFUL_TIMEOUT="10",
        CORRAL_WEB_MAX_REQUESTS="0",
        CORRAL_WEB_FORWARDED_ALLOW_IPS="10.0.0.5",
        CORRAL_WEB_LOG_LEVEL="warning",
    )
    assert conf["bind"] == ["unix:/run/corral/web.sock"]
    assert (conf["workers"], conf["threads"], conf["timeout"]) == (3, 16, 90)
    assert (conf["graceful_timeout"], conf["max_requests"], conf["max_requests_jitter"]) == (
        10,
        0,
        0,
    )
    assert conf["forwarded_allow_ips"] == "10.0.0.5"
    assert conf["loglevel"] == "warning"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CORRAL_WEB_WORKERS", "many", "is not an integer"),
        ("CORRAL_WEB_WORKERS", "0", "must be at least 1"),
        ("CORRAL_WEB_THREADS", "2.5", "is not an integer"),
        ("CORRAL_WEB_TIMEOUT", "1", "must be at least 5"),
    ],
)
def test_malformed_value_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{variable}=.*{message}"):
        load(monkeypatch, **{variable: value})


def gunicorn(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_WEB_")}
    return subprocess.run(
        [str(GUNICORN), "--config", str(CONF), *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_gunicorn_reads_the_file_as_intended() -> None:
    done = gunicorn("--print-config", "config.wsgi", CORRAL_WEB_THREADS="12")
    assert done.returncode == 0, done.stderr
    printed = {
        key.strip(): value.strip()
        for key, _, value in (line.partition("=") for line in done.stdout.splitlines())
    }
    assert printed["worker_class"] == "gthread"
    assert printed["threads"] == "12"
    assert printed["bind"] == "['127.0.0.1:8000']"
    assert printed["forwarded_allow_ips"] == "['127.0.0.1', '::1']"
    assert printed["secure_scheme_headers"] == "{'X-FORWARDED-PROTO': 'https'}"
    assert printed["proc_name"] == "corral-web"


def test_gunicorn_stops_on_a_malformed_value_and_says_which() -> None:
    done = gunicorn("--check-config", "config.wsgi", CORRAL_WEB_WORKERS="lots")
    assert done.returncode != 0
    assert "CORRAL_WEB_WORKERS='lots' is not an integer" in done.stderr
