#!/usr/bin/env python
"""What SSH bootstrap's transport costs: our paramiko session against OpenSSH's own client.

Real parts: Debian's sshd in a network namespace (the test helper tests/hosts/ssh/sshd_support),
root with an ed25519 key. Peer, in the same run against the same sshd: OpenSSH ``ssh``/``scp``.
Measured (medians): a fresh connection + one command; a command over an open connection
(paramiko channel vs ``ssh`` through a ControlMaster socket); copying a 16 MiB file (paramiko
SFTP vs ``scp``, which uses SFTP too in OpenSSH 9). Ratios > 1 mean paramiko is slower.

    python bench/ssh_bootstrap.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def median_ms(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespace, sshd)", file=sys.stderr)
        return 2

    from hosts.ssh import client
    from tests.hosts.ssh.sshd_support import ssh_host

    with ssh_host() as host, tempfile.TemporaryDirectory(prefix="crlssh-bench-") as tmp:
        target = client.Target(
            address=host.address, port=host.port, user="root",
            host_key_fingerprint=host.host_key.fingerprint, host_key_type="ssh-ed25519",
            private_key=host.client_key.private_text,
        )  # fmt: skip
        known = Path(tmp) / "known_hosts"
        known.write_text(f"[{host.address}]:{host.port} {host.host_key.public_line}\n")
        control = Path(tmp) / "cm.sock"
        ssh = [
            "ssh", "-q", "-p", str(host.port), "-i", str(host.client_key.private_path),
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        ]  # fmt: skip
        dest = f"root@{host.address}"
        payload = Path(tmp) / "payload.bin"
        payload.write_bytes(os.urandom(16 * 1024 * 1024))
        remote = f"{host.work}/payload.bin"

        def paramiko_fresh() -> None:
            with client.connect(target) as session:
                session.run("true", timeout=10)

        def openssh_fresh() -> None:
            subprocess.run([*ssh, dest, "true"], check=True)

        fresh = (median_ms(paramiko_fresh, args.runs), median_ms(openssh_fresh, args.runs))

        master = subprocess.Popen([*ssh, "-M", "-N", "-S", str(control), dest])
        try:
            deadline = time.monotonic() + 10
            while not control.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            with client.connect(target) as session:
                reused = (
                    median_ms(lambda: session.run("true", timeout=10), args.runs),
                    median_ms(lambda: subprocess.run([*ssh, "-S", str(control), dest, "true"],
                                                     check=True), args.runs),
                )  # fmt: skip
                copy_runs = max(3, args.runs // 4)
                copy = (
                    median_ms(lambda: session.put(str(payload), remote), copy_runs),
                    median_ms(lambda: subprocess.run(
                        ["scp", "-q", "-P", str(host.port), "-i",
                         str(host.client_key.private_path), "-o", f"UserKnownHostsFile={known}",
                         "-o", "BatchMode=yes", str(payload), f"{dest}:{remote}"],
                        check=True), copy_runs),
                )  # fmt: skip
        finally:
            master.terminate()
            master.wait(timeout=10)

    print(f"{'measure':44} {'paramiko':>10} {'openssh':>10} {'ratio':>7}")
    for name, (ours, peer) in [
        ("fresh connection + `true` (ms)", fresh),
        ("`true` over an open connection (ms)", reused),
        ("copy 16 MiB (ms)", copy),
    ]:
        print(f"{name:44} {ours:10.1f} {peer:10.1f} {ours / peer:7.2f}")
    print(f"16 MiB copy throughput: paramiko {16 / (copy[0] / 1000):.0f} MiB/s, "
          f"scp {16 / (copy[1] / 1000):.0f} MiB/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    sys.exit(main())
