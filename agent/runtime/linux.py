"""The one OS seam of the runtime: Linux system calls through ctypes, and the few file and
process operations the start sequence needs.

Everything in ``agent/runtime`` that changes the host calls through a :class:`Linux` object,
so the logic above it can be unit-tested with a recording fake while the real thing is tested
as root in ``tests/privileged/``. Python 3.11 has no ``os.unshare``/``os.setns``, hence ctypes.
Every failure is an ``OSError`` carrying the errno.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource

# Names for type checkers only: importing typing costs milliseconds on every CLI start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

# Namespace clone flags (linux/sched.h).
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000

NAMESPACE_FLAGS: Final[dict[str, int]] = {
    "mount": CLONE_NEWNS,
    "cgroup": CLONE_NEWCGROUP,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET,
}
# Names of the /proc/<pid>/ns/ links for each OCI namespace type.
NAMESPACE_PROC_NAMES: Final[dict[str, str]] = {
    "mount": "mnt",
    "cgroup": "cgroup",
    "uts": "uts",
    "ipc": "ipc",
    "user": "user",
    "pid": "pid",
    "network": "net",
}

# mount(2) flags (linux/mount.h).
MS_RDONLY: Final = 1
MS_NOSUID: Final = 2
MS_NODEV: Final = 4
MS_NOEXEC: Final = 8
MS_SYNCHRONOUS: Final = 16
MS_REMOUNT: Final = 32
MS_MANDLOCK: Final = 64
MS_DIRSYNC: Final = 128
MS_NOSYMFOLLOW: Final = 256
MS_NOATIME: Final = 1024
MS_NODIRATIME: Final = 2048
MS_BIND: Final = 4096
MS_MOVE: Final = 8192
MS_REC: Final = 16384
MS_SILENT: Final = 32768
MS_UNBINDABLE: Final = 1 << 17
MS_PRIVATE: Final = 1 << 18
MS_SLAVE: Final = 1 << 19
MS_SHARED: Final = 1 << 20
MS_RELATIME: Final = 1 << 21
MS_STRICTATIME: Final = 1 << 24
MNT_DETACH: Final = 2

# prctl(2) options (linux/prctl.h).
PR_SET_PDEATHSIG: Final = 1
PR_SET_KEEPCAPS: Final = 8
PR_SET_NAME: Final = 15
PR_SET_SECCOMP: Final = 22
PR_CAPBSET_READ: Final = 23
PR_CAPBSET_DROP: Final = 24
PR_SET_CHILD_SUBREAPER: Final = 36
PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_RAISE: Final = 2
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
SECCOMP_MODE_FILTER: Final = 2

# openat2(2) resolve flags (linux/openat2.h).
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
RESOLVE_IN_ROOT: Final = 0x10

# x86_64 system call numbers for calls glibc 2.36 has no wrapper for.
SYS_PIVOT_ROOT: Final = 155
SYS_CAPGET: Final = 125
SYS_CAPSET: Final = 126
SYS_OPENAT2: Final = 437
SYS_CLONE: Final = 56
# glibc's sigaction() refuses the two real-time signals it keeps for itself (32, 33).
SYS_RT_SIGACTION: Final = 13
SIGCHLD: Final = 17
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522

O_PATH: Final = getattr(os, "O_PATH", 0o10000000)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    """libc, loaded on first use so importing this module stays cheap."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


