"""Process security: capability sets, no_new_privs, user/group switch, seccomp (classic BPF).

Applied by the container's init just before exec, in the order the kernel requires: drop the
bounding set (needs CAP_SETPCAP), switch groups and user while keeping capabilities, set the
effective/permitted/inheritable sets, raise ambient ones, then no_new_privs. The seccomp filter is
installed last, right before exec, so the runtime's own syscalls are not filtered.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

from agent.runtime.config import CAP_NUMBERS, Process, Seccomp
from agent.runtime.linux import (
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAP_AMBIENT_RAISE,
    PR_CAPBSET_DROP,
    PR_SET_KEEPCAPS,
    PR_SET_NO_NEW_PRIVS,
    Linux,
)

# x86_64 numbers of the syscalls a seccomp profile may name. Names not here are skipped and
# reported (as runc does), so a profile written for a newer kernel still loads.
SYSCALLS_X86_64: dict[str, int] = {
    "read": 0, "write": 1, "open": 2, "close": 3, "ptrace": 101, "syslog": 103,
    "personality": 135, "uselib": 134, "ustat": 136, "sysfs": 139, "chroot": 161,
    "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167,
    "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171, "iopl": 172,
    "ioperm": 173, "create_module": 174, "init_module": 175, "delete_module": 176,
    "get_kernel_syms": 177, "query_module": 178, "quotactl": 179, "nfsservctl": 180,
    "lookup_dcookie": 212, "clock_settime": 227, "vserver": 236, "mbind": 237,
    "set_mempolicy": 238, "get_mempolicy": 239, "kexec_load": 246, "add_key": 248,
    "request_key": 249, "keyctl": 250, "move_pages": 279, "unshare": 272, "setns": 308,
    "perf_event_open": 298, "fanotify_init": 300, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "clock_adjtime": 305, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "kexec_file_load": 320,
    "bpf": 321, "userfaultfd": 323, "pivot_root": 155, "adjtimex": 159, "mkdir": 83,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "open_tree": 428,
    "move_mount": 429, "getpid": 39, "uname": 63,
}  # fmt: skip
AUDIT_ARCH_X86_64 = 0xC000003E
# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_RET_K = 0x06
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000


def cap_mask(names: Iterable[str]) -> int:
    """Bit mask of capability names (validated earlier by the config parser)."""
    mask = 0
    for name in names:
        mask |= 1 << CAP_NUMBERS[name]
    return mask


def last_cap() -> int:
    """Highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except OSError:
        return max(CAP_NUMBERS.values())


def apply_process_security(linux: Linux, process: Process) -> None:
    """Switch user and set capabilities and no_new_privs, in the kernel's required order."""
    caps = process.capabilities
    bounding = cap_mask(caps.bounding)
    for cap in range(last_cap() + 1):
        if not bounding & (1 << cap):
            linux.prctl(PR_CAPBSET_DROP, cap)
    switching = process.uid != 0 or process.gid != 0
    if switching:
        linux.prctl(PR_SET_KEEPCAPS, 1)
    linux.setgroups(list(process.additional_gids))
    linux.setresgid(process.gid)
    linux.setresuid(process.uid)
    if switching:
        linux.prctl(PR_SET_KEEPCAPS, 0)
    linux.capset(cap_mask(caps.effective), cap_mask(caps.permitted), cap_mask(caps.inheritable))
    linux.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for name in caps.ambient:
        linux.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NUMBERS[name])
    if process.no_new_privileges:
        linux.prctl(PR_SET_NO_NEW_PRIVS, 1)


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def _action(action: str, errno: int) -> int:
    if action == "SCMP_ACT_ALLOW":
        return SECCOMP_RET_ALLOW
    if action == "SCMP_ACT_ERRNO":
        return SECCOMP_RET_ERRNO | (errno & 0xFFFF)
    if action == "SCMP_ACT_KILL_PROCESS":
        return SECCOMP_RET_KILL_PROCESS
    return SECCOMP_RET_KILL_THREAD


def compile_seccomp(profile: Seccomp) -> tuple[bytes, list[str]]:
    """Compile a name-only profile to a BPF program for x86_64. Returns the program and the
    syscall names it had to skip because this table does not know them."""
    skipped: list[str] = []
    body: list[tuple[int, int]] = []  # (syscall number, return value)
    for rule in profile.rules:
        ret = _action(rule.action, rule.errno)
        for name in rule.names:
            nr = SYSCALLS_X86_64.get(name)
            if nr is None:
                skipped.append(name)
            else:
                body.append((nr, ret))
    prog = [
        _insn(_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _insn(_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        _insn(_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    for nr, ret in body:
        prog.append(_insn(_JEQ_K, 0, 1, nr))
        prog.append(_insn(_RET_K, 0, 0, ret))
    prog.append(_insn(_RET_K, 0, 0, _action(profile.default_action, profile.default_errno)))
    return b"".join(prog), skipped


def seccomp_available() -> tuple[bool, str]:
    """Whether this kernel offers seccomp filters, and why not when it does not."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Seccomp:"):
                    return True, ""
    except OSError as exc:
        return False, f"cannot read /proc/self/status: {exc}"
    return False, "kernel built without CONFIG_SECCOMP"


def install_seccomp(linux: Linux, profile: Seccomp) -> list[str]:
    """Install the profile's filter (needs no_new_privs or CAP_SYS_ADMIN). Returns skipped names."""
    program, skipped = compile_seccomp(profile)
    linux.seccomp_filter(program)
    return skipped


def uid_is_root() -> bool:
    return os.geteuid() == 0
