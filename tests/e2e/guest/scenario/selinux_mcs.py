"""sVirt-style isolation: two containers in ``container_t`` with distinct MCS category pairs,
their files ``container_file_t`` with the same categories, and neither can read the other's.

``isolation_with_plain_setexec`` proves the guest and policy with nothing but the kernel
interface (``/proc/self/attr/exec``); ``isolation_with_agent_selinux`` does the same through
the agent's own ``agent.runtime.selinux`` (allocator, labels, exec label).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scenario.common import (
    BUSYBOX,
    STATE_DIR,
    Context,
    file_label,
    import_or_skip,
    read_label,
    relabel_tree,
)

PROCESS_TYPE = "system_u:system_r:container_t"
FILE_TYPE = "system_u:object_r:container_file_t"


def _two_levels() -> tuple[str, str]:
    """Two distinct random category pairs, ``s0:cX,cY`` with X < Y."""
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < 2:
        a, b = secrets.randbelow(1024), secrets.randbelow(1024)
        if a != b:
            pairs.add((min(a, b), max(a, b)))
    first, second = sorted(pairs)
    return f"s0:c{first[0]},c{first[1]}", f"s0:c{second[0]},c{second[1]}"


def _container_dir(
    name: str, label: str, labeller: Callable[[Path, str], object] = relabel_tree
) -> Path:
    """A container's private tree: its own busybox (the entrypoint) and a secret file."""
    root = STATE_DIR / "mcs" / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "busybox")
    (root / "secret").write_text(f"secret-of-{name}\n")
    labeller(root, label)
    return root


def _exec_label_writer(label: str) -> Callable[[], None]:
    def write() -> None:
        # O_WRONLY only: open(..., "w") adds O_CREAT, which SELinux checks (and denies).
        fd = os.open("/proc/self/attr/exec", os.O_WRONLY)
        try:
            os.write(fd, label.encode())
        finally:
            os.close(fd)

    return write


def _spawn(argv: list[str], before_exec: Callable[[], None]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        preexec_fn=before_exec,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _prove_isolation(
    ctx: Context,
    containers: dict[str, tuple[str, Path]],
    exec_setter: Callable[[str], Callable[[], None]],
) -> str:
    """``containers``: name -> (process label, private dir). Runs a long-lived process in each
    (labels read from /proc/<pid>/attr/current), then each reads its own and the other's file."""
    (a, (label_a, _)), (b, (label_b, _)) = containers.items()
    for name, (_, root) in containers.items():
        ctx.log(f"{name} file {root / 'secret'} -> {file_label(root / 'secret')}")
    sleepers = {
        name: _spawn([str(root / "busybox"), "sleep", "60"], exec_setter(label))
        for name, (label, root) in containers.items()
    }
    try:
        seen = {}
        for name, proc in sleepers.items():
            seen[name] = read_label(proc.pid)
            ctx.log(f"{name} pid {proc.pid} /proc/{proc.pid}/attr/current = {seen[name]}")
        assert seen[a] == label_a, f"{a} runs as {seen[a]}, wanted {label_a}"
        assert seen[b] == label_b, f"{b} runs as {seen[b]}, wanted {label_b}"
    finally:
        for proc in sleepers.values():
            proc.kill()
            proc.wait()
    results = {}
    for who, (label, root) in containers.items():
        for whose, (_, target) in containers.items():
            argv = [str(root / "busybox"), "cat", str(target / "secret")]
            proc = _spawn(argv, exec_setter(label))
            out, _ = proc.communicate(timeout=30)
            results[(who, whose)] = (proc.returncode, out.strip())
            ctx.log(f"{who} reads {whose}'s file: rc={proc.returncode} {out.strip()!r}")
    for who in (a, b):
        rc, out = results[(who, who)]
        assert rc == 0 and out == f"secret-of-{who}", f"{who} cannot read its own file: {out!r}"
    for who, whose in ((a, b), (b, a)):
        rc, out = results[(who, whose)]
        # busybox prints strerror(EACCES): the MCS constraint, not a missing file.
        assert rc != 0 and "Permission denied" in out, f"{who} read {whose}'s file: {out!r}"
    return (
        f"{a}={label_a} {b}={label_b}; own files readable, "
        f"cross reads denied with EACCES ({results[(a, b)][1]!r})"
    )


def isolation_with_plain_setexec(ctx: Context) -> str:
    level_a, level_b = _two_levels()
    containers = {
        name: (f"{PROCESS_TYPE}:{level}", _container_dir(name, f"{FILE_TYPE}:{level}"))
        for name, level in (("ctr-a", level_a), ("ctr-b", level_b))
    }
    return _prove_isolation(ctx, containers, _exec_label_writer)


def isolation_with_agent_selinux(ctx: Context) -> str:
    """The same proof through the agent's own SELinux module: levels from its MCSAllocator,
    labels from process_label/file_label, files by label_path, exec by set_exec_label."""
    se: Any = import_or_skip("agent.runtime.selinux")
    mode = se.selinux_mode()
    ctx.log(f"agent.runtime.selinux.selinux_mode() = {mode}")
    assert mode == "enforcing", f"the agent sees SELinux {mode}"
    state = STATE_DIR / "mcs-agent" / "levels.json"
    shutil.rmtree(state.parent, ignore_errors=True)
    alloc = se.MCSAllocator(state)
    names = ("agent-ctr-a", "agent-ctr-b")
    levels = {name: alloc.allocate(name) for name in names}
    ctx.log(f"MCSAllocator levels {levels}, stored in {state}")
    assert levels[names[0]] != levels[names[1]], f"one pair handed out twice: {levels}"
    assert alloc.allocate(names[0]) == levels[names[0]], "allocate is not stable per container"

    def labeller(root: Path, label: str) -> object:
        return se.label_path(root, label)

    def exec_setter(label: str) -> Callable[[], None]:
        return lambda: se.set_exec_label(label)

    containers = {
        name: (
            se.process_label(level),
            _container_dir(name, se.file_label(level), labeller),
        )
        for name, level in levels.items()
    }
    detail = _prove_isolation(ctx, containers, exec_setter)
    for name in names:
        assert alloc.release(name), f"release({name}) found no allocation"
    assert alloc.allocations() == {}, f"left allocated: {alloc.allocations()}"
    return f"agent.runtime.selinux: {detail}; both pairs released"
