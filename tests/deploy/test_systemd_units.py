"""The systemd units in deploy/systemd: systemd's own verifier accepts them, the control-plane
units are sandboxed, the agent unit keeps containers alive across restarts and matches what the
SSH bootstrap installs."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.harness import (
    DEPLOY,
    parse_unit,
    parse_unit_text,
    read_env_file,
    unit_value,
    unit_values,
)
from tests.support.procs import REPO

UNITS = DEPLOY / "systemd"
CONTROL_PLANE = [
    "corral-web.service",
    "corral-worker.service",
    "corral-beat.service",
    "corral-ingest.service",
]
ALL_UNITS = [*CONTROL_PLANE, "corral-agent.service"]
VENV = REPO / ".venv"


def installed_here(text: str) -> str:
    """The unit as if Corral were installed from this checkout (systemd-analyze verify checks
    that every ExecStart= program exists and is executable)."""
    return (
        text.replace("/opt/corral-agent/venv/", f"{VENV}/")
        .replace("/opt/corral/.venv/", f"{VENV}/")
        .replace("/opt/corral/", f"{REPO}/")
    )


def test_every_unit_is_shipped() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(ALL_UNITS)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="needs systemd-analyze (Debian package systemd; works without systemd as PID 1)",
)
@pytest.mark.parametrize("name", ALL_UNITS)
def test_systemd_analyze_verify_accepts_the_unit(name: str, tmp_path: Path) -> None:
    unit = tmp_path / name
    unit.write_text(installed_here((UNITS / name).read_text()))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 after a mere warning (an unknown key is "ignored"), so any output fails.
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


@pytest.mark.parametrize("name", ALL_UNITS)
def test_exec_start_programs_exist_in_a_checkout(name: str) -> None:
    argv = shlex.split(installed_here(unit_value(UNITS / name, "Service", "ExecStart")))
    assert Path(argv[0]).is_file(), argv[0]
    for arg in argv[1:]:
        if arg.startswith(str(REPO)):
            assert Path(arg).exists(), f"{name}: ExecStart names {arg}, which does not exist"


@pytest.mark.parametrize("name", CONTROL_PLANE)
def test_control_plane_units_run_sandboxed_as_the_corral_user(name: str) -> None:
    service = dict(parse_unit(UNITS / name)["Service"])
    expected = {
        "User": "corral",
        "Group": "corral",
        "EnvironmentFile": "/etc/corral/corral.env",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictSUIDSGID": "yes",
        "StateDirectory": "corral",
        "ReadWritePaths": "/var/lib/corral",
        "WorkingDirectory": "/opt/corral",
    }
    assert {k: service.get(k) for k in expected} == expected


def test_var_dir_of_the_units_is_the_one_the_env_example_configures() -> None:
    env = read_env_file(DEPLOY / "env.example")
    for name in CONTROL_PLANE:
        assert unit_value(UNITS / name, "Service", "ReadWritePaths") == env["CORRAL_VAR_DIR"]
        assert f"HOME={env['CORRAL_VAR_DIR']}" in unit_value(UNITS / name, "Service", "Environment")


def test_web_unit_runs_gunicorn_with_the_shipped_config_and_reloads_on_hup() -> None:
    unit = UNITS / "corral-web.service"
    argv = shlex.split(unit_value(unit, "Service", "ExecStart"))
    assert argv[argv.index("--config") + 1] == "/opt/corral/deploy/gunicorn.conf.py"
    assert argv[-1] == "config.wsgi"
    assert unit_value(unit, "Service", "Type") == "notify"
    assert unit_value(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_worker_unit_consumes_the_controlplane_queue() -> None:
    from django.conf import settings

    argv = shlex.split(unit_value(UNITS / "corral-worker.service", "Service", "ExecStart"))
    assert argv[1:5] == ["-A", "config", "worker", "-Q"]
    assert argv[5] == settings.CELERY_TASK_DEFAULT_QUEUE == "controlplane"


def test_ingest_unit_consumes_the_queue_agents_send_heartbeats_to() -> None:
    from agent.config import AgentConfig
    from hosts.management.commands.ingest_heartbeats import Command

    argv = shlex.split(unit_value(UNITS / "corral-ingest.service", "Service", "ExecStart"))
    assert argv[1:] == ["/opt/corral/manage.py", "ingest_heartbeats"]
    parser = Command().create_parser("manage.py", "ingest_heartbeats")
    default_queue = parser.parse_args([]).queue
    fields = AgentConfig.__dataclass_fields__
    assert default_queue == fields["heartbeat_queue"].default == "controlplane.heartbeats"


def test_beat_unit_runs_beat_and_nothing_else() -> None:
    argv = shlex.split(unit_value(UNITS / "corral-beat.service", "Service", "ExecStart"))
    assert argv[1:4] == ["-A", "config", "beat"]
    assert "worker" not in argv and "-B" not in argv  # one beat per installation, on its own


def test_agent_unit_delegates_its_cgroup_and_spares_containers_on_restart() -> None:
    unit = UNITS / "corral-agent.service"
    service = dict(parse_unit(unit)["Service"])
    assert service["Delegate"] == "yes"
    assert service["KillMode"] == "process"
    assert service["Restart"] == "always"
    assert service["TasksMax"] == "infinity"
    assert unit_value(unit, "Unit", "StartLimitIntervalSec") == "0"
    # Root by necessity: no User=, and none of the sandboxing that would hide the host.
    for key in ("User", "NoNewPrivileges", "ProtectSystem", "PrivateTmp", "CapabilityBoundingSet"):
        assert key not in service, key
    # Shims and containers inherit the agent's OOM score: shielding the agent shields them.
    assert "OOMScoreAdjust" not in service
    # The control plane's secrets never go to a host.
    assert unit_values(unit, "Service", "EnvironmentFile") == ["-/etc/corral/agent.env"]


def test_agent_unit_is_what_the_ssh_bootstrap_installs_under_its_default_prefix() -> None:
    """Every setting of the SSH installer's template, rendered with its default prefix, is in
    the hand-install unit, so a host enrolled by hand can later be managed over SSH."""
    from hosts.models_ssh import DEFAULT_PREFIX

    template = DEPLOY / "corral-agent.service.in"
    rendered = template.read_text().replace("@PREFIX@", DEFAULT_PREFIX)
    ours = parse_unit(UNITS / "corral-agent.service")
    for section, settings in parse_unit_text(rendered, name=template.name).items():
        missing = [kv for kv in settings if kv not in ours.get(section, [])]
        assert not missing, (
            f"[{section}] of the SSH template not in corral-agent.service: {missing}"
        )
