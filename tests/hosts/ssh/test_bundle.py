"""The agent bundle: agent/ only (never the control plane), and a wheelhouse for the target's
exact Python, including dependencies whose markers only the target's version satisfies."""

from __future__ import annotations

import platform
import tarfile
from typing import Any

import pytest

from hosts.ssh import bundle

pytestmark = [pytest.mark.slow]  # pip download on first use (then cached under var/)


def names(path: Any) -> set[str]:
    return {w.name.split("-")[0].lower() for w in path.glob("*.whl")}


def test_wheelhouse_follows_markers_of_the_targets_python_version(settings: Any) -> None:
    # redis needs async-timeout only below Python 3.11.3; pip alone would judge by our Python.
    old = bundle.wheelhouse(python="3.11.2", arch="x86_64", glibc=(2, 36))
    new = bundle.wheelhouse(python="3.11.9", arch="x86_64", glibc=(2, 36))
    assert "async_timeout" in names(old)
    assert "async_timeout" not in names(new)
    assert {"celery", "kombu", "redis", "cryptography", "packaging"} <= names(new)
    assert not {"django", "djangorestframework", "paramiko", "psycopg"} & names(new)


def test_bundle_holds_the_agent_and_its_wheels_but_no_control_plane() -> None:
    built = bundle.build(python="3.11.2", arch="x86_64", glibc=(2, 36))
    with tarfile.open(built.path) as tar:
        members = tar.getnames()
        version = tar.extractfile("VERSION").read().decode().strip()  # type: ignore[union-attr]
    tops = {m.split("/")[0] for m in members}
    assert tops == {"lib", "wheelhouse", "bin", "share", "requirements.txt", "VERSION"}
    assert {m.split("/")[1] for m in members if m.startswith("lib/")} == {"agent"}
    assert "lib/agent/__main__.py" in members and "lib/agent/protocol/envelope.py" in members
    assert not [m for m in members if "__pycache__" in m or m.endswith(".pyc")]
    assert version == built.version and built.version.startswith("0.")
    assert bundle.build(python="3.11.2", arch="x86_64", glibc=(2, 36)) == built  # cached


def test_unknown_architecture_is_refused() -> None:
    from hosts.ssh.errors import SSHError

    with pytest.raises(SSHError, match="unsupported architecture 'sparc'"):
        bundle.wheelhouse(python="3.11.2", arch="sparc", glibc=(2, 36))


def test_bundle_carries_the_native_monitor_executable_for_this_architecture() -> None:
    if not bundle.NATIVE_MONITOR.exists():
        pytest.skip("the native monitor is not built (make agent/runtime/native/corral-monitor)")
    built = bundle.build(python="3.11.2", arch=platform.machine(), glibc=(2, 36))
    with tarfile.open(built.path) as tar:
        member = tar.getmember("lib/agent/runtime/native/corral-monitor")
        source = tar.getmember("lib/agent/runtime/native/monitor.c")
    assert member.mode == 0o755 and member.size == bundle.NATIVE_MONITOR.stat().st_size
    assert source.mode == 0o644
