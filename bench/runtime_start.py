"""Container start latency: corral-runtime (CLI and the agent's zygote path) against crun and
runc, same bundle, interleaved rounds, medians and ratios; plus monitor RSS beside conmon's.

Run as root: ``.venv/bin/python bench/runtime_start.py [--rounds 30]``.

Each sample is create + start + wait for ``/bin/true`` + delete, on a busybox-static rootfs
built here. Debian's crun 1.8.1 refuses this host's cgroup "hybrid" layout, so before timing
anything this process moves into a private mount namespace whose /sys/fs/cgroup shows only
the cgroup v1 hierarchies (the cgroups are the host's; only the view differs, and it goes
away with this process). Every runtime timed here runs inside that same view.

cgroups: by default the bundle has no ``linux.cgroupsPath``. crun and runc then still make a
cgroup ``/<id>`` in every hierarchy and move the container into it; corral leaves the
container in its shim's cgroup. That is not the same work: on cgroup v1 the first move of a
process waits for an RCU grace period (~14 ms here, most of crun's time). ``--cgroup`` gives
the bundle a ``cgroupsPath`` (as the agent always does), so all three create, fill and remove
the same cgroup; report both figures.

State roots: every runtime's ``--root`` is on a tmpfs mounted (in the private mount namespace)
under the temp dir, as the agent's own root (/run/corral/runtime) and crun's and runc's
defaults (/run/crun, /run/runc) are; the bundle stays on the temp dir's filesystem.

Order: each round starts with the next runner, and every sample comes ``--gap`` seconds after
the one before (a v1 cgroup move right after another skips its RCU grace period: with a fixed
order crun always ran right after corral's CLI had moved its container, and profited from it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.runtime.linux import CLONE_NEWNS, LINUX, MS_BIND, MS_MOVE, MS_PRIVATE, MS_REC
from agent.runtime.runtime import Runtime
from agent.runtime.spec import (
    DEFAULT_CAPABILITIES,
    MASKED_PATHS,
    READONLY_PATHS,
    SECCOMP_DENY,
    base_mounts,
)
from agent.runtime.zygote import Zygote

REPO = Path(__file__).resolve().parents[1]


def v1_only_view() -> None:
    """Private mount namespace; /sys/fs/cgroup = tmpfs holding only the v1 hierarchies."""
    LINUX.unshare(CLONE_NEWNS)
    LINUX.mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    v1 = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[2] == "cgroup"
    ]
    stash = Path(tempfile.mkdtemp(prefix="cgstash-"))
    for target in v1:
        (stash / Path(target).name).mkdir()
        LINUX.mount(target, str(stash / Path(target).name), None, MS_BIND, None)
    LINUX.mount("tmpfs", "/sys/fs/cgroup", "tmpfs", 0, "mode=755,size=64k")
    for target in v1:
        name = Path(target).name
        Path("/sys/fs/cgroup", name).mkdir()
        LINUX.mount(str(stash / name), f"/sys/fs/cgroup/{name}", None, MS_MOVE, None)
        (stash / name).rmdir()
    stash.rmdir()


# Per run: cgroups are the host's, not the mount view's; two runs at once (other engineers'
# benchmarks) sharing one path killed each other's containers when deleting theirs.
BENCH_CGROUP = f"/corral-bench-{os.getpid()}.slice/bench"


def build_bundle(base: Path, *, cgroup: bool = False) -> Path:
    rootfs = base / "bundle" / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", rootfs / "bin" / "busybox")
    subprocess.run(["chroot", str(rootfs), "/bin/busybox", "--install", "-s", "/bin"], check=True)
    for name in ("proc", "sys", "dev", "etc", "tmp"):
        (rootfs / name).mkdir(exist_ok=True)
    caps = list(DEFAULT_CAPABILITIES)
    config: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "args": ["/bin/true"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "capabilities": dict.fromkeys(("bounding", "effective", "permitted"), caps)
            | {"inheritable": [], "ambient": []},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "hostname": "bench",
        "mounts": base_mounts(),
        "linux": {
            "namespaces": [
                {"type": t} for t in ("pid", "ipc", "uts", "mount", "network", "cgroup")
            ],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": list(SECCOMP_DENY), "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
                ],
            },
        },
    }
    if cgroup:
        config["linux"]["cgroupsPath"] = BENCH_CGROUP
    bundle = base / "bundle"
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def runner_cli(root: Path, bundle: Path, *flags: str) -> Callable[[], None]:
    cmd = [sys.executable, *flags, "-m", "agent.runtime", "--root", str(root), "run"]

    def run() -> None:
        subprocess.run(
            [*cmd, f"c{uuid.uuid4().hex[:10]}", "--bundle", str(bundle)],
            check=True,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )

    return run


def runner_zygote(root: Path, bundle: Path, zygote: Zygote) -> Callable[[], None]:
    rt = Runtime(root)

    def run() -> None:
        cid = f"z{uuid.uuid4().hex[:10]}"
        zygote.create(root, cid, bundle)
        rt.start(cid)
        code = rt.wait(cid, timeout=10)
        rt.delete(cid, force=True)
        if code != 0:
            raise RuntimeError(f"zygote container exited {code}")

    return run


def runner_oci(binary: str, root: Path, bundle: Path) -> Callable[[], None]:
    def run() -> None:
        cid = f"{binary}{uuid.uuid4().hex[:10]}"
        subprocess.run(
            [binary, "--root", str(root), "run", "--bundle", str(bundle), cid],
            check=True,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

    return run


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) in KiB: RSS counts pages shared with the zygote; PSS shares them out."""
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    pss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        if line.startswith("Pss:")
    )
    return rss, pss


