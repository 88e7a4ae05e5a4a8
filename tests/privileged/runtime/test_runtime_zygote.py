"""The zygote's spare shim: forked and detached ahead of a create, it becomes that container's
shim; a spare that died meanwhile costs nothing but the usual fork."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import BundleFactory

from agent.runtime.runtime import Runtime
from agent.runtime.zygote import Zygote

pytestmark = pytest.mark.privileged


@pytest.fixture
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    z.ensure_started()
    yield z
    z.close()


def spare_of(zygote: Zygote, timeout: float = 5.0) -> int:
    """The zygote's one child that is not a shim yet (it forks it once idle)."""
    assert zygote.pid is not None
    children = Path(f"/proc/{zygote.pid}/task/{zygote.pid}/children")
    deadline = time.monotonic() + timeout
    while not children.read_text().split():
        assert time.monotonic() < deadline, "the zygote forked no spare shim"
        time.sleep(0.01)
    (pid,) = (int(p) for p in children.read_text().split())
    return pid


def runs_to_a_clean_exit(runtime: Runtime, cid: str) -> None:
    runtime.start(cid)
    assert runtime.wait(cid, timeout=10) == 0
    runtime.delete(cid)


def test_a_create_takes_the_spare_forked_ahead_of_it(
    zygote: Zygote, runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    spare = spare_of(zygote)
    state = zygote.create(runtime.store.root, cid, make_bundle(["/bin/true"]))
    assert state["status"] == "created"
    assert runtime.raw_state(cid)["shim_pid"] == spare
    runs_to_a_clean_exit(runtime, cid)


def test_a_spare_killed_before_the_create_falls_back_to_a_fork(
    zygote: Zygote, runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    spare = spare_of(zygote)
    os.kill(spare, signal.SIGKILL)
    time.sleep(0.05)
    zygote.create(runtime.store.root, cid, make_bundle(["/bin/true"]))
    assert runtime.raw_state(cid)["shim_pid"] != spare
    runs_to_a_clean_exit(runtime, cid)


def test_a_bad_config_through_the_spare_leaves_nothing(
    zygote: Zygote, runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    from agent.runtime.errors import ConfigError

    spare_of(zygote)
    with pytest.raises(ConfigError) as failure:
        zygote.create(runtime.store.root, cid, make_bundle(["/bin/true"], hostname=7))
    assert failure.value.field == "hostname"
    assert runtime.store.ids() == []
    assert not runtime.store.dir(cid).exists()
