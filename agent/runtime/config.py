"""Parse and validate an OCI runtime ``config.json`` into frozen records
(:mod:`agent.runtime.record`, dataclasses without their import cost).

Validation happens here, before anything touches the host: a list of small checks, each raising
:class:`ConfigError` naming the offending field (``process.args``, ``mounts[2].destination``).
Only the parts of the OCI Runtime Specification 1.x that this runtime implements are accepted;
anything it would silently ignore but that matters for isolation is rejected by name.
"""

from __future__ import annotations

import json
import os
import re
import resource

from agent.runtime.errors import ConfigError
from agent.runtime.linux import NAMESPACE_FLAGS
from agent.runtime.record import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

# Capability numbers (linux/capability.h); the order is the kernel's.
CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
CAP_NUMBERS: dict[str, int] = {name: i for i, name in enumerate(CAPABILITIES)}

# Annotations this runtime reads (everything else is carried through to the state untouched).
ANN_LOWER = "run.corral.rootfs.lower"  # ':'-separated overlay lower dirs, top first
ANN_UPPER = "run.corral.rootfs.upper"
ANN_WORK = "run.corral.rootfs.work"
ANN_RESTART = "run.corral.restart"  # no | on-failure[:N] | always
ANN_LOG_MAX = "run.corral.log.max-bytes"

SECCOMP_ACTIONS = ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS")
ROOTFS_PROPAGATIONS = ("private", "rprivate", "slave", "rslave", "shared", "rshared", "")
_RESTART_RE = re.compile(r"no|always|on-failure(:[0-9]+)?")


@record
class Mount:
    destination: str
    type: str
    source: str
    options: tuple[str, ...] = ()


@record
class Namespace:
    type: str
    path: str | None = None


@record
class IdMap:
    container_id: int
    host_id: int
    size: int


@record
class Rlimit:
    type: str
    soft: int
    hard: int


@record
class Capabilities:
    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


@record
class Process:
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    capabilities: Capabilities = field(default_factory=Capabilities)
    no_new_privileges: bool = False
    rlimits: tuple[Rlimit, ...] = ()
    selinux_label: str = ""
    terminal: bool = False


@record
class SeccompRule:
    names: tuple[str, ...]
    action: str
    errno: int


@record
class Seccomp:
    default_action: str
    default_errno: int
    rules: tuple[SeccompRule, ...]


@record
class RestartPolicy:
    name: str = "no"
    max_retries: int = 0