def monitor_rss(base: Path, bundle: Path, zygote: Zygote) -> None:
    sleeper = base / "sleep-bundle"
    shutil.copytree(bundle, sleeper, symlinks=True)
    cfg = json.loads((sleeper / "config.json").read_text())
    cfg["process"]["args"] = ["/bin/sleep", "30"]
    (sleeper / "config.json").write_text(json.dumps(cfg))
    root = base / "rss-root"
    rt = Runtime(root)
    zygote.create(root, "rss", sleeper)
    rt.start("rss")
    state = rt.raw_state("rss")
    shim = int(state["shim_pid"])
    if state.get("monitor") == "native":  # the shim execs the monitor once it has reported
        deadline = time.monotonic() + 5
        while "python" in os.readlink(f"/proc/{shim}/exe") and time.monotonic() < deadline:
            time.sleep(0.01)
    ours = rss_kib(shim)
    conmon = conmon_rss(base, sleeper)
    rt.delete("rss", force=True)
    kind = state.get("monitor", "python")
    print(f"monitor RSS: corral {kind} monitor {ours[0]} KiB (PSS {ours[1]} KiB)", end="")
    if conmon:
        print(
            f" | conmon {conmon[0]} KiB (PSS {conmon[1]} KiB)"
            f" | RSS ratio {ours[0] / conmon[0]:.2f}x"
        )
    else:
        print(" | conmon: could not be started")


def conmon_rss(base: Path, bundle: Path) -> tuple[int, int] | None:
    if not shutil.which("conmon") or not shutil.which("crun"):
        return None
    cid = "conmonbench"
    crun_root = base / "conmon-crun"
    pidfile, cpid = base / "ctr.pid", base / "conmon.pid"
    cmd = [
        "conmon", "--cid", cid, "--cuuid", cid, "--name", cid,
        "--runtime", shutil.which("crun") or "crun",
        "--bundle", str(bundle), "--container-pidfile", str(pidfile), "--conmon-pidfile", str(cpid),
        "--log-path", f"k8s-file:{base / 'conmon.log'}", "--exit-dir", str(base),
        "--socket-dir-path", str(base), "--runtime-arg", f"--root={crun_root}",
    ]  # fmt: skip
    try:
        subprocess.run(
            cmd, check=True, timeout=20, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # crun 1.8 complains about a missing status file here but starts the container.
        subprocess.run(["crun", f"--root={crun_root}", "start", cid], check=False, timeout=20)
        return rss_kib(int(cpid.read_text()))
    except (subprocess.SubprocessError, OSError, ValueError):
        return None
    finally:
        subprocess.run(
            ["crun", f"--root={crun_root}", "delete", "-f", cid], capture_output=True, check=False
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--cgroup", action="store_true", help="every runtime puts the container in a cgroup"
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=0.05,
        help="seconds of pause before each sample (untimed), so none follows another closely",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    v1_only_view()
    # Byte-compile the runtime as an installed package would be (this environment may set
    # PYTHONDONTWRITEBYTECODE, which would make every CLI run compile from source).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "agent")], check=False)
    base = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    zygote = Zygote()
    try:
        bundle = build_bundle(base, cgroup=args.cgroup)
        roots = base / "roots"
        roots.mkdir()
        LINUX.mount("tmpfs", str(roots), "tmpfs", 0, "mode=700")
        zygote.ensure_started()
        runners: dict[str, Callable[[], None]] = {
            "corral zygote (agent path)": runner_zygote(roots / "zroot", bundle, zygote),
            "corral-runtime CLI": runner_cli(roots / "croot", bundle),
            # The same without site-packages: how much is the interpreter's own start-up.
            "corral-runtime CLI (python -S)": runner_cli(roots / "sroot", bundle, "-S"),
        }
        for binary in ("crun", "runc"):
            if shutil.which(binary):
                runners[f"{binary} run"] = runner_oci(binary, roots / f"{binary}-root", bundle)
        for run in runners.values():  # warm caches once, untimed
            run()
        samples: dict[str, list[float]] = {name: [] for name in runners}
        names = list(runners)
        for round_no in range(args.rounds):
            # Each round starts with the next runner, and each sample comes after a pause: a
            # v1 cgroup move right after another one skips its RCU grace period, so a fixed
            # order let each runner profit (or not) from the one before it.
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                time.sleep(args.gap)
                started = time.perf_counter()
                runners[name]()
                samples[name].append((time.perf_counter() - started) * 1000)
        peer = statistics.median(samples["crun run"]) if "crun run" in samples else None
        print(
            f"create+start+wait+delete of /bin/true, {args.rounds} interleaved rounds,"
            f" {'in cgroup ' + BENCH_CGROUP if args.cgroup else 'no cgroupsPath'},"
            f" {args.gap * 1000:.0f} ms apart,"
            f" load {os.getloadavg()[0]:.1f}"
        )
        for name, values in samples.items():
            med = statistics.median(values)
            ratio = f"{med / peer:5.2f}x crun" if peer else ""
            print(
                f"  {name:30s} median {med:7.2f} ms"
                f"  p10 {sorted(values)[len(values) // 10]:7.2f}  {ratio}"
            )
        monitor_rss(base, bundle, zygote)
    finally:
        zygote.close()
        with contextlib.suppress(OSError):
            LINUX.umount2(str(base / "roots"), 0)
        shutil.rmtree(base, ignore_errors=True)
        if args.cgroup:
            remove_bench_slice()
    return 0


def remove_bench_slice() -> None:
    """crun and runc remove the container's cgroup but leave its parent (here also in the
    name=systemd hierarchy, which corral does not use): take the empty slice away."""
    parent = BENCH_CGROUP.rsplit("/", 1)[0]
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        with contextlib.suppress(OSError):
            (hierarchy / parent.lstrip("/")).rmdir()


if __name__ == "__main__":
    sys.exit(main())
