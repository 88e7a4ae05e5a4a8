"""Collectors for the software stack: kernel, kernel config, OS release, init, clock, agent."""

from __future__ import annotations

import gzip
import os
import shlex

import agent
from agent.inventory import _sys
from agent.inventory._base import Section, host_path, read_text, unknown

# Kernel options the agent and the certification checks care about.
KERNEL_FEATURES = (
    "CONFIG_NAMESPACES",
    "CONFIG_UTS_NS",
    "CONFIG_IPC_NS",
    "CONFIG_PID_NS",
    "CONFIG_NET_NS",
    "CONFIG_USER_NS",
    "CONFIG_CGROUPS",
    "CONFIG_CGROUP_CPUACCT",
    "CONFIG_CGROUP_DEVICE",
    "CONFIG_CGROUP_FREEZER",
    "CONFIG_CGROUP_SCHED",
    "CONFIG_CGROUP_PIDS",
    "CONFIG_CGROUP_BPF",
    "CONFIG_CPUSETS",
    "CONFIG_MEMCG",
    "CONFIG_BLK_CGROUP",
    "CONFIG_KEYS",
    "CONFIG_VETH",
    "CONFIG_BRIDGE",
    "CONFIG_BRIDGE_NETFILTER",
    "CONFIG_IP_NF_FILTER",
    "CONFIG_IP_NF_NAT",
    "CONFIG_IP_NF_TARGET_MASQUERADE",
    "CONFIG_NETFILTER_XT_MATCH_ADDRTYPE",
    "CONFIG_NETFILTER_XT_MATCH_CONNTRACK",
    "CONFIG_NF_NAT",
    "CONFIG_NF_TABLES",
    "CONFIG_POSIX_MQUEUE",
    "CONFIG_SECCOMP",
    "CONFIG_SECCOMP_FILTER",
    "CONFIG_OVERLAY_FS",
    "CONFIG_SECURITY_SELINUX",
    "CONFIG_SECURITY_APPARMOR",
    "CONFIG_KVM_GUEST",
    "CONFIG_HYPERVISOR_GUEST",
    "CONFIG_NETFILTER_XT_MARK",
    "CONFIG_IP_NF_TARGET_REDIRECT",
    "CONFIG_CGROUP_HUGETLB",
    "CONFIG_CGROUP_PERF",
    "CONFIG_CGROUP_NET_PRIO",
    "CONFIG_CFS_BANDWIDTH",
    "CONFIG_FAIR_GROUP_SCHED",
    "CONFIG_BLK_DEV_THROTTLING",
    "CONFIG_MACVLAN",
    "CONFIG_IPVLAN",
    "CONFIG_VXLAN",
    "CONFIG_EXT4_FS",
    "CONFIG_BTRFS_FS",
)


def collect_kernel() -> Section:
    """Release, version string, architecture and boot command line."""
    uts = os.uname()
    return {
        "release": uts.release,
        "version": uts.version,
        "arch": uts.machine,
        "cmdline": read_text("/proc/cmdline") or "",
        "release_tuple": list(_release_tuple(uts.release)),
    }


def _release_tuple(release: str) -> tuple[int, ...]:
    parts = []
    for chunk in release.split("-", 1)[0].split("."):
        digits = "".join(c for c in chunk if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


_CONFIG_CACHE: dict[tuple[str, str], tuple[str, dict[str, str]] | None] = {}


def load_kernel_config() -> tuple[str, dict[str, str]] | None:
    """(source path, {option: value}) from /boot/config-<release> or /proc/config.gz.

    Cached per root and kernel release: it cannot change without a reboot, and three
    collectors ask for it (decompressing /proc/config.gz costs several milliseconds).
    """
    key = (str(host_path("/")), os.uname().release)
    if key not in _CONFIG_CACHE:
        _CONFIG_CACHE[key] = _read_kernel_config()
    return _CONFIG_CACHE[key]


def _read_kernel_config() -> tuple[str, dict[str, str]] | None:
    boot = host_path(f"/boot/config-{os.uname().release}")
    try:
        return str(boot), _parse_config(boot.read_text(errors="replace"))
    except OSError:
        pass
    proc = host_path("/proc/config.gz")
    try:
        with gzip.open(proc, "rt", errors="replace") as fh:
            return str(proc), _parse_config(fh.read())
    except OSError:
        return None


def _parse_config(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value.strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out[line[2:].split()[0]] = "n"
    return out


def collect_kernel_config() -> Section:
    """The options of :data:`KERNEL_FEATURES` as y / m / n (absent means n)."""
    loaded = load_kernel_config()
    if loaded is None:
        return unknown("neither /boot/config-<release> nor /proc/config.gz is readable")
    source, config = loaded
    return {
        "source": source,
        "options": {key: config.get(key, "n") for key in KERNEL_FEATURES},
    }


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): shell-style KEY=value lines with optional quoting."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value)
        except ValueError:
            words = [value]
        out[key] = words[0] if words else ""
    return out


def collect_os_release() -> Section:
    """/etc/os-release (or /usr/lib/os-release): id, version, pretty name."""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = read_text(path)
        if text is not None:
            data = parse_os_release(text)
            return {
                "id": data.get("ID", "linux"),
                "id_like": data.get("ID_LIKE", "").split(),
                "version_id": data.get("VERSION_ID", ""),
                "version_codename": data.get("VERSION_CODENAME", ""),
                "pretty_name": data.get("PRETTY_NAME", ""),
                "source": path,
            }
    return unknown("no /etc/os-release or /usr/lib/os-release")


def collect_init() -> Section:
    """What PID 1 is, and whether systemd manages the host (it needs /run/systemd/system)."""
    comm = read_text("/proc/1/comm")
    exe: str | None
    try:
        exe = str(host_path("/proc/1/exe").readlink())
    except OSError:
        exe = None
    booted = host_path("/run/systemd/system").is_dir()
    if comm is None and exe is None:
        return unknown("/proc/1/comm and /proc/1/exe are not readable")
    return {
        "pid1_comm": comm,
        "pid1_exe": exe,
        "systemd": booted and (comm == "systemd" or (exe or "").endswith("/systemd")),
        "systemd_booted_marker": booted,
    }


def collect_clock() -> Section:
    """Kernel NTP state with adjtimex: synchronised or not, and the maximum error."""
    try:
        st = _sys.adjtimex_read()
    except OSError as exc:
        return unknown(f"adjtimex failed: {exc}")
    return {
        "synchronized": st.synchronized,
        "sta_unsync": bool(st.status & _sys.STA_UNSYNC),
        "clock_state": st.state,
        "maxerror_us": st.maxerror_us,
        "esterror_us": st.esterror_us,
    }


AGENT_RUNTIME_ENV = "CORRAL_AGENT_RUNTIME"


def collect_agent() -> Section:
    """The agent's own version (which agents need upgrading) and the OCI runtime it starts
    containers with: its own (``corral``) unless configured to use ``crun`` or ``runc``, so
    certification judges only the runtime really in use."""
    return {
        "version": agent.__version__,
        "runtime": os.environ.get(AGENT_RUNTIME_ENV, "").strip() or "corral",
    }