class Linux:
    """Real system calls. One instance (:data:`LINUX`) is shared; tests pass a fake instead."""

    def unshare(self, flags: int) -> None:
        _check(_lib().unshare(ctypes.c_int(flags)), "unshare")

    def setns(self, fd: int, nstype: int) -> None:
        _check(_lib().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")

    def signal_action(
        self, number: int, action: int | tuple[int, int, int, int]
    ) -> tuple[int, int, int, int]:
        """Set a signal's action with the system call itself (glibc's wrapper refuses 32 and
        33): SIG_DFL (0), SIG_IGN (1), or a whole (handler, flags, restorer, mask) as returned.
        Returns the previous action, whole, so that it can be put back."""
        new = (ctypes.c_ulong * 4)(*((action, 0, 0, 0) if isinstance(action, int) else action))
        old = (ctypes.c_ulong * 4)()
        res = _lib().syscall(
            ctypes.c_long(SYS_RT_SIGACTION), ctypes.c_int(number), new, old, ctypes.c_ulong(8)
        )
        _check(res, "rt_sigaction")
        return (old[0], old[1], old[2], old[3])

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        res = _lib().mount(
            _b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data) if data else None
        )
        _check(res, f"mount {target}")

    def umount2(self, target: str, flags: int) -> None:
        _check(_lib().umount2(_b(target), ctypes.c_int(flags)), f"umount {target}")

    def pivot_root(self, new_root: str, put_old: str) -> None:
        res = _lib().syscall(ctypes.c_long(SYS_PIVOT_ROOT), _b(new_root), _b(put_old))
        _check(res, "pivot_root")

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        args = (ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5))
        return _check(_lib().prctl(ctypes.c_int(option), *args), f"prctl({option})")

    def clone(self, flags: int) -> int:
        """fork(2) into new namespaces (``CLONE_NEW*`` flags): with CLONE_NEWPID the child is
        pid 1 at once, without an intermediate process. CPython's fork hooks run as for
        ``os.fork`` (the GIL is held across the call, as os.fork does). Returns 0 in the child."""
        api = ctypes.pythonapi
        lib = ctypes.PyDLL(None, use_errno=True)
        null = ctypes.c_void_p(0)
        api.PyOS_BeforeFork()
        pid = lib.syscall(
            ctypes.c_long(SYS_CLONE), ctypes.c_ulong(flags | SIGCHLD), null, null, null, null
        )
        if pid == 0:
            api.PyOS_AfterFork_Child()
            return 0
        err = ctypes.get_errno()
        api.PyOS_AfterFork_Parent()
        if pid < 0:
            raise OSError(err, f"clone: {os.strerror(err)}")
        return int(pid)

    def capget(self, pid: int = 0) -> tuple[int, int, int]:
        """(effective, permitted, inheritable) as 64-bit masks."""
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
        data = (_CapData * 2)()
        _check(
            _lib().syscall(ctypes.c_long(SYS_CAPGET), ctypes.byref(header), ctypes.byref(data)),
            "capget",
        )
        return (
            data[0].effective | data[1].effective << 32,
            data[0].permitted | data[1].permitted << 32,
            data[0].inheritable | data[1].inheritable << 32,
        )

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        for i in range(2):
            shift = 32 * i
            data[i].effective = (effective >> shift) & 0xFFFFFFFF
            data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
            data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
        _check(
            _lib().syscall(ctypes.c_long(SYS_CAPSET), ctypes.byref(header), ctypes.byref(data)),
            "capset",
        )

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        _check(_lib().sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")

    def setdomainname(self, name: str) -> None:
        raw = name.encode()
        _check(_lib().setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname")

    def openat2(self, dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
        """openat2(2): open ``path`` relative to ``dirfd`` with kernel-enforced resolution."""
        how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
        res = _lib().syscall(
            ctypes.c_long(SYS_OPENAT2),
            ctypes.c_int(dirfd),
            _b(path),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        return _check(res, f"openat2 {path}")

    def seccomp_filter(self, program: bytes) -> None:
        """Install a classic BPF program (8-byte sock_filter entries) as a seccomp filter."""
        buf = ctypes.create_string_buffer(program, len(program))
        prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
        self.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))

    def setgroups(self, gids: list[int]) -> None:
        os.setgroups(gids)

    def setresgid(self, gid: int) -> None:
        os.setresgid(gid, gid, gid)

    def setresuid(self, uid: int) -> None:
        os.setresuid(uid, uid, uid)

    def setrlimit(self, name: str, soft: int, hard: int) -> None:
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except ValueError as exc:  # the resource module reports EPERM/EINVAL as ValueError
            raise OSError(errno.EPERM, f"setrlimit {name}: {exc}") from None

    def write_file(self, path: str, data: str) -> None:
        """One write(2) of ``data``: how /proc files such as uid_map must be written."""
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)


LINUX: Final = Linux()
