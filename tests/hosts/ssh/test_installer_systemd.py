"""The systemd path of the installer cannot run here (PID 1 is not systemd), so its commands
are checked with a recording session; the unit template itself is rendered for real by the
same sed command the installer runs."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

from hosts.ssh.client import CommandResult
from hosts.ssh.installer import HostFacts, Installer

REPO = Path(__file__).resolve().parents[3]


class RecordingSession:
    """Records the commands an Installer would run; every command succeeds."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, command: str, *, timeout: float = 60.0, step: str = "") -> CommandResult:
        self.commands.append(command)
        return CommandResult(command, 0, "", "", 0.0)


def facts(systemd: bool) -> HostFacts:
    return HostFacts(
        uid=0, python=(3, 11), python_full="3.11.2", glibc=(2, 36), arch="x86_64", systemd=systemd
    )


def scripts(session: RecordingSession) -> list[str]:
    """The sh -c scripts (unquoted) of the recorded commands."""
    return [shlex.split(c)[-1] for c in session.commands]


def installer(session: RecordingSession, **kwargs: Any) -> Installer:
    events: list[str] = []
    return Installer(session, prefix="/srv/corral-agent", sudo=False,  # type: ignore[arg-type]
                     record=lambda m, **_: events.append(m), **kwargs)  # fmt: skip


def test_systemd_hosts_get_the_unit_enabled_and_restarted() -> None:
    session = RecordingSession()
    installer(session).start(facts(systemd=True))
    (script,) = scripts(session)
    assert "/srv/corral-agent/share/corral-agent.service.in" in script
    assert "> /etc/systemd/system/corral-agent.service.tmp" in script
    assert script.index("daemon-reload") < script.index("enable corral-agent.service")
    assert "systemctl restart corral-agent.service" in script
    assert "corral-agentctl" not in script


def test_other_hosts_get_the_supervisor() -> None:
    session = RecordingSession()
    installer(session).start(facts(systemd=False))
    assert scripts(session) == ["sh /srv/corral-agent/bin/corral-agentctl /srv/corral-agent start"]


def test_sudo_wraps_root_steps_but_not_the_probe() -> None:
    session = RecordingSession()
    inst = Installer(session, prefix="/srv/corral-agent", sudo=True,  # type: ignore[arg-type]
                     record=lambda m, **_: None)  # fmt: skip
    inst.start(facts(systemd=False))
    assert session.commands[0].startswith("sudo -n sh -c ")


def test_unit_template_renders_with_delegate_and_killmode_process(tmp_path: Path) -> None:
    """Run the installer's sed line on the real template."""
    template = REPO / "deploy" / "corral-agent.service.in"
    prefix = "/srv/corral-agent"
    rendered = subprocess.run(
        ["sh", "-c", f'sed -e "s|@PREFIX@|"{shlex.quote(prefix)}"|g" {shlex.quote(str(template))}'],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "@PREFIX@" not in rendered
    lines = set(rendered.splitlines())
    assert {"Delegate=yes", "KillMode=process", "Restart=always"} <= lines
    assert f"ExecStart={prefix}/venv/bin/python -m agent --config {prefix}/agent.json run" in lines