@record
class Config:
    """A validated OCI config, with ``root_path`` made absolute against the bundle."""

    bundle: str
    oci_version: str
    root_path: str
    process: Process
    root_readonly: bool = False
    hostname: str = ""
    domainname: str = ""
    mounts: tuple[Mount, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    uid_mappings: tuple[IdMap, ...] = ()
    gid_mappings: tuple[IdMap, ...] = ()
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    cgroups_path: str = ""
    resources: dict[str, Any] = field(default_factory=dict)
    seccomp: Seccomp | None = None
    mount_label: str = ""
    rootfs_propagation: str = ""
    sysctl: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    def namespace(self, ns_type: str) -> Namespace | None:
        return next((ns for ns in self.namespaces if ns.type == ns_type), None)

    @property
    def lower_dirs(self) -> tuple[str, ...]:
        raw = self.annotations.get(ANN_LOWER, "")
        return tuple(d for d in raw.split(":") if d)


def load_config(bundle: str | Path) -> Config:
    """Read ``<bundle>/config.json`` and validate it."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as fh:
            raw = json.loads(fh.read())
    except FileNotFoundError:
        raise ConfigError("config.json", f"not found in bundle {bundle}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError("config.json", f"unreadable: {exc}") from None
    return parse_config(raw, bundle=os.path.realpath(bundle))


def parse_config(raw: Any, *, bundle: str) -> Config:
    """Validate an OCI config dict; every error names its field."""
    obj = _obj(raw, "config")
    version = _str(obj.get("ociVersion"), "ociVersion")
    if not version.startswith("1."):
        raise ConfigError("ociVersion", f"unsupported version {version!r}; expected 1.x")
    root = _obj(obj.get("root"), "root")
    root_path = _str(root.get("path"), "root.path")
    if not root_path:
        raise ConfigError("root.path", "must not be empty")
    linux = _obj(obj.get("linux", {}), "linux")
    namespaces = _namespaces(linux.get("namespaces", []))
    uid_maps = _idmaps(linux.get("uidMappings", []), "linux.uidMappings")
    gid_maps = _idmaps(linux.get("gidMappings", []), "linux.gidMappings")
    has_userns = any(ns.type == "user" for ns in namespaces)
    if (uid_maps or gid_maps) and not has_userns:
        raise ConfigError("linux.uidMappings", "id mappings need a user namespace")
    userns = next((ns for ns in namespaces if ns.type == "user"), None)
    if userns is not None and userns.path is None and not (uid_maps and gid_maps):
        raise ConfigError("linux.uidMappings", "a new user namespace needs uid and gid mappings")
    if not any(ns.type == "mount" for ns in namespaces):
        raise ConfigError("linux.namespaces", "a mount namespace is required")
    hostname = _str(obj.get("hostname", ""), "hostname")
    if hostname and not any(ns.type == "uts" and ns.path is None for ns in namespaces):
        raise ConfigError("hostname", "setting a hostname needs a new uts namespace")
    annotations = _str_map(obj.get("annotations", {}), "annotations")
    propagation = _str(linux.get("rootfsPropagation", ""), "linux.rootfsPropagation")
    if propagation not in ROOTFS_PROPAGATIONS:
        raise ConfigError("linux.rootfsPropagation", f"unknown propagation {propagation!r}")
    cgroups_path = _str(linux.get("cgroupsPath", ""), "linux.cgroupsPath")
    if ".." in cgroups_path.replace(":", "/").split("/"):
        raise ConfigError("linux.cgroupsPath", "must not contain '..'")
    return Config(
        bundle=bundle,
        oci_version=version,
        root_path=_clean_path(os.path.join(bundle, root_path)),
        root_readonly=_bool(root.get("readonly", False), "root.readonly"),
        process=_process(obj.get("process"), has_userns),
        hostname=hostname,
        domainname=_str(obj.get("domainname", ""), "domainname"),
        mounts=tuple(
            _mount(m, f"mounts[{i}]") for i, m in enumerate(_list(obj.get("mounts", []), "mounts"))
        ),
        namespaces=namespaces,
        uid_mappings=uid_maps,
        gid_mappings=gid_maps,
        masked_paths=_paths(linux.get("maskedPaths", []), "linux.maskedPaths"),
        readonly_paths=_paths(linux.get("readonlyPaths", []), "linux.readonlyPaths"),
        cgroups_path=cgroups_path,
        resources=_obj(linux.get("resources", {}), "linux.resources"),
        seccomp=_seccomp(linux.get("seccomp")),
        mount_label=_str(linux.get("mountLabel", ""), "linux.mountLabel"),
        rootfs_propagation=propagation,
        sysctl=_str_map(linux.get("sysctl", {}), "linux.sysctl"),
        annotations=annotations,
        restart=parse_restart(annotations.get(ANN_RESTART, "no"), f"annotations.{ANN_RESTART}"),
    )


def _clean_path(path: str) -> str:
    """``path`` spelled as pathlib spells it: no ``.`` parts, repeated or trailing slashes
    (``..`` kept; pathlib itself is ~3.5 ms of imports the CLI does without)."""
    parts = "/".join(part for part in path.split("/") if part not in ("", "."))
    return f"/{parts}" if path.startswith("/") else parts or "."


def parse_restart(value: str, field_name: str = "restart") -> RestartPolicy:
    """``no``, ``always`` or ``on-failure[:N]`` (N = max retries, 0 = unlimited)."""
    if not _RESTART_RE.fullmatch(value):
        raise ConfigError(field_name, f"must be no, always or on-failure[:N], got {value!r}")
    name, _, retries = value.partition(":")
    return RestartPolicy(name=name, max_retries=int(retries or 0))


def _process(raw: Any, has_userns: bool) -> Process:
    obj = _obj(raw, "process")
    args = tuple(
        _str(a, f"process.args[{i}]") for i, a in enumerate(_list(obj.get("args"), "process.args"))
    )
    if not args or not args[0]:
        raise ConfigError("process.args", "must name a program to run")
    env = tuple(
        _str(e, f"process.env[{i}]") for i, e in enumerate(_list(obj.get("env", []), "process.env"))
    )
    for i, entry in enumerate(env):
        if "=" not in entry or entry.startswith("="):
            raise ConfigError(f"process.env[{i}]", "must be NAME=value")
    cwd = _str(obj.get("cwd", "/"), "process.cwd")
    if not cwd.startswith("/"):
        raise ConfigError("process.cwd", "must be an absolute path")
    user = _obj(obj.get("user", {}), "process.user")
    gids = _list(user.get("additionalGids", []), "process.user.additionalGids")
    caps_raw = _obj(obj.get("capabilities", {}), "process.capabilities")
    caps = Capabilities(
        **{
            k: _caps(caps_raw.get(k, []), f"process.capabilities.{k}")
            for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
        }
    )
    for cap in caps.ambient:
        if cap not in caps.permitted or cap not in caps.inheritable:
            raise ConfigError(
                "process.capabilities.ambient", f"{cap} must also be permitted and inheritable"
            )
    rlimits = []
    for i, rl in enumerate(_list(obj.get("rlimits", []), "process.rlimits")):
        rlo = _obj(rl, f"process.rlimits[{i}]")
        rtype = _str(rlo.get("type"), f"process.rlimits[{i}].type")
        if not rtype.startswith("RLIMIT_") or not hasattr(resource, rtype):
            raise ConfigError(f"process.rlimits[{i}].type", f"unknown limit {rtype!r}")
        soft = _int(rlo.get("soft"), f"process.rlimits[{i}].soft")
        hard = _int(rlo.get("hard"), f"process.rlimits[{i}].hard")
        if soft > hard:
            raise ConfigError(f"process.rlimits[{i}].soft", "must not exceed hard")
        rlimits.append(Rlimit(rtype, soft, hard))
    del has_userns
    return Process(
        args=args,
        env=env,
        cwd=cwd,
        uid=_int(user.get("uid", 0), "process.user.uid"),
        gid=_int(user.get("gid", 0), "process.user.gid"),
        additional_gids=tuple(
            _int(g, f"process.user.additionalGids[{i}]") for i, g in enumerate(gids)
        ),
        capabilities=caps,
        no_new_privileges=_bool(obj.get("noNewPrivileges", False), "process.noNewPrivileges"),
        rlimits=tuple(rlimits),
        selinux_label=_str(obj.get("selinuxLabel", ""), "process.selinuxLabel"),
        terminal=_bool(obj.get("terminal", False), "process.terminal"),
    )


def _namespaces(raw: Any) -> tuple[Namespace, ...]:
    out: list[Namespace] = []
    for i, item in enumerate(_list(raw, "linux.namespaces")):
        obj = _obj(item, f"linux.namespaces[{i}]")
        ns_type = _str(obj.get("type"), f"linux.namespaces[{i}].type")
        if ns_type not in NAMESPACE_FLAGS:
            raise ConfigError(f"linux.namespaces[{i}].type", f"unknown namespace {ns_type!r}")
        if any(ns.type == ns_type for ns in out):
            raise ConfigError(f"linux.namespaces[{i}].type", f"{ns_type} given twice")
        path = obj.get("path")
        if path is not None:
            path = _str(path, f"linux.namespaces[{i}].path")
            if not path.startswith("/"):
                raise ConfigError(f"linux.namespaces[{i}].path", "must be an absolute path")
        out.append(Namespace(ns_type, path or None))
    return tuple(out)


def _idmaps(raw: Any, where: str) -> tuple[IdMap, ...]:
    out = []
    for i, item in enumerate(_list(raw, where)):
        obj = _obj(item, f"{where}[{i}]")
        cid = _int(obj.get("containerID"), f"{where}[{i}].containerID")
        hid = _int(obj.get("hostID"), f"{where}[{i}].hostID")
        size = _int(obj.get("size"), f"{where}[{i}].size")
        if size < 1:
            raise ConfigError(f"{where}[{i}].size", "must be at least 1")
        out.append(IdMap(cid, hid, size))
    return tuple(out)


def _mount(raw: Any, where: str) -> Mount:
    obj = _obj(raw, where)
    dest = _str(obj.get("destination"), f"{where}.destination")
    if not dest.startswith("/"):
        raise ConfigError(f"{where}.destination", "must be an absolute path")
    opts = tuple(
        _str(o, f"{where}.options") for o in _list(obj.get("options", []), f"{where}.options")
    )
    mtype = _str(obj.get("type", ""), f"{where}.type")
    if not mtype and not ("bind" in opts or "rbind" in opts):
        raise ConfigError(f"{where}.type", "needed unless the mount is a bind mount")
    return Mount(dest, mtype or "bind", _str(obj.get("source", ""), f"{where}.source"), opts)


def _seccomp(raw: Any) -> Seccomp | None:
    if raw is None:
        return None
    obj = _obj(raw, "linux.seccomp")
    default = _str(obj.get("defaultAction"), "linux.seccomp.defaultAction")
    if default not in SECCOMP_ACTIONS:
        raise ConfigError("linux.seccomp.defaultAction", f"unsupported action {default!r}")
    rules = []
    for i, item in enumerate(_list(obj.get("syscalls", []), "linux.seccomp.syscalls")):
        where = f"linux.seccomp.syscalls[{i}]"
        rule = _obj(item, where)
        if rule.get("args"):
            raise ConfigError(f"{where}.args", "argument filters are not supported")
        action = _str(rule.get("action"), f"{where}.action")
        if action not in SECCOMP_ACTIONS:
            raise ConfigError(f"{where}.action", f"unsupported action {action!r}")
        names = tuple(_str(n, f"{where}.names") for n in _list(rule.get("names"), f"{where}.names"))
        rules.append(SeccompRule(names, action, _int(rule.get("errnoRet", 1), f"{where}.errnoRet")))
    return Seccomp(
        default, _int(obj.get("defaultErrnoRet", 1), "linux.seccomp.defaultErrnoRet"), tuple(rules)
    )


def _caps(raw: Any, where: str) -> tuple[str, ...]:
    caps = tuple(_str(c, where) for c in _list(raw, where))
    for cap in caps:
        if cap not in CAP_NUMBERS:
            raise ConfigError(where, f"unknown capability {cap!r}")
    return caps


def _paths(raw: Any, where: str) -> tuple[str, ...]:
    paths = tuple(_str(p, where) for p in _list(raw, where))
    for p in paths:
        if not p.startswith("/"):
            raise ConfigError(where, f"{p!r} must be an absolute path")
    return paths


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(where, "expected an object" if value is not None else "is required")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(where, "expected a list" if value is not None else "is required")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(where, "expected a string" if value is not None else "is required")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, "expected an integer" if value is not None else "is required")
    if value < 0:
        raise ConfigError(where, "must not be negative")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, "expected true or false")
    return value


def _str_map(value: Any, where: str) -> dict[str, str]:
    obj = _obj(value, where)
    for key, val in obj.items():
        _str(val, f"{where}.{key}")
    return dict(obj)
