"""Compare the agent's inventory with Moby's check-config.sh on this host.

check-config.sh is not vendored: it is taken at run time from Debian's docker.io package
(``apt-get download docker.io``, ``dpkg-deb -x``). Both tools are run in this process; the
script prints an agreement table for every feature both report, and the time each took with
the ratio against check-config.sh (the named peer).

Exit status: 0 when every shared feature agrees or the difference is listed in
KNOWN_DIFFERENCES with a reason; 1 on any other disagreement; 2 when the peer is unavailable.

    python bench/check_config_compare.py [--deb path/to/docker.io.deb]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.certification import run_host_checks
from agent.inventory import collect_inventory

SCRIPT_IN_DEB = "usr/share/docker.io/contrib/check-config.sh"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LINE = re.compile(r"^\s*- (?P<name>[^:]+): (?P<state>\S.*)$")

# feature -> why the two tools may legitimately disagree on it. Empty means none known.
KNOWN_DIFFERENCES: dict[str, str] = {}

# CONFIG option -> the runtime fact the agent has for it (more direct than the config text).
NS_FLAGS = {
    "CONFIG_NET_NS": "net",
    "CONFIG_PID_NS": "pid",
    "CONFIG_IPC_NS": "ipc",
    "CONFIG_UTS_NS": "uts",
}
V1_CONTROLLERS = {
    "CONFIG_CGROUP_CPUACCT": ("cpuacct",),
    "CONFIG_CGROUP_DEVICE": ("devices",),
    "CONFIG_CGROUP_FREEZER": ("freezer",),
    "CONFIG_CGROUP_SCHED": ("cpu",),
    "CONFIG_CPUSETS": ("cpuset",),
    "CONFIG_MEMCG": ("memory",),
    "CONFIG_CGROUP_PIDS": ("pids",),
    "CONFIG_BLK_CGROUP": ("blkio", "io"),
}


def fetch_check_config(workdir: Path, deb: Path | None) -> Path:
    """Download docker.io (unless given) and extract check-config.sh; returns its path."""
    if deb is None:
        subprocess.run(
            ["apt-get", "download", "docker.io"],
            cwd=workdir,
            check=True,
            capture_output=True,
            timeout=600,
        )
        debs = sorted(workdir.glob("docker.io_*.deb"))
        if not debs:
            raise RuntimeError("apt-get download docker.io produced no .deb")
        deb = debs[-1]
    extracted = workdir / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], check=True, timeout=300)
    script = extracted / SCRIPT_IN_DEB
    if not script.is_file():
        raise RuntimeError(f"{SCRIPT_IN_DEB} is not in {deb.name}")
    return script


def run_check_config(script: Path) -> tuple[dict[str, bool], str]:
    """Run the peer; returns ({feature: enabled?}, raw output without colours)."""
    proc = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    text = ANSI.sub("", proc.stdout + proc.stderr)
    return parse_check_config(text), text


def parse_check_config(text: str) -> dict[str, bool]:
    """Per-feature lines ``- NAME: enabled|missing|...`` into {NAME: enabled?}."""
    out: dict[str, bool] = {}
    for line in text.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        state = match.group("state").strip().lower()
        name = match.group("name").strip().strip('"')
        if state.startswith(("enabled", "properly mounted")):
            out[name] = True
        elif state.startswith("missing"):
            out[name] = False
    return out


def agent_view(inv: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """What the agent knows about each feature: (enabled?, where the agent learned it)."""
    view: dict[str, tuple[bool, str]] = {}
    options = (inv.get("kernel_config") or {}).get("options") or {}
    for key, value in options.items():
        view[key] = (value in ("y", "m"), f"kernel_config={value}")
    ns = inv.get("namespaces") or {}
    probe = ns.get("unshare") or {}
    for key, name in NS_FLAGS.items():
        if name in probe:
            view[key] = (bool(probe[name]), f"unshare({name}) probe")
    user = ns.get("user") or {}
    if user.get("root_can_create") is not None:
        view["CONFIG_USER_NS"] = (bool(user["root_can_create"]), "unshare(user) probe")
    if "supported" in (inv.get("seccomp") or {}):
        view["CONFIG_SECCOMP"] = (bool(inv["seccomp"]["supported"]), "seccomp section")
    if "available" in (inv.get("overlay") or {}):
        view["CONFIG_OVERLAY_FS"] = (bool(inv["overlay"]["available"]), "overlay section")
    cg = inv.get("cgroups") or {}
    if cg.get("version") in (1, 2):
        view["cgroup hierarchy"] = (True, f"cgroups v{cg['version']} ({cg.get('mode')})")
        enabled = set(cg.get("controllers_enabled") or [])
        if cg["version"] == 1:  # v2 has no cpuacct/devices/freezer controllers to compare
            for key, names in V1_CONTROLLERS.items():
                view[key] = (bool(enabled & set(names)), "/proc/cgroups")
    return view


def compare(peer: dict[str, bool], mine: dict[str, tuple[bool, str]]) -> list[dict[str, Any]]:
    rows = []
    for feature in sorted(set(peer) & set(mine)):
        enabled, source = mine[feature]
        agree = enabled == peer[feature]
        rows.append(
            {
                "feature": feature,
                "check_config": peer[feature],
                "agent": enabled,
                "source": source,
                "agree": agree,
                "known": KNOWN_DIFFERENCES.get(feature) if not agree else None,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    def word(v: bool) -> str:
        return "enabled" if v else "missing"

    width = max(len(r["feature"]) for r in rows)
    print(f"{'feature':<{width}}  {'check-config':<12}  {'agent':<8}  {'agrees':<6}  agent source")
    for r in rows:
        mark = "yes" if r["agree"] else ("known" if r["known"] else "NO")
        print(
            f"{r['feature']:<{width}}  {word(r['check_config']):<12}  {word(r['agent']):<8}  "
            f"{mark:<6}  {r['source']}"
        )
        if r["known"]:
            print(f"{'':<{width}}  reason: {r['known']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb", type=Path, help="use this docker.io .deb instead of downloading")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="check-config-") as tmp:
        try:
            script = fetch_check_config(Path(tmp), args.deb)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            print(f"peer unavailable: {exc}", file=sys.stderr)
            return 2
        start = time.perf_counter()
        peer, _raw = run_check_config(script)
        peer_s = time.perf_counter() - start
    collect_inventory()  # warm-up, so both sides are timed with a warm page cache
    start = time.perf_counter()
    inv = collect_inventory()
    findings = run_host_checks(inv)
    agent_s = time.perf_counter() - start
    rows = compare(peer, agent_view(inv))
    print_table(rows)
    bad = [r["feature"] for r in rows if not r["agree"] and not r["known"]]
    print()
    print(
        f"shared features: {len(rows)}, agree: {sum(r['agree'] for r in rows)}, "
        f"known differences: {sum(bool(r['known']) for r in rows)}, disagreements: {len(bad)}"
    )
    print(f"check-config.sh reported {len(peer)} features; agent ran {len(findings)} checks")
    print(
        f"time: agent inventory+checks {agent_s * 1000:.1f} ms, check-config.sh "
        f"{peer_s * 1000:.1f} ms, ratio agent/check-config = {agent_s / peer_s:.2f}"
    )
    if bad:
        print(f"DISAGREE: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
