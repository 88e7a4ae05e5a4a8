"""The native per-container monitor (agent/runtime/native/monitor.c): what it costs, that it
writes exactly the Python monitor's log and exit record, and the fallback to the Python loop."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from runtime_helpers import BundleFactory

from agent.runtime import shim as shim_mod
from agent.runtime.runtime import Runtime
from agent.runtime.state import EXIT_FILE, StateStore

pytestmark = pytest.mark.privileged

REPO = Path(__file__).resolve().parents[3]
needs_native = pytest.mark.skipif(
    shim_mod.native_monitor() is None,
    reason="the native monitor is not built (make agent/runtime/native/corral-monitor)",
)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@needs_native
def test_a_running_container_is_watched_by_the_native_monitor(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    runtime.create(cid, make_bundle(["/bin/sh", "-c", "echo up; sleep 30"]))
    runtime.start(cid)
    state = runtime.raw_state(cid)
    assert state["monitor"] == "native"
    shim = int(state["shim_pid"])
    # The shim reports the container created, then becomes the monitor (an execve).
    native = os.path.realpath(shim_mod.NATIVE_MONITOR)
    deadline = time.monotonic() + 5
    while os.readlink(f"/proc/{shim}/exe") != native and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.readlink(f"/proc/{shim}/exe") == native
    # The container is still its child (execve kept it), and no interpreter is left:
    # conmon here is ~1.7 MiB resident; the Python shim was ~14.6 MiB.
    assert Path(f"/proc/{state['pid']}/stat").read_text().split(") ")[1].split()[1] == str(shim)
    assert status_kib(shim, "VmRSS") < 1536
    runtime.kill(cid, "KILL")
    assert runtime.wait(cid, timeout=10) == 137
    assert runtime.raw_state(cid)["status"] == "stopped"


def test_an_exit_record_is_folded_into_the_state_only_while_it_runs(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.make_dir("c1")
    store.write("c1", {"id": "c1", "status": "running", "pid": 1, "exit_code": None})
    assert store.read("c1")["status"] == "running"
    (tmp_path / "c1" / EXIT_FILE).write_text('{"exit_code": 3, "finished_at": 5.5}')
    state = store.read("c1")
    assert (state["status"], state["exit_code"], state["finished_at"]) == ("stopped", 3, 5.5)
    assert state["oom_killed"] is False
    # An exit the state already holds (the Python monitor's, or one folded and written back
    # by an update) wins over an older record.
    store.write("c1", {"id": "c1", "status": "stopped", "exit_code": 0, "finished_at": 9.0})
    assert store.read("c1")["exit_code"] == 0
    # A record that is not one is ignored, never an error for every reader.
    store.write("c1", {"id": "c1", "status": "running", "exit_code": None})
    (tmp_path / "c1" / EXIT_FILE).write_text('{"exit_code": "x"}')
    assert store.read("c1")["status"] == "running"


TRICKY = [
    b"hello\n",
    b"bad \xff\xfe utf8 \xe2\x82 end\n",
    b'emoji \xf0\x9f\x98\x80 "q" \\ \t\x01\x7f\x1b caf\xc3\xa9\n',
    b"\xed\xa0\x80 surrogate \xf4\x90\x80\x80 \xc0\xaf\xe0\x80\xaf\n",
    b"x" * 20000,
    b"\n",
    b"tail without newline",
]


@needs_native
def test_the_log_is_byte_for_byte_what_the_python_monitor_writes(tmp_path: Path) -> None:
    """The same chunks through Python's LogWriter and through the native monitor (its child
    writes them into the pipes): equal files but for the clock, including invalid UTF-8,
    non-BMP text, control characters, a 20 KiB line flushed unended, and the last partials."""
    reference = shim_mod.LogWriter(tmp_path / "py.log", 10**9)
    for chunk in TRICKY[:-1]:
        reference.write("stdout", chunk)
    reference.write("stderr", b"err partial")
    reference.write("stdout", TRICKY[-1])
    reference.close()
    driver = textwrap.dedent(
        f"""
        import os, sys, time
        chunks = {TRICKY!r}
        out_r, out_w = os.pipe(); err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            for chunk in chunks[:-1]:
                os.write(out_w, chunk); time.sleep(0.01)
            os.write(err_w, b"err partial"); time.sleep(0.01)
            os.write(out_w, chunks[-1]); time.sleep(0.01)
            os._exit(3)
        for fd in (out_w, err_w):
            os.close(fd)
        for fd in (out_r, err_r):
            os.set_inheritable(fd, True)
        os.execv(sys.argv[1], [sys.argv[1], "--pid", str(pid), "--stdout-fd", str(out_r),
                 "--stderr-fd", str(err_r), "--log", sys.argv[2], "--exit-file", sys.argv[3]])
        """
    )
    log, exit_file = tmp_path / "native.log", tmp_path / "exit.json"
    monitor = str(shim_mod.native_monitor())
    subprocess.run([sys.executable, "-c", driver, monitor, str(log), str(exit_file)],
                   check=True, timeout=20)  # fmt: skip
    clock = re.compile(r'"time": "[^"]+", "ts": [0-9.e+]+')
    native = [clock.sub("", line) for line in log.read_text().splitlines()]
    python = [clock.sub("", line) for line in (tmp_path / "py.log").read_text().splitlines()]
    assert native == python and len(native) == 8
    assert json.loads(exit_file.read_text())["exit_code"] == 3
    first = json.loads(log.read_text().splitlines()[0])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["time"])
    assert abs(first["ts"] - time.time()) < 60


def test_python_monitor_when_asked_or_when_the_binary_cannot_run(
    runtime: Runtime,
    make_bundle: BundleFactory,
    cid: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORRAL_MONITOR", "python")
    runtime.create(cid, make_bundle(["/bin/sh", "-c", "echo from-python; exit 4"]))
    runtime.start(cid)
    assert runtime.wait(cid, timeout=10) == 4
    assert runtime.raw_state(cid)["monitor"] == "python"
    assert not (runtime.store.dir(cid) / EXIT_FILE).exists()
    runtime.delete(cid)

    broken = tmp_path / "not-a-binary"
    broken.write_bytes(b"\x00garbage")
    broken.chmod(0o755)
    monkeypatch.setenv("CORRAL_MONITOR", str(broken))
    runtime.create(cid, make_bundle(["/bin/sh", "-c", "echo still-logged; exit 5"]))
    runtime.start(cid)
    assert runtime.wait(cid, timeout=10) == 5
    state = runtime.raw_state(cid)
    assert state["monitor"] == "python"
    assert any("native monitor" in w for w in state["warnings"])
    assert "still-logged" in (runtime.store.dir(cid) / "ctr.log").read_text()


@needs_native
def test_restart_policies_run_through_the_native_monitor_and_a_python_resume(
    runtime: Runtime, make_bundle: BundleFactory, cid: str
) -> None:
    """on-failure:2: three runs, each watched by the native monitor; each exit execs the
    Python shim (resume), which restarts and execs the monitor again; a stop ends it."""
    bundle = make_bundle(
        ["/bin/sh", "-c", "echo run; sleep 0.3; exit 3"],
        annotations={"run.corral.restart": "on-failure:2"},
    )
    runtime.create(cid, bundle)
    runtime.start(cid)
    native = os.path.realpath(shim_mod.NATIVE_MONITOR)
    shim = int(runtime.raw_state(cid)["shim_pid"])
    seen_counts = set()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        state = runtime.raw_state(cid)
        if state.get("restart_count") == 2 and state.get("exit_code") == 3:
            break
        if state["status"] == "running" and proc_exe(shim) == native:
            seen_counts.add(state.get("restart_count"))
        time.sleep(0.01)
    assert state["restart_count"] == 2 and state["status"] == "stopped"
    assert seen_counts >= {1, 2}, seen_counts  # the restarted runs had the native monitor
    log = (runtime.store.dir(cid) / "ctr.log").read_text()
    assert log.count('"run\\n"') == 3
    # The last exit went through the resume too (it may restart): it folded the record into
    # state.json for good and found no retry left.
    deadline = time.monotonic() + 5
    while proc_exe(shim) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not proc_exe(shim)
    assert not (runtime.store.dir(cid) / EXIT_FILE).exists()
    on_disk = json.loads((runtime.store.dir(cid) / "state.json").read_text())
    assert (on_disk["status"], on_disk["exit_code"]) == ("stopped", 3)

    always = f"{cid}-a"
    runtime.create(
        always, make_bundle(["/bin/sleep", "0.2"], annotations={"run.corral.restart": "always"})
    )
    try:
        runtime.start(always)
        deadline = time.monotonic() + 10
        while runtime.raw_state(always).get("restart_count", 0) < 1:
            assert time.monotonic() < deadline, "never restarted"
            time.sleep(0.02)
        runtime.request_stop(always)
        runtime.kill(always, "KILL")
        assert runtime.wait(always, timeout=10) == 137
        count = runtime.raw_state(always)["restart_count"]
        time.sleep(0.6)  # a restart would have come by now (backoff 0.1-0.2 s)
        assert runtime.raw_state(always)["restart_count"] == count
        assert runtime.raw_state(always)["status"] == "stopped"
    finally:
        runtime.delete(always, force=True)


def proc_exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""
