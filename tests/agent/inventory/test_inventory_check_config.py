"""bench/check_config_compare.py: its parser, and a real run against Moby's check-config.sh."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "check_config_compare.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_config_compare", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parser_reads_enabled_missing_and_module_states() -> None:
    bench = load_bench()
    text = (
        "Generally Necessary:\n"
        "- cgroup hierarchy: properly mounted [/sys/fs/cgroup]\n"
        "- CONFIG_NET_NS: enabled\n"
        "- CONFIG_OVERLAY_FS: enabled (as module)\n"
        "- CONFIG_NETFILTER_XT_MATCH_IPVS: missing\n"
        '  - "overlay":\n'
        "    - CONFIG_VXLAN: enabled\n"
        "- /proc/sys/kernel/keys/root_maxkeys: 1000000\n"
    )
    assert bench.parse_check_config(text) == {
        "cgroup hierarchy": True,
        "CONFIG_NET_NS": True,
        "CONFIG_OVERLAY_FS": True,
        "CONFIG_NETFILTER_XT_MATCH_IPVS": False,
        "CONFIG_VXLAN": True,
    }


def test_disagreement_is_reported_unless_listed_with_a_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = load_bench()
    peer = {"CONFIG_USER_NS": True, "CONFIG_VETH": True, "CONFIG_ONLY_PEER": False}
    mine = {"CONFIG_USER_NS": (False, "unshare(user) probe"), "CONFIG_VETH": (True, "cfg")}
    rows = bench.compare(peer, mine)
    assert [(r["feature"], r["agree"], r["known"]) for r in rows] == [
        ("CONFIG_USER_NS", False, None),
        ("CONFIG_VETH", True, None),
    ]
    monkeypatch.setitem(bench.KNOWN_DIFFERENCES, "CONFIG_USER_NS", "sysctl disables it")
    assert bench.compare(peer, mine)[0]["known"] == "sysctl disables it"


@pytest.mark.slow
@pytest.mark.privileged
def test_agent_agrees_with_check_config_on_this_host() -> None:
    """Downloads docker.io with apt-get (never vendored), runs check-config.sh, compares."""
    proc = subprocess.run(
        [sys.executable, str(BENCH)], capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = re.search(r"shared features: (\d+), agree: (\d+)", proc.stdout)
    assert summary, proc.stdout
    shared, agree = map(int, summary.groups())
    assert shared >= 20 and agree == shared
    assert "ratio agent/check-config" in proc.stdout
