"""Protocol ``ContainerSpec`` -> OCI runtime ``config.json`` (a dict), converted once.

Defaults follow what Docker, crun and runc generate, so a container here behaves like one there:
the minimal capability set, ``noNewPrivileges``, the OCI masked and read-only paths, a small
``/dev`` and a seccomp deny-list of kernel-wide operations. Image containers get an overlay root
(lower dirs from the caller, per-container upper/work); host containers see the host's ``/usr``
and libraries read-only with a private ``/etc`` (copy-on-write overlay), ``/var`` and ``/tmp``.
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.protocol.containers import ContainerSpec, IdMapping, Resources
from agent.runtime.config import ANN_LOWER, ANN_RESTART, ANN_UPPER, ANN_WORK
from agent.runtime.errors import ConfigError

OCI_VERSION = "1.0.2"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Docker's default capability set (moby/oci/caps/defaults.go); crun/runc use a subset.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)  # fmt: skip
# Kernel-wide operations a container never needs (a subset of Docker's default profile,
# expressed as a deny-list so it stays readable). Denied calls fail with EPERM.
SECCOMP_DENY: tuple[str, ...] = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "get_kernel_syms", "get_mempolicy", "init_module",
    "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie",
    "mbind", "move_pages", "nfsservctl", "open_by_handle_at", "perf_event_open",
    "process_vm_readv", "process_vm_writev", "query_module", "quotactl", "reboot",
    "request_key", "set_mempolicy", "settimeofday", "swapoff", "swapon", "sysfs", "uselib",
    "userfaultfd", "ustat", "vserver",
)  # fmt: skip
DEVPTS_OPTIONS = ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620")
HOST_RO_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")


@dataclass(frozen=True)
class SpecOptions:
    """Host-side choices the control plane does not make: where the cgroup goes, the SELinux
    labels allocated for this container, the image layers and per-container dirs."""

    cgroup_parent: str = "machine.slice"
    cgroup_driver: str = "v1"
    selinux_process_label: str = ""
    selinux_mount_label: str = ""
    lower_dirs: tuple[str, ...] = ()
    upper_dir: str = ""
    work_dir: str = ""
    private_dir: str = ""  # host containers: holds etc-upper, etc-work, var
    # A network namespace to join by path (pinned by the agent, so it outlives any single
    # process of the container); empty: a new one per process. Unused in host network mode.
    netns_path: str = ""
    seccomp: bool = True
    extra_annotations: dict[str, str] = field(default_factory=dict)


def to_oci(spec: ContainerSpec, *, root_path: str, options: SpecOptions) -> dict[str, Any]:
    """The OCI config for ``spec``; ``root_path`` is the (empty or overlay) rootfs directory."""
    spec.validate()
    args = [*spec.command, *spec.args]
    if not args:
        raise ConfigError("command", "give a command (image defaults are resolved by the caller)")
    uid, gid = parse_user(spec.user)
    caps = list(DEFAULT_CAPABILITIES)
    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": [DEFAULT_PATH_ENV, *(f"{k}={v}" for k, v in spec.env.items())],
            "cwd": spec.working_dir or "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "inheritable": [],
                "ambient": [],
            },
            "rlimits": [nofile_rlimit()],
            "noNewPrivileges": True,
        },
        "root": {"path": root_path, "readonly": False},
        "hostname": spec.hostname or spec.name,
        "mounts": base_mounts(),
        "annotations": build_annotations(spec, options),
        "linux": linux_section(spec, options),
    }
    if options.selinux_process_label:
        config["process"]["selinuxLabel"] = options.selinux_process_label
    if spec.mode == "host":
        config["mounts"].extend(host_mounts(options))
    elif not options.lower_dirs:
        raise ConfigError("rootfs_layers", "an image container needs at least one layer")
    return config


def nofile_rlimit() -> dict[str, Any]:
    """containerd's 1024:524288, but never above our own hard limit (raising it needs
    CAP_SYS_RESOURCE, which a host may withhold)."""
    _, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = 524288 if own_hard == resource.RLIM_INFINITY else min(524288, own_hard)
    return {"type": "RLIMIT_NOFILE", "hard": hard, "soft": min(1024, hard)}


def parse_user(user: str | None) -> tuple[int, int]:
    """``uid[:gid]`` with numeric ids (or ``root``); names need the image's passwd file."""
    if user is None or user in ("root", "0", "root:root"):
        return 0, 0
    uid_s, _, gid_s = user.partition(":")
    if not re.fullmatch(r"[0-9]+", uid_s) or (gid_s and not re.fullmatch(r"[0-9]+", gid_s)):
        raise ConfigError("user", "use numeric ids (uid[:gid]); names are not resolved here")
    uid = int(uid_s)
    return uid, int(gid_s) if gid_s else uid


def _mount(dest: str, mtype: str, source: str, *options: str) -> dict[str, Any]:
    return {"destination": dest, "type": mtype, "source": source, "options": list(options)}


