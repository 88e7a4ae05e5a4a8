"""The supervisor installed where PID 1 is not systemd (deploy/corral-agentctl.sh), run for
real with a stand-in agent: start detaches, a dead agent is restarted, stop ends both the
supervisor and the agent, status tells which."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def ctl(prefix: Path, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(prefix / "bin" / "corral-agentctl"), str(prefix), action],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive.
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def read_pid(path: Path, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(path.read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"no pid in {path}")


@pytest.fixture
def prefix(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "corral-agent"
    (root / "bin").mkdir(parents=True)
    (root / "venv" / "bin").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "corral-agentctl.sh", root / "bin" / "corral-agentctl")
    # Stand-in for `python -m agent --config X run`: records its argv and waits.
    fake = root / "venv" / "bin" / "python"
    fake.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/../../argv"\nexec sleep 300\n')
    fake.chmod(0o755)
    yield root
    ctl(root, "stop")


def test_start_restart_on_death_and_stop(prefix: Path) -> None:
    assert ctl(prefix, "status").returncode == 3
    started = ctl(prefix, "start")
    assert started.returncode == 0, started.stderr
    supervisor = read_pid(prefix / "run" / "supervisor.pid")
    first = read_pid(prefix / "run" / "agent.pid")
    assert alive(supervisor) and alive(first)
    assert os.getsid(supervisor) == supervisor  # detached in its own session
    assert (prefix / "argv").read_text().split("\n")[0] == (
        f"-m agent --config {prefix}/agent.json run"
    )
    assert ctl(prefix, "start").stdout.strip() == "already running"

    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        second = read_pid(prefix / "run" / "agent.pid")
        if second != first and alive(second):
            break
        time.sleep(0.1)
    assert second != first and alive(second)

    stopped = ctl(prefix, "stop")
    assert stopped.stdout.strip() == "stopped"
    time.sleep(0.2)
    assert not alive(supervisor) and not alive(second)
    assert not (prefix / "run" / "agent.pid").exists()
    assert ctl(prefix, "status").returncode == 3
