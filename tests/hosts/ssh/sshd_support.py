"""A fresh "host" for SSH bootstrap tests: a network namespace joined to the root namespace by a
veth pair on a private /30, running Debian's real sshd with its own host key, config, pid file
and authorized keys in a temporary directory. Everything is removed on exit, even on failure.

Also: a temporary non-root user without sudo, and client key pairs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSHD_PORT = 2222
# 10.232.0.0/16 is only ever configured on veths these helpers create; each host gets a /30.
NET_PREFIX = "10.232"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_line: str
    fingerprint: str  # SHA256:...
    key_type: str  # ssh-ed25519

    @property
    def private_text(self) -> str:
        return self.private_path.read_text()


def make_key(directory: Path, name: str) -> KeyPair:
    """An ed25519 key pair made by ssh-keygen; its fingerprint as ssh-keygen prints it."""
    path = directory / name
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path))
    listed = run("ssh-keygen", "-l", "-E", "sha256", "-f", str(path)).stdout.split()
    public_line = path.with_suffix(".pub").read_text().strip()
    return KeyPair(path, public_line, listed[1], public_line.split()[0])


@dataclass
class SSHHost:
    """A network namespace with sshd on ``address:port``; ``host_side`` is our veth address."""

    netns: str
    address: str
    host_side: str
    port: int
    work: Path
    host_key: KeyPair
    client_key: KeyPair
    sshd_pid: int = 0
    extra_pids: list[int] = field(default_factory=list)

    def authorize(self, user: str, key: KeyPair) -> None:
        keys = self.work / "authorized_keys"
        keys.mkdir(exist_ok=True)
        path = keys / user
        with path.open("a") as fh:
            fh.write(key.public_line + "\n")
        path.chmod(0o644)

    def exec_argv(self, argv: list[str]) -> list[str]:
        # nsenter switches only the network namespace; `ip netns exec` would also remount
        # /sys, hiding the cgroup hierarchies the agent needs.
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv]

    def start_sshd(self, host_key: KeyPair | None = None) -> None:
        """(Re)start sshd, optionally with another host key (a "reinstalled" host)."""
        self.stop_sshd()
        if host_key is not None:
            self.host_key = host_key
        config = self.work / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.address}",
                    f"HostKey {self.host_key.private_path}",
                    f"PidFile {self.work / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.work / 'authorized_keys' / '%u'}",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    # Only temporary users ever get a password (root's is '*').
                    "PasswordAuthentication yes",
                    "PermitEmptyPasswords no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "MaxStartups 50",
                    "LoginGraceTime 30",
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                    # A fresh host's root has no shell start-up files of ours: with SHLVL set,
                    # bash run by sshd skips ~/.bashrc (this machine's runs `pyenv rehash`,
                    # which waits up to 60 s on a lock another process may hold).
                    "SetEnv SHLVL=1",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = (self.work / "sshd.log").open("ab")
        proc = subprocess.Popen(
            self.exec_argv([SSHD, "-D", "-e", "-f", str(config), "-h",
                            str(self.host_key.private_path)]),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        self.sshd_pid = proc.pid
        self._proc = proc
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listening = f"ss -ltn 'sport = :{self.port}' | grep -q LISTEN"
            probe = run(*self.exec_argv(["sh", "-c", listening]), check=False)
            if probe.returncode == 0:
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("sshd did not start: " + (self.work / "sshd.log").read_text())

    def stop_sshd(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self._proc = None

    def sshd_log(self) -> str:
        try:
            return (self.work / "sshd.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _pick_subnet() -> tuple[str, str]:
    used = run("ip", "-4", "-o", "addr").stdout
    for _ in range(50):
        third = secrets.randbelow(256)
        fourth = secrets.randbelow(64) * 4
        host_side, ns_side = (
            f"{NET_PREFIX}.{third}.{fourth + 1}",
            f"{NET_PREFIX}.{third}.{fourth + 2}",
        )
        if f"{NET_PREFIX}.{third}.{fourth + 1}/" not in used and f" {ns_side}/" not in used:
            return host_side, ns_side
    raise AssertionError("no free /30 in 10.232.0.0/16")


@contextlib.contextmanager
def ssh_host() -> Iterator[SSHHost]:
    """A namespace + veth /30 + sshd; root may log in with ``client_key``."""
    tag = secrets.token_hex(3)
    netns, veth, peer = f"crlssh{tag}", f"crlsv{tag}", f"crlsp{tag}"
    host_side, ns_side = _pick_subnet()
    work = Path(tempfile.mkdtemp(prefix="crlssh-"))
    work.chmod(0o755)
    created_run_sshd = not Path("/run/sshd").exists()
    host: SSHHost | None = None
    run("ip", "netns", "add", netns)
    try:
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        run("ip", "link", "set", peer, "netns", netns)
        run("ip", "addr", "add", f"{host_side}/30", "dev", veth)
        run("ip", "link", "set", veth, "up")
        run("ip", "-n", netns, "link", "set", "lo", "up")
        run("ip", "-n", netns, "addr", "add", f"{ns_side}/30", "dev", peer)
        run("ip", "-n", netns, "link", "set", peer, "up")
        run("ip", "-n", netns, "route", "add", "default", "via", host_side)
        host = SSHHost(
            netns=netns, address=ns_side, host_side=host_side, port=SSHD_PORT, work=work,
            host_key=make_key(work, "host_key"), client_key=make_key(work, "client_key"),
        )  # fmt: skip
        host.authorize("root", host.client_key)
        host.start_sshd()
        yield host
    finally:
        if host is not None:
            host.stop_sshd()
        # Whatever still runs in the namespace (an installed agent, its supervisor) goes too.
        pids = run("ip", "netns", "pids", netns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run("ip", "link", "del", veth, check=False)
        run("ip", "netns", "del", netns, check=False)
        if created_run_sshd:
            with contextlib.suppress(OSError):
                Path("/run/sshd").rmdir()
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def temporary_user(
    host: SSHHost, key: KeyPair, *, sudo: bool = False, password: str = ""
) -> Iterator[str]:
    """A non-root user allowed to log in with ``key``, with passwordless sudo only when asked
    (a sudoers.d entry of its own); the user and the entry are removed on exit."""
    name = f"crlu{secrets.token_hex(3)}"
    home = host.work / f"home-{name}"
    sudoers = Path(f"/etc/sudoers.d/{name}")
    run("useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh",
        "--no-user-group", "--gid", "nogroup", name)  # fmt: skip
    try:
        # UsePAM=no refuses a locked account ('!'); '*' means "no password" but not locked.
        run("usermod", "-p", "*", name)
        if password:
            subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        home.mkdir()
        shutil.chown(home, user=name)
        host.authorize(name, key)
        if sudo:
            sudoers.write_text(f"{name} ALL=(root) NOPASSWD: ALL\n")
            sudoers.chmod(0o440)
        yield name
    finally:
        sudoers.unlink(missing_ok=True)
        pids = run("pgrep", "-u", name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run("userdel", name, check=False)
