"""OCI config validation: good configs parse, each bad one names its field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.config import parse_config, parse_restart
from agent.runtime.errors import ConfigError

BASE: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "process": {"args": ["/bin/true"], "cwd": "/", "env": ["PATH=/bin"]},
    "root": {"path": "rootfs"},
    "hostname": "h",
    "linux": {"namespaces": [{"type": "mount"}, {"type": "uts"}, {"type": "pid"}]},
}


def with_(path: str, value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


def test_valid_config_parses_with_root_made_absolute() -> None:
    cfg = parse_config(BASE, bundle="/b")
    assert cfg.root_path == "/b/rootfs"
    assert cfg.process.args == ("/bin/true",)
    assert cfg.namespace("uts") is not None and cfg.namespace("net") is None
    assert cfg.restart.name == "no"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("ociVersion", "2.0.0", "ociVersion"),
        ("process.args", [], "process.args"),
        ("process.args", "true", "process.args"),
        ("process.cwd", "tmp", "process.cwd"),
        ("process.env", ["NOEQUALS"], "process.env[0]"),
        ("process.terminal", "yes", "process.terminal"),
        ("process.user", {"uid": -1}, "process.user.uid"),
        ("process.capabilities", {"bounding": ["CAP_FLY"]}, "process.capabilities.bounding"),
        ("process.capabilities", {"ambient": ["CAP_KILL"]}, "process.capabilities.ambient"),
        (
            "process.rlimits",
            [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}],
            "process.rlimits[0].type",
        ),
        (
            "process.rlimits",
            [{"type": "RLIMIT_NOFILE", "soft": 9, "hard": 1}],
            "process.rlimits[0].soft",
        ),
        ("root.path", "", "root.path"),
        ("mounts", [{"destination": "rel", "type": "tmpfs"}], "mounts[0].destination"),
        ("mounts", [{"destination": "/x"}], "mounts[0].type"),
        (
            "linux.namespaces",
            [{"type": "mount"}, {"type": "time-travel"}],
            "linux.namespaces[1].type",
        ),
        ("linux.namespaces", [{"type": "mount"}, {"type": "mount"}], "linux.namespaces[1].type"),
        ("linux.namespaces", [{"type": "pid"}], "linux.namespaces"),
        ("linux.uidMappings", [{"containerID": 0, "hostID": 1, "size": 1}], "linux.uidMappings"),
        ("linux.cgroupsPath", "/a/../b", "linux.cgroupsPath"),
        ("linux.rootfsPropagation", "sideways", "linux.rootfsPropagation"),
        ("linux.seccomp", {"defaultAction": "SCMP_ACT_TRACE"}, "linux.seccomp.defaultAction"),
        ("annotations", {"run.corral.restart": "sometimes"}, "annotations.run.corral.restart"),
    ],
)
def test_bad_config_error_names_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(with_(path, value), bundle="/b")
    assert err.value.field == field


def test_hostname_needs_a_new_uts_namespace() -> None:
    cfg = with_("linux.namespaces", [{"type": "mount"}])
    with pytest.raises(ConfigError) as err:
        parse_config(cfg, bundle="/b")
    assert err.value.field == "hostname"


def test_new_user_namespace_needs_mappings() -> None:
    cfg = with_("linux.namespaces", [{"type": "mount"}, {"type": "uts"}, {"type": "user"}])
    with pytest.raises(ConfigError) as err:
        parse_config(cfg, bundle="/b")
    assert err.value.field == "linux.uidMappings"


def test_seccomp_argument_filters_are_refused_by_name() -> None:
    rule = {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0}]}
    cfg = with_("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]})
    with pytest.raises(ConfigError) as err:
        parse_config(cfg, bundle="/b")
    assert err.value.field == "linux.seccomp.syscalls[0].args"


@pytest.mark.parametrize(
    ("raw", "name", "retries"),
    [
        ("no", "no", 0),
        ("always", "always", 0),
        ("on-failure", "on-failure", 0),
        ("on-failure:3", "on-failure", 3),
    ],
)
def test_restart_policy_parses(raw: str, name: str, retries: int) -> None:
    policy = parse_restart(raw)
    assert (policy.name, policy.max_retries) == (name, retries)


def test_a_terminal_is_accepted_and_recorded() -> None:
    assert parse_config(with_("process.terminal", True), bundle="/b").process.terminal is True
    assert parse_config(BASE, bundle="/b").process.terminal is False


@pytest.mark.parametrize(
    ("bundle", "root"),
    [
        ("/b", "rootfs"),
        ("/b/", "./rootfs/"),
        ("/b", "/abs//root/./fs/"),
        ("/b", "../shared/rootfs"),
        ("/b", "."),
        ("relative", "rootfs"),
    ],
)
def test_root_path_is_spelled_as_pathlib_would(bundle: str, root: str) -> None:
    raw = copy.deepcopy(BASE)
    raw["root"]["path"] = root
    assert parse_config(raw, bundle=bundle).root_path == str(Path(bundle) / root)