def base_mounts() -> list[dict[str, Any]]:
    """/proc, a minimal /dev (tmpfs + devpts, shm, mqueue) and read-only /sys."""
    return [
        _mount("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
        _mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        _mount(
            "/dev/pts",
            "devpts",
            "devpts",
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ),
        _mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
        _mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        _mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
    ]


def host_mounts(options: SpecOptions) -> list[dict[str, Any]]:
    """Host binaries read-only; private copy-on-write /etc, private /var and /tmp."""
    if not options.private_dir:
        raise ConfigError("private_dir", "a host container needs a private directory")
    private = Path(options.private_dir)
    mounts: list[dict[str, Any]] = []
    for directory in HOST_RO_DIRS:
        if os.path.isdir(directory) and not os.path.islink(directory):
            mounts.append(_mount(directory, "bind", directory, "rbind", "ro", "nosuid", "nodev"))
    etc = f"lowerdir=/etc,upperdir={private / 'etc-upper'},workdir={private / 'etc-work'}"
    mounts.append(_mount("/etc", "overlay", "overlay", etc))
    mounts.append(_mount("/var", "bind", str(private / "var"), "rbind", "nosuid", "nodev"))
    mounts.append(_mount("/tmp", "tmpfs", "tmpfs", "nosuid", "nodev", "mode=1777"))
    return mounts


def prepare_host_rootfs(root_path: Path, private_dir: Path) -> None:
    """Skeleton of a host container's root: the host's merged-/usr symlinks and mount points."""
    root_path.mkdir(parents=True, exist_ok=True)
    for name in ("etc-upper", "etc-work", "var/tmp", "var/log"):
        (private_dir / name).mkdir(parents=True, exist_ok=True)
    for directory in HOST_RO_DIRS:
        target = root_path / directory.lstrip("/")
        if os.path.islink(directory) and not target.is_symlink():
            target.symlink_to(os.readlink(directory))
    for name in ("proc", "sys", "dev", "etc", "var", "tmp", "usr", "root", "run"):
        (root_path / name).mkdir(exist_ok=True)


def build_annotations(spec: ContainerSpec, options: SpecOptions) -> dict[str, str]:
    out = {f"label.{k}": v for k, v in spec.labels.items()}
    policy = spec.restart_policy
    out[ANN_RESTART] = policy.name + (f":{policy.max_retries}" if policy.max_retries else "")
    out["run.corral.project"] = spec.project
    out["run.corral.name"] = spec.name
    if options.lower_dirs:
        out[ANN_LOWER] = ":".join(options.lower_dirs)
        if options.upper_dir:
            out[ANN_UPPER] = options.upper_dir
            out[ANN_WORK] = options.work_dir
    out.update(options.extra_annotations)
    return out


def linux_section(spec: ContainerSpec, options: SpecOptions) -> dict[str, Any]:
    from agent.runtime.cgroups.paths import cgroups_path_for

    ns_types = ["pid", "ipc", "uts", "mount", "cgroup"]
    if spec.network.mode != "host":
        ns_types.append("network")
    namespaces: list[dict[str, str]] = [{"type": t} for t in ns_types]
    if spec.network.mode != "host" and options.netns_path:
        namespaces[-1]["path"] = options.netns_path
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
        "resources": oci_resources(spec.resources),
        "cgroupsPath": cgroups_path_for(
            spec.project, spec.id, driver=options.cgroup_driver, parent_slice=options.cgroup_parent
        ),
    }
    if spec.uid_mappings or spec.gid_mappings:
        linux["namespaces"].append({"type": "user"})
        linux["uidMappings"] = _idmaps(spec.uid_mappings or spec.gid_mappings)
        linux["gidMappings"] = _idmaps(spec.gid_mappings or spec.uid_mappings)
    if options.selinux_mount_label:
        linux["mountLabel"] = options.selinux_mount_label
    if options.seccomp:
        linux["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": list(SECCOMP_DENY), "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
        }
    return linux


def _idmaps(maps: list[IdMapping]) -> list[dict[str, int]]:
    return [{"containerID": m.container_id, "hostID": m.host_id, "size": m.size} for m in maps]


def oci_resources(res: Resources) -> dict[str, Any]:
    """Protocol resources -> OCI ``linux.resources`` (cgroup v1 units: shares, blkio weight)."""
    from agent.runtime.cgroups.base import weight_to_shares

    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if res.cpu_weight is not None:
        cpu["shares"] = weight_to_shares(res.cpu_weight)
    if res.cpu_quota_us is not None:
        cpu["quota"] = res.cpu_quota_us
        cpu["period"] = res.cpu_period_us
    if res.cpuset_cpus:
        cpu["cpus"] = res.cpuset_cpus
    if cpu:
        out["cpu"] = cpu
    if res.memory_limit is not None:
        out["memory"] = {"limit": res.memory_limit}
        if res.memory_swap_limit is not None:
            out["memory"]["swap"] = res.memory_swap_limit
    if res.pids_limit is not None:
        out["pids"] = {"limit": res.pids_limit}
    if res.io_weight is not None:
        out["blockIO"] = {"weight": 10 + (res.io_weight - 1) * 990 // 9999}
    return out
