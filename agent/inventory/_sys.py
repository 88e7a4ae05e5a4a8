"""The few system calls inventory needs that Python 3.11 lacks: statfs, adjtimex, unshare.

Kept to this module (ctypes over libc) so collectors stay plain file readers. The runtime's
own OS seam lives in ``agent/runtime/linux.py``; inventory only *probes*, never mutates the
host, so it does not depend on the runtime package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# Filesystem magic numbers from linux/magic.h.
CGROUP2_SUPER_MAGIC = 0x63677270
CGROUP_SUPER_MAGIC = 0x27E0EB
TMPFS_MAGIC = 0x01021994

# Namespace clone flags from linux/sched.h.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

NAMESPACE_FLAGS: dict[str, int] = {
    "mnt": CLONE_NEWNS,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "net": CLONE_NEWNET,
    "pid": CLONE_NEWPID,
    "cgroup": CLONE_NEWCGROUP,
    "time": CLONE_NEWTIME,
    "user": CLONE_NEWUSER,  # last: once in a new user namespace every later unshare succeeds
}

STA_UNSYNC = 0x0040
TIME_ERROR = 5


class _StatFs(ctypes.Structure):
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


class _TimeVal(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _TimeVal),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


def statfs_type(path: str) -> int:
    """Filesystem magic number of ``path`` (``statfs(2).f_type``); raises OSError."""
    buf = _StatFs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(buf.f_type) & 0xFFFFFFFF


@dataclass(frozen=True)
class ClockState:
    """Kernel NTP discipline state read with ``adjtimex(modes=0)`` (changes nothing)."""

    state: int
    status: int
    maxerror_us: int
    esterror_us: int
    offset: int

    @property
    def synchronized(self) -> bool:
        return not (self.status & STA_UNSYNC) and self.state != TIME_ERROR


def adjtimex_read() -> ClockState:
    """Read the kernel clock discipline; raises OSError."""
    tx = _Timex()
    tx.modes = 0
    state = _libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "adjtimex")
    return ClockState(
        state=int(state),
        status=int(tx.status),
        maxerror_us=int(tx.maxerror),
        esterror_us=int(tx.esterror),
        offset=int(tx.offset),
    )


def probe_unshare(names: list[str], *, drop_to_uid: int | None = None) -> dict[str, bool]:
    """Try ``unshare`` of each namespace type in a throw-away child; return which worked.

    The child (one ``fork``) tries the flags in ``names`` order, reporting success as bits of
    its exit status, then exits without running any Python cleanup. With ``drop_to_uid`` the
    child first becomes that user, which answers "can an unprivileged user do this?".
    Nothing changes in the calling process.
    """
    if len(names) > 7:
        raise ValueError("names: at most 7 namespace types per probe (exit status has 8 bits)")
    flags = [NAMESPACE_FLAGS[n] for n in names]
    pid = os.fork()
    if pid == 0:  # child: only libc calls, then _exit
        code = 0
        try:
            if drop_to_uid is not None:
                os.setgroups([])
                os.setresgid(drop_to_uid, drop_to_uid, drop_to_uid)
                os.setresuid(drop_to_uid, drop_to_uid, drop_to_uid)
            for bit, flag in enumerate(flags):
                if _libc.unshare(flag) == 0:
                    code |= 1 << bit
        except BaseException:
            code = 0x80
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0 or code & 0x80:
        raise OSError(f"namespace probe child failed (exit {code})")
    return {name: bool(code & (1 << bit)) for bit, name in enumerate(names)}
