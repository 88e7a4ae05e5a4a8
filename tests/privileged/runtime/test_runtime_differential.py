"""Differential tests: the same bundle run by corral-runtime, crun and runc gives the same
observable results (exit code, capabilities, no_new_privs, seccomp mode, hostname, ids, /dev,
masked and read-only paths)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from runtime_helpers import BundleFactory, in_v1_view

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
PROBE = (
    "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; "
    "hostname; id; pwd; "
    "ls /dev | sort | tr '\\n' ' '; echo; "
    "grep -E ' /(sys|proc/sys) ' /proc/mounts | cut -d' ' -f2,4 | cut -d, -f1; "
    "wc -c < /proc/keys; echo probe > /proc/sysrq-trigger 2>/dev/null || echo sysrq-ro; "
    "swapoff /x 2>&1 | grep -c 'not permitted'; "
    "exit 3"
)


def run_ours(bundle: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "agent.runtime", "--root", str(tmp_path / "ours"), "run"]
    cmd += ["--bundle", str(bundle), f"d{uuid.uuid4().hex[:8]}"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60, check=False)


def run_peer(binary: str, bundle: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if not shutil.which(binary):
        pytest.skip(f"{binary} is not installed")
    cmd = [binary, "--root", str(tmp_path / binary), "run", "--bundle", str(bundle)]
    cmd.append(f"d{uuid.uuid4().hex[:8]}")
    return subprocess.run(
        in_v1_view(cmd), capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )


def normalise(stdout: str) -> list[str]:
    """/dev differs on purpose in one name: runc and crun add /dev/core -> /proc/kcore, a
    link to a masked file; corral does not create it (nothing uses it, and it only points
    at a path that is masked anyway)."""
    lines = stdout.splitlines()
    return [" ".join(w for w in line.split(" ") if w != "core") for line in lines]


@pytest.mark.parametrize("peer", ["crun", "runc"])
def test_same_bundle_same_observable_results(
    peer: str, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    bundle = make_bundle(["/bin/sh", "-c", PROBE], hostname="diff-box")
    ours = run_ours(bundle, tmp_path)
    theirs = run_peer(peer, bundle, tmp_path)
    assert theirs.returncode == 3, theirs.stderr
    assert ours.returncode == 3, ours.stderr
    assert normalise(ours.stdout) == normalise(theirs.stdout)
    assert "CapEff:\t00000000a80425fb" in ours.stdout
    assert "diff-box" in ours.stdout


def test_missing_program_is_rejected_by_both(make_bundle: BundleFactory, tmp_path: Path) -> None:
    bundle = make_bundle(["/bin/no-such-program"])
    ours = run_ours(bundle, tmp_path)
    theirs = run_peer("crun", bundle, tmp_path)
    assert ours.returncode != 0 and theirs.returncode != 0
    assert "process.args[0]" in ours.stderr  # we name the step; crun prints an execvp error
    assert ours.stderr.count("\n") == 1


def test_relative_cwd_is_refused_here_but_accepted_by_crun(
    make_bundle: BundleFactory, tmp_path: Path
) -> None:
    """A deliberate difference: the OCI spec says process.cwd MUST be absolute; crun 1.8
    resolves a relative one against /, corral refuses the config and names the field."""
    bundle = make_bundle(["/bin/true"], process={"cwd": "relative/path"})
    ours = run_ours(bundle, tmp_path)
    theirs = run_peer("crun", bundle, tmp_path)
    assert ours.returncode != 0 and "process.cwd" in ours.stderr
    assert theirs.returncode == 0
