"""ContainerSpec -> OCI config conversion."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent.protocol.containers import (
    ContainerSpec,
    IdMapping,
    ImageRef,
    NetworkSpec,
    Resources,
    RestartPolicy,
)
from agent.runtime.config import CAP_NUMBERS, parse_config
from agent.runtime.errors import ConfigError
from agent.runtime.spec import (
    DEFAULT_CAPABILITIES,
    MASKED_PATHS,
    READONLY_PATHS,
    SpecOptions,
    prepare_host_rootfs,
    to_oci,
)

CID = str(uuid.UUID(int=7))


def image_spec(**kw: object) -> ContainerSpec:
    base: dict[str, object] = {
        "id": CID,
        "name": "web",
        "project": "shop",
        "image": ImageRef("busybox:1"),
        "command": ["/bin/sh", "-c"],
        "args": ["echo hi"],
    }
    base.update(kw)
    return ContainerSpec(**base)  # type: ignore[arg-type]


OPTS = SpecOptions(lower_dirs=("/layers/a", "/layers/b"), upper_dir="/c/upper", work_dir="/c/work")


def test_image_container_gets_secure_defaults() -> None:
    cfg = to_oci(image_spec(env={"A": "1"}), root_path="/c/rootfs", options=OPTS)
    proc = cfg["process"]
    assert proc["args"] == ["/bin/sh", "-c", "echo hi"]
    assert "A=1" in proc["env"] and any(e.startswith("PATH=") for e in proc["env"])
    assert proc["noNewPrivileges"] is True
    assert proc["capabilities"]["bounding"] == list(DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in proc["capabilities"]["effective"]
    linux = cfg["linux"]
    assert linux["maskedPaths"] == list(MASKED_PATHS)
    assert linux["readonlyPaths"] == list(READONLY_PATHS)
    assert {n["type"] for n in linux["namespaces"]} == {
        "pid",
        "ipc",
        "uts",
        "mount",
        "cgroup",
        "network",
    }
    assert linux["cgroupsPath"].startswith("/machine.slice/machine-shop.slice/")
    assert "swapon" in linux["seccomp"]["syscalls"][0]["names"]
    assert cfg["hostname"] == "web"
    sys_mount = next(m for m in cfg["mounts"] if m["destination"] == "/sys")
    assert "ro" in sys_mount["options"]
    assert cfg["annotations"]["run.corral.rootfs.lower"] == "/layers/a:/layers/b"
    parse_config(cfg, bundle="/c")  # what we write is what we accept


def test_resources_become_oci_linux_resources() -> None:
    res = Resources(cpu_weight=100, memory_limit=64 << 20, pids_limit=50, cpu_quota_us=50_000)
    cfg = to_oci(image_spec(resources=res), root_path="/r", options=OPTS)
    r = cfg["linux"]["resources"]
    assert r["memory"] == {"limit": 64 << 20}
    assert r["pids"] == {"limit": 50}
    assert r["cpu"]["shares"] == 1024  # weight 100 is the v1 default
    assert r["cpu"]["quota"] == 50_000 and r["cpu"]["period"] == 100_000


def test_id_mappings_add_a_user_namespace() -> None:
    maps = [IdMapping(0, 5000, 1101)]
    cfg = to_oci(image_spec(uid_mappings=maps), root_path="/r", options=OPTS)
    assert {"type": "user"} in cfg["linux"]["namespaces"]
    assert cfg["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 5000, "size": 1101}]
    assert cfg["linux"]["gidMappings"] == cfg["linux"]["uidMappings"]


def test_a_pinned_network_namespace_is_joined_by_path_except_in_host_mode() -> None:
    opts = SpecOptions(lower_dirs=("/l",), netns_path="/state/network/netns/" + CID)
    cfg = to_oci(image_spec(), root_path="/r", options=opts)
    assert {"type": "network", "path": "/state/network/netns/" + CID} in cfg["linux"]["namespaces"]
    parsed = parse_config(cfg, bundle="/c").namespace("network")
    assert parsed is not None and parsed.path == "/state/network/netns/" + CID
    host = to_oci(image_spec(network=NetworkSpec(mode="host")), root_path="/r", options=opts)
    assert all(n["type"] != "network" for n in host["linux"]["namespaces"])


def test_cgroup_parent_and_selinux_labels_are_configurable() -> None:
    opts = SpecOptions(
        lower_dirs=("/l",),
        cgroup_parent="tenants.slice",
        selinux_process_label="system_u:system_r:container_t:s0:c1,c2",
        selinux_mount_label="system_u:object_r:container_file_t:s0:c1,c2",
    )
    cfg = to_oci(image_spec(), root_path="/r", options=opts)
    assert cfg["linux"]["cgroupsPath"].startswith("/tenants.slice/tenants-shop.slice/")
    assert cfg["process"]["selinuxLabel"].endswith("c1,c2")
    assert cfg["linux"]["mountLabel"].startswith("system_u:object_r")


def test_user_takes_numeric_ids() -> None:
    cfg = to_oci(image_spec(user="1000:100"), root_path="/r", options=OPTS)
    assert cfg["process"]["user"] == {"uid": 1000, "gid": 100}
    with pytest.raises(ConfigError) as err:
        to_oci(image_spec(user="nobody"), root_path="/r", options=OPTS)
    assert err.value.field == "user"


def test_image_container_without_layers_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        to_oci(image_spec(), root_path="/r", options=SpecOptions())
    assert err.value.field == "rootfs_layers"


def test_host_container_binds_host_dirs_read_only_with_private_etc(tmp_path: Path) -> None:
    spec = image_spec(mode="host", image=None, restart_policy=RestartPolicy("on-failure", 3))
    opts = SpecOptions(private_dir=str(tmp_path / "priv"))
    prepare_host_rootfs(tmp_path / "root", tmp_path / "priv")
    cfg = to_oci(spec, root_path=str(tmp_path / "root"), options=opts)
    by_dest = {m["destination"]: m for m in cfg["mounts"]}
    assert "ro" in by_dest["/usr"]["options"]
    assert by_dest["/etc"]["type"] == "overlay" and "lowerdir=/etc" in by_dest["/etc"]["options"][0]
    assert by_dest["/tmp"]["type"] == "tmpfs"
    assert by_dest["/var"]["source"] == str(tmp_path / "priv" / "var")
    assert cfg["annotations"]["run.corral.restart"] == "on-failure:3"
    if Path("/bin").is_symlink():  # merged /usr: the symlink is recreated, not bound
        assert (tmp_path / "root" / "bin").is_symlink()


def test_capability_names_are_known_numbers() -> None:
    assert CAP_NUMBERS["CAP_SYS_ADMIN"] == 21
    assert all(c in CAP_NUMBERS for c in DEFAULT_CAPABILITIES)
