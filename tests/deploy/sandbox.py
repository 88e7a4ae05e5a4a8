"""Run a command under an approximation of the control-plane units' sandbox, for tests on a
machine whose PID 1 is not systemd (so the units cannot be started for real).

Run inside ``unshare --mount --propagation private``: every mount becomes read-only
(ProtectSystem=strict) except /proc, /sys and /dev; the ``--rw`` paths are writable again
(ReadWritePaths=); /tmp is a fresh tmpfs (PrivateTmp=); then setpriv switches to ``--uid``
with no capabilities at all and no_new_privs (CapabilityBoundingSet=, NoNewPrivileges=yes).

    unshare --mount --propagation private -- python sandbox.py --uid 65534 --rw DIR -- argv...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL_FILESYSTEMS = ("/proc", "/sys", "/dev")
REPO = str(Path(__file__).resolve().parents[2])


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return sorted(set(points), key=len)


def make_read_only() -> None:
    for point in mount_points():
        if point.startswith(KERNEL_FILESYSTEMS):
            continue
        # Special mounts (namespace files) refuse remounting and hold no files anyway.
        with contextlib.suppress(subprocess.CalledProcessError):
            mount("-o", "remount,bind,ro", point)


def private_tmp(keep: list[str]) -> None:
    """A fresh tmpfs on /tmp (PrivateTmp=). A checkout that itself lives under /tmp (CI may
    clone anywhere) is carried over into the new /tmp, with its writable sub-mounts, so the
    units' commands still find their code, as they would under /opt on a real host."""
    kept = sorted({p for p in keep if p.startswith("/tmp/")}, key=len)
    stash = ""
    if kept:
        stash = tempfile.mkdtemp(dir="/dev/shm", prefix="sandbox-tmp-")
        mount("--rbind", "/tmp", stash)
    mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", "/tmp")
    covered: list[str] = []
    for path in kept:
        if any(path.startswith(done + "/") for done in covered):
            continue  # already inside a carried-over tree (rbind brings its sub-mounts)
        os.makedirs(path, exist_ok=True)
        mount("--rbind", stash + path.removeprefix("/tmp"), path)
        covered.append(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uid", type=int, required=True, help="user and group id to run as")
    parser.add_argument("--rw", action="append", default=[])
    parser.add_argument("argv", nargs="+")
    args = parser.parse_args()
    if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
        sys.exit("sandbox.py: run me under `unshare --mount --propagation private`")
    make_read_only()
    for path in args.rw:
        mount("--bind", path, path)
        mount("-o", "remount,bind,rw", path)
    private_tmp(keep=[REPO, *args.rw])
    os.execvp(  # noqa: S606 - the sandboxed command replaces this process
        "setpriv",
        [
            "setpriv", f"--reuid={args.uid}", f"--regid={args.uid}", "--clear-groups",
            "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--", *args.argv,
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
