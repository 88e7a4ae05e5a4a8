"""The agent's container service: what the Celery worker calls for container commands.

It turns a protocol ``ContainerSpec`` into a bundle under ``state_dir/<id>/`` (config.json, an
empty rootfs mount point, the overlay upper/work dirs or a host container's private dirs) and
drives the OCI runtime. Creating goes through the zygote (the agent never forks itself); start,
stop, kill and reads need no fork. Everything is idempotent, and the state lives on disk
(``spec.json`` here, ``state.json`` written by each container's shim), so after an agent restart
``list()`` finds the same containers, with exit codes recorded while the agent was down.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.protocol.containers import ContainerSpec, ContainerStats, ContainerStatus
from agent.runtime import selinux
from agent.runtime.cgroups import detect_driver
from agent.runtime.errors import ContainerNotFound, RuntimeFailure
from agent.runtime.runtime import Runtime
from agent.runtime.spec import SpecOptions, prepare_host_rootfs, to_oci
from agent.runtime.state import LOG, proc_start_time, write_atomic
from agent.runtime.zygote import Zygote

logger = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
HISTORY_LOG = "history.log"  # output of earlier runs, kept when a stopped container restarts
_STATE_MAP = {"created": "created", "running": "running", "stopped": "exited"}


class ContainerService:
    """Containers of this host. ``state_dir`` holds bundles and specs (persistent);
    ``runtime_root`` is the runtime's ``--root``; ``options`` are this host's spec choices."""

    def __init__(
        self,
        state_dir: str | Path,
        runtime_root: str | Path,
        *,
        options: SpecOptions | None = None,
        use_zygote: bool = True,
        before_start: Callable[[ContainerSpec, int], None] | None = None,
        netns_for: Callable[[ContainerSpec], str | None] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        # Called with the spec and the created process's host pid before every start (the
        # network is attached here: the namespace exists, the user process has not run).
        self.before_start = before_start
        # Called before every runtime create: the path of the network namespace the container
        # joins, made ready (pinned, so processes the shim restarts keep the network), or None.
        self.netns_for = netns_for
        self.runtime = Runtime(runtime_root)
        self.options = options or SpecOptions(cgroup_driver=detect_driver())
        # sVirt: one MCS category pair per container on this host, persisted, released on
        # remove. Where SELinux is off the labels are still allocated, recorded and reported.
        self.mcs = selinux.MCSAllocator(self.state_dir / "mcs.json")
        self.zygote = Zygote() if use_zygote else None

    # --- lifecycle ----------------------------------------------------------------------
    def create(
        self,
        spec: ContainerSpec,
        rootfs_layers: list[Path] | None = None,
        *,
        preserve_fds: tuple[int, ...] = (),
    ) -> ContainerStatus:
        """Write the bundle and create the container (not started). Creating an id that
        exists returns its status. ``preserve_fds`` become the process's fds 3.. ."""
        spec.validate()
        if (self._dir(spec.id) / SPEC_FILE).exists():
            return self.status(spec.id)
        with contextlib.ExitStack() as undo:
            cdir = self._dir(spec.id)
            cdir.mkdir(parents=True)
            undo.callback(shutil.rmtree, cdir, True)
            self._write_bundle(spec, rootfs_layers or [])
            write_atomic(cdir / SPEC_FILE, json.dumps(spec.to_dict()))
            self._runtime_create(spec, preserve_fds)
            undo.pop_all()
        logger.info("container %s created", spec.id)
        return self.status(spec.id)

    def _write_bundle(self, spec: ContainerSpec, layers: builtins.list[Path]) -> None:
        cdir = self._dir(spec.id)
        bundle, rootfs = cdir / "bundle", cdir / "rootfs"
        bundle.mkdir()
        rootfs.mkdir()
        extra: dict[str, Any] = {}
        if spec.mode == "host":
            prepare_host_rootfs(rootfs, cdir / "private")
            extra["private_dir"] = str(cdir / "private")
        else:
            for name in ("upper", "work"):
                (cdir / name).mkdir()
            extra.update(
                lower_dirs=tuple(str(p) for p in layers),
                upper_dir=str(cdir / "upper"),
                work_dir=str(cdir / "work"),
            )
        netns = self.netns_for(spec) if self.netns_for is not None else None
        if netns:
            extra["netns_path"] = netns
        level = self.mcs.allocate(spec.id)
        if selinux.selinux_enabled():
            extra["selinux_process_label"] = selinux.process_label(level)
            extra["selinux_mount_label"] = selinux.file_label(level)
        options = _replace(self.options, **extra)
        config = to_oci(spec, root_path=str(rootfs), options=options)
        write_atomic(bundle / "config.json", json.dumps(config, indent=1))

    def _runtime_create(self, spec: ContainerSpec, preserve_fds: tuple[int, ...] = ()) -> None:
        container_id = spec.id
        if self.netns_for is not None:
            self.netns_for(spec)  # the pinned namespace the config joins (again after a reboot)
        bundle = self._dir(container_id) / "bundle"
        if self.zygote is not None:
            self.zygote.create(self.runtime.store.root, container_id, bundle, preserve_fds)
        else:
            self.runtime.create(container_id, bundle, preserve_fds=preserve_fds)

    def start(self, container_id: str, *, preserve_fds: tuple[int, ...] = ()) -> ContainerStatus:
        """Start a created container, or run a stopped one again (created anew, with
        ``preserve_fds``). Running: no-op."""
        spec = self._spec(container_id)
        state = self._runtime_state(container_id)
        if state is None or state["status"] == "stopped":
            if state is not None:
                self._archive_and_delete(container_id)
            self._runtime_create(spec, preserve_fds)
            state = self._runtime_state(container_id)
        if state is not None and state["status"] == "created":
            if self.before_start is not None:
                self.before_start(spec, int(state["pid"]))
            self.runtime.start(container_id)
        return self.status(container_id)

    def prepare(self, container_id: str, *, preserve_fds: tuple[int, ...] = ()) -> ContainerStatus:
        """Create the runtime container again from its bundle (not started), e.g. holding new
        sockets; a created or running one is left as it is."""
        spec = self._spec(container_id)
        state = self._runtime_state(container_id)
        if state is None or state["status"] == "stopped":
            if state is not None:
                self._archive_and_delete(container_id)
            self._runtime_create(spec, preserve_fds)
        return self.status(container_id)

    def stop(self, container_id: str, timeout: float | None = None) -> ContainerStatus:
        """The spec's stop signal, then SIGKILL after ``timeout`` (default: the spec's).
        Stopping a stopped container is fine. The restart policy does not bring it back."""
        spec = self._spec(container_id)
        state = self._runtime_state(container_id)
        if state is None or state["status"] == "stopped":
            return self.status(container_id)
        self.runtime.request_stop(container_id)
        grace = spec.stop_timeout if timeout is None else timeout
        sig = spec.stop_signal if state["status"] == "running" else "SIGKILL"
        with contextlib.suppress(RuntimeFailure):
            self.runtime.kill(container_id, sig)
        if self.runtime.wait(container_id, timeout=grace) is None:
            with contextlib.suppress(RuntimeFailure):
                self.runtime.kill(container_id, signal.SIGKILL)
            self.runtime.wait(container_id, timeout=10)
        return self.status(container_id)

    def restart(self, container_id: str) -> ContainerStatus:
        self.stop(container_id)
        return self.start(container_id)

    def remove(self, container_id: str, force: bool = False) -> None:
        """Delete the container and its files. A missing container is fine."""
        if not self._dir(container_id).exists():
            return
        state = self._runtime_state(container_id)
        if state is not None and state["status"] != "stopped" and not force:
            raise RuntimeFailure("remove", f"container {container_id} is {state['status']}")
        with contextlib.suppress(ContainerNotFound):
            self.runtime.delete(container_id, force=True)
        shutil.rmtree(self._dir(container_id), ignore_errors=True)
        self.mcs.release(container_id)
        logger.info("container %s removed", container_id)

    # --- reads --------------------------------------------------------------------------
    def exists(self, container_id: str) -> bool:
        return (self._dir(container_id) / SPEC_FILE).exists()

    def spec(self, container_id: str) -> ContainerSpec:
        """The spec the container was created from."""
        return self._spec(container_id)

    def status(self, container_id: str) -> ContainerStatus:
        self._spec(container_id)
        raw = self._runtime_state(container_id)
        if raw is None:
            return ContainerStatus(id=container_id, state="unknown", detail="no runtime state")
        state = _STATE_MAP.get(raw["status"], "unknown")
        return ContainerStatus(
            id=container_id,
            state=state,  # type: ignore[arg-type]
            pid=raw.get("pid") if state in ("created", "running") else None,
            exit_code=raw.get("exit_code") if state == "exited" else None,
            started_at=raw.get("started_at"),
            finished_at=raw.get("finished_at") if state == "exited" else None,
            restart_count=int(raw.get("restart_count") or 0),
            oom_killed=bool(raw.get("oom_killed")),
            selinux_label=self._label(container_id),
        )

    def list(self) -> builtins.list[ContainerStatus]:
        """Every container with a spec here, found again from disk after an agent restart."""
        if not self.state_dir.is_dir():
            return []
        out = []
        for path in sorted(self.state_dir.iterdir()):
            if (path / SPEC_FILE).exists():
                with contextlib.suppress(ContainerNotFound):
                    out.append(self.status(path.name))
        return out

    def logs(
        self, container_id: str, tail: int | None = None, since: float | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Log entries ``{"time", "ts", "stream", "log"}``, oldest first; ``since`` is a Unix
        time, ``tail`` keeps the last N."""
        self._spec(container_id)
        run_dir = self.runtime.store.dir(container_id)
        files = [self._dir(container_id) / HISTORY_LOG, run_dir / f"{LOG}.1", run_dir / LOG]
        entries = []
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                for line in path.read_text().splitlines():
                    with contextlib.suppress(ValueError):
                        entry = json.loads(line)
                        if since is None or entry.get("ts", 0) >= since:
                            entries.append(entry)
        return entries[-tail:] if tail else entries

    def stats(self, container_id: str) -> ContainerStats:
        self._spec(container_id)
        raw = self._runtime_state(container_id)
        if raw is None or not raw.get("cgroups_path"):
            return ContainerStats(id=container_id, timestamp=time.time())
        from agent.runtime.cgroups import new_manager

        st = new_manager(raw["cgroups_path"]).stats()
        return ContainerStats(
            id=container_id,
            cpu_usage_ns=st.cpu_usage_ns,
            memory_current=st.memory_current,
            memory_peak=st.memory_peak,
            memory_limit=st.memory_limit,
            pids_current=st.pids_current,
            oom_events=st.oom_events,
            timestamp=time.time(),
        )

    def close(self) -> None:
        """Stop the zygote helper (containers keep running)."""
        if self.zygote is not None:
            self.zygote.close()

    # --- helpers ------------------------------------------------------------------------
    def _label(self, container_id: str) -> str | None:
        """The container's process label: enforced where SELinux runs, recorded elsewhere."""
        level = self.mcs.allocations().get(container_id)
        return selinux.process_label(level) if level else None

    def _dir(self, container_id: str) -> Path:
        self.runtime.store.dir(container_id)  # validates the id
        return self.state_dir / container_id

    def _spec(self, container_id: str) -> ContainerSpec:
        try:
            raw = json.loads((self._dir(container_id) / SPEC_FILE).read_text())
        except FileNotFoundError:
            raise ContainerNotFound(container_id) from None
        return ContainerSpec.from_dict(raw)

    def _runtime_state(self, container_id: str) -> dict[str, Any] | None:
        """The runtime state; when the process is gone but its shim is still writing the
        exit down, wait (briefly) for the exit code rather than report exited without one."""
        deadline = time.monotonic() + 2.0
        while True:
            try:
                state = self.runtime.raw_state(container_id)
            except ContainerNotFound:
                return None
            settled = state["status"] != "stopped" or state.get("exit_code") is not None
            shim = int(state.get("shim_pid") or 0)
            if settled or not shim or proc_start_time(shim) is None:
                return state
            if time.monotonic() > deadline:
                return state
            time.sleep(0.005)

    def _archive_and_delete(self, container_id: str) -> None:
        log = self.runtime.store.dir(container_id) / LOG
        with (
            contextlib.suppress(FileNotFoundError),
            open(self._dir(container_id) / HISTORY_LOG, "a") as out,
        ):
            out.write(log.read_text())
        self.runtime.delete(container_id, force=True)


def _replace(options: SpecOptions, **changes: Any) -> SpecOptions:
    import dataclasses

    return dataclasses.replace(options, **changes)
