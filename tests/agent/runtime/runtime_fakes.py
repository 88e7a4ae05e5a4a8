"""A recording fake of the runtime's OS seam for unit tests that must not need root."""

from __future__ import annotations

from typing import Any

from agent.runtime.linux import Linux


class RecordingLinux(Linux):
    """Records every privileged call as ``(name, args...)`` and does nothing, except
    ``openat2`` which is real (it needs no privilege) so path resolution is exercised."""

    def __init__(self, fail: dict[str, OSError] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = fail or {}

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise self.fail[name]

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def unshare(self, flags: int) -> None:
        self._record("unshare", flags)

    def setns(self, fd: int, nstype: int) -> None:
        self._record("setns", nstype)

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        self._record("mount", source, target, fstype, flags, data)

    def umount2(self, target: str, flags: int) -> None:
        self._record("umount2", target, flags)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        self._record("pivot_root", new_root, put_old)

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        self._record("prctl", option, arg2, arg3)
        return 0

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        self._record("capset", effective, permitted, inheritable)

    def sethostname(self, name: str) -> None:
        self._record("sethostname", name)

    def seccomp_filter(self, program: bytes) -> None:
        self._record("seccomp_filter", len(program))

    def setgroups(self, gids: list[int]) -> None:
        self._record("setgroups", list(gids))

    def setresgid(self, gid: int) -> None:
        self._record("setresgid", gid)

    def setresuid(self, uid: int) -> None:
        self._record("setresuid", uid)

    def setrlimit(self, name: str, soft: int, hard: int) -> None:
        self._record("setrlimit", name, soft, hard)

    def write_file(self, path: str, data: str) -> None:
        self._record("write_file", path, data)
