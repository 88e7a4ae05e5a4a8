"""OCI ``process.terminal`` with ``--console-socket``: the caller receives the pty master over
its unix socket (SCM_RIGHTS), as with runc and crun, and drives a shell in the container."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import BundleFactory

from agent.runtime.errors import RuntimeFailure
from agent.runtime.runtime import Runtime

pytestmark = pytest.mark.privileged

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A listening console socket (what podman or containerd would hold)."""
    path = tmp_path / "console.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        listener.settimeout(10)
        yield path, listener


def receive_master(listener: socket.socket) -> tuple[bytes, int]:
    conn, _ = listener.accept()
    with conn:
        name, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    assert len(fds) == 1, "no file descriptor came with the console message"
    return name, fds[0]


def read_until(fd: int, marker: bytes, timeout: float = 10.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{marker!r} never appeared on the terminal; got {seen!r}"
        if select.select([fd], [], [], remaining)[0]:
            seen += os.read(fd, 4096)
    return seen


def wait_in_foreground(parent: int, name: str, timeout: float = 10.0) -> None:
    """Until a child ``name`` of ``parent`` is its terminal's foreground process group (a ^C
    sent before then would reach the shell, not the child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            ppid, pgrp, tpgid = int(fields[1]), int(fields[2]), int(fields[5])
            if comm == name and ppid == parent and pgrp == tpgid:
                return
        time.sleep(0.01)
    raise AssertionError(f"no {name} in the foreground under {parent} after {timeout} s")


def test_the_cli_sends_the_pty_master_and_a_shell_answers_on_it(
    runtime: Runtime,
    make_bundle: BundleFactory,
    cid: str,
    console: tuple[Path, socket.socket],
    tmp_path: Path,
) -> None:
    path, listener = console
    bundle = make_bundle(["/bin/sh"], process={"terminal": True})
    rel = os.path.relpath(path, tmp_path)  # the CLI resolves it against its cwd
    cli = [sys.executable, "-m", "agent.runtime", "--root", str(runtime.store.root)]
    subprocess.run(
        [*cli, "create", cid, "--bundle", str(bundle), "--console-socket", rel],
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    name, master = receive_master(listener)
    try:
        assert name == b"/dev/ptmx"
        runtime.start(cid)
        os.write(master, b"echo answer-$((6 * 7))\n")
        assert b"answer-42" in read_until(master, b"answer-42\r\n")
        # The shell's stdio is a terminal of the container's own devpts.
        os.write(master, b'echo "t=$(tty) e=$(readlink /proc/$$/fd/2)"; exit 3\n')
        assert b"t=/dev/pts/0 e=/dev/pts/0" in read_until(master, b"t=/dev/")
        assert runtime.wait(cid, timeout=10) == 3
    finally:
        os.close(master)


def test_ctrl_c_on_the_terminal_interrupts_the_foreground_process(
    runtime: Runtime,
    make_bundle: BundleFactory,
    cid: str,
    console: tuple[Path, socket.socket],
) -> None:
    path, listener = console
    bundle = make_bundle(["/bin/sh"], process={"terminal": True})
    runtime.create(cid, bundle, console_socket=str(path))
    _, master = receive_master(listener)
    try:
        runtime.start(cid)
        os.write(master, b"sleep 30\n")
        wait_in_foreground(int(runtime.raw_state(cid)["pid"]), "sleep")
        os.write(master, b"\x03")  # ^C: SIGINT to the terminal's foreground process group
        read_until(master, b"^C")
        os.write(master, b"echo status=$?; exit\n")  # 128 + SIGINT: the sleep was interrupted
        assert b"status=130" in read_until(master, b"status=1")
        assert runtime.wait(cid, timeout=10) == 0
    finally:
        os.close(master)


def test_a_terminal_without_console_socket_is_refused_before_touching_the_host(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    bundle = make_bundle(["/bin/sh"], process={"terminal": True})
    with pytest.raises(RuntimeFailure) as failure:
        runtime.create(cid, bundle)
    assert failure.value.step == "console-socket"
    assert runtime.store.ids() == []


def test_a_console_socket_nobody_listens_on_fails_create_and_leaves_nothing(
    runtime: Runtime, make_bundle: BundleFactory, cid: str, tmp_path: Path
) -> None:
    bundle = make_bundle(["/bin/sh"], process={"terminal": True})
    with pytest.raises(RuntimeFailure) as failure:
        runtime.create(cid, bundle, console_socket=str(tmp_path / "nobody.sock"))
    assert failure.value.step == "console-socket"
    assert runtime.store.ids() == []
    assert not runtime.store.dir(cid).exists()
