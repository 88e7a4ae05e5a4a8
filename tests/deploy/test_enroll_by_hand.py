"""The README's "Enroll a host / By hand" block, run as written (paths moved into a temporary
prefix, the systemd lines left out), against the control plane started from its units; then
the agent from corral-agent.service's ExecStart= until the host is online, and a SIGTERM like
`systemctl stop` (KillMode=process).

Needs the package index for `pip install` in the new virtualenv, like the README does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.harness import (
    DEPLOY,
    UNITS,
    from_checkout,
    private_redis,
    stop_like_systemd,
    substitute,
    unit_argv,
    unit_env,
    unit_value,
)
from tests.support.procs import REPO, free_port, running, wait_for, wait_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.privileged]
README = (DEPLOY / "README.md").read_text()


def by_hand_block() -> str:
    section = README.split("**By hand**", 1)[1]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) >= 2, "the By hand section lost its token or install block"
    return str(blocks[1])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    with private_redis(tmp_path) as url:
        yield url


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_hand_install_enrolls_a_host_that_comes_online(tmp_path: Path, broker: str) -> None:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    prefix = tmp_path / "corral-agent"
    web_port = free_port()
    server = f"http://127.0.0.1:{web_port}"
    env = unit_env(
        "corral-web.service",
        var_dir,
        CELERY_BROKER_URL=broker,
        CORRAL_AGENT_BROKER_URL=broker,
        CORRAL_PUBLIC_URL=server,
        CORRAL_WEB_BIND=f"127.0.0.1:{web_port}",
        CORRAL_WEB_WORKERS="1",
        ALLOWED_HOSTS="127.0.0.1",
        SECURE_SSL_REDIRECT="false",  # no nginx in front here: the agent enrolls over HTTP
    )
    manage(env, "migrate", "--noinput", "-v0")
    manage(env, "collectstatic", "--noinput", "-v0")
    token = (
        manage(
            env,
            "shell",
            "-c",
            "from hosts.services import enrollment_token_create; "
            "print('TOKEN', enrollment_token_create(note='by hand')[1])",
        )
        .split("TOKEN ", 1)[1]
        .strip()
    )

    script = substitute(
        by_hand_block(),
        {
            "apt-get install -y python3 python3-venv\n": "",
            "/opt/corral-agent": str(prefix),
            "cp -r agent ": f"cp -r {REPO / 'agent'} ",
            "https://corral.example.org": server,
            "<token>": token,
        },
        source="deploy/README.md",
    )
    # The unit is installed and started by systemd on a real host; here we run its command.
    script = "\n".join(
        line
        for line in script.splitlines()
        if "systemctl" not in line and "cp corral-agent" not in line
    )

    cwd = Path(
        from_checkout(unit_value(UNITS / "corral-web.service", "Service", "WorkingDirectory"))
    )
    with (
        running("web", unit_argv("corral-web.service"), env=env, cwd=cwd, log_dir=tmp_path) as web,
        running("worker", unit_argv("corral-worker.service"), env=env, cwd=cwd, log_dir=tmp_path),
        running("ingest", unit_argv("corral-ingest.service"), env=env, cwd=cwd, log_dir=tmp_path),
    ):
        wait_port("127.0.0.1", web_port, timeout=60)
        done = subprocess.run(
            ["sh", "-ex", "-c", script], capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-4000:] + web.log()[-2000:]
        assert "enrolled as host" in done.stdout

        config_path = prefix / "agent.json"
        assert config_path.stat().st_mode & 0o077 == 0  # it holds the broker URL
        config = json.loads(config_path.read_text())
        assert config["broker_url"] == broker
        # Isolation from other agents on this test machine, not part of the README.
        config["runtime_root"] = str(tmp_path / "runtime")
        config_path.write_text(json.dumps(config))

        agent_argv = [
            arg.replace("/opt/corral-agent", str(prefix))
            for arg in unit_argv("corral-agent.service")
        ]
        with running("agent", agent_argv, log_dir=tmp_path) as agent:
            status = (
                "from hosts.models import Host; "
                f"print('STATUS', Host.objects.get(pk='{config['host_id']}').status)"
            )

            def online() -> bool:
                assert agent.alive(), agent.log()[-3000:]
                return "STATUS online" in manage(env, "shell", "-c", status)

            wait_for(online, 90, "the hand-enrolled host to be online", interval=1.0)
            stop_like_systemd(agent, "corral-agent.service")
