"""``delete`` of a container whose exit its shim has recorded: it does not wait for the shim
to finish exiting when the shim never moved into a scope of its own."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.runtime import Runtime
from agent.runtime.scope import shim_cgroups_may_exist
from agent.runtime.state import StateStore


def _stopped_state(cid: str, shim_pid: int, exit_code: int | None) -> dict[str, object]:
    return {
        "ociVersion": "1.0.2",
        "id": cid,
        "status": "stopped",
        "pid": 0,
        "shim_pid": shim_pid,
        "bundle": "/nonexistent",
        "exit_code": exit_code,
    }


@pytest.fixture
def lingering_shim() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing in for a shim that is still on its way out."""
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def test_delete_of_a_recorded_exit_does_not_wait_for_the_shim(
    tmp_path: Path, lingering_shim: subprocess.Popen[bytes]
) -> None:
    cid = "recorded-exit"
    if shim_cgroups_may_exist(cid):
        pytest.skip("a shims' slice exists on this host: delete must wait for the shim")
    store = StateStore(tmp_path)
    store.make_dir(cid)
    store.write(cid, _stopped_state(cid, lingering_shim.pid, exit_code=0))
    started = time.monotonic()
    Runtime(tmp_path).delete(cid)
    assert time.monotonic() - started < 1.0  # the shim wait times out only after 2 s
    assert not (tmp_path / cid).exists()
    assert lingering_shim.poll() is None


def test_delete_without_a_recorded_exit_waits_for_the_shim(
    tmp_path: Path, lingering_shim: subprocess.Popen[bytes]
) -> None:
    """No exit code recorded (the shim was killed, or has not recorded yet): it may still
    move into its scope, so delete waits for it (up to 2 s) before looking for one."""
    cid = "unrecorded-exit"
    store = StateStore(tmp_path)
    store.make_dir(cid)
    store.write(cid, _stopped_state(cid, lingering_shim.pid, exit_code=None))
    started = time.monotonic()
    Runtime(tmp_path).delete(cid)
    assert time.monotonic() - started >= 1.9
    assert not (tmp_path / cid).exists()
