"""The remote half of SSH bootstrap: prerequisites, staging, swap, enroll, service, uninstall.

Every remote command is a POSIX ``sh`` script assembled from constants and ``shlex.quote``d
values (which were validated by hosts.ssh.validation first). Every step is recorded through a
callback with its redacted output. The install stages into ``<prefix>.new`` and swaps it in;
any failure after staging began rolls back, so a host is never left half-installed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Protocol

from hosts.ssh import validation
from hosts.ssh.client import CommandResult, Session
from hosts.ssh.errors import SSHError

logger = logging.getLogger(__name__)
MIN_PYTHON = (3, 11)
MIN_FREE_MB = 300
UNIT_NAME = "corral-agent.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
PRESERVED = ("state", "agent.json", "log")  # kept across upgrades: identity, key, logs
EVENT_OUTPUT_LIMIT = 4000
NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded", re.IGNORECASE)


class Recorder(Protocol):
    def __call__(
        self, message: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> None: ...


@dataclass(frozen=True)
class HostFacts:
    """What the prerequisite probe found on the host."""

    uid: int
    python: tuple[int, int]
    python_full: str  # e.g. 3.11.2: dependency markers can depend on the micro version
    glibc: tuple[int, int]
    arch: str
    systemd: bool
    raw: dict[str, str] = field(default_factory=dict)


def q(value: str) -> str:
    return shlex.quote(value)


PROBE = r"""
py=$(command -v python3 || true)
echo "uid=$(id -u)"
echo "user=$(id -un)"
echo "arch=$(uname -m)"
echo "kernel=$(uname -r)"
if [ -n "$py" ]; then
  echo "python=$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)"
  echo "glibc=$("$py" -c 'import platform; print(platform.libc_ver()[1])' 2>/dev/null)"
  echo "venv=$("$py" -c 'import venv, ensurepip' >/dev/null 2>&1 && echo yes || echo no)"
else
  echo "python="
fi
if command -v sudo >/dev/null 2>&1; then
  echo "sudo=$(sudo -n true >/dev/null 2>&1 && echo ok || echo password)"
else
  echo "sudo=absent"
fi
echo "userns=$(cat /proc/sys/user/max_user_namespaces 2>/dev/null || echo 0)"
if grep -qw overlay /proc/filesystems; then echo overlay=yes
elif modinfo overlay >/dev/null 2>&1; then echo overlay=module
else echo overlay=no; fi
echo "cgroup=$(grep -qE '^[^ ]+ [^ ]+ cgroup2? ' /proc/mounts && echo yes || echo no)"
echo "systemd=$([ -d /run/systemd/system ] && echo yes || echo no)"
echo "setsid=$(command -v setsid >/dev/null 2>&1 && echo yes || echo no)"
echo "tar=$(command -v tar >/dev/null 2>&1 && echo yes || echo no)"
d=$PREFIX_PARENT
while [ ! -d "$d" ]; do d=$(dirname "$d"); done
echo "disk_dir=$d"
echo "disk_free_kb=$(df -Pk "$d" | awk 'NR==2 {print $4}')"
"""


def _version(text: str) -> tuple[int, int]:
    match = re.match(r"^(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


class Installer:
    """Runs the install/uninstall steps over one authenticated session."""

    def __init__(
        self,
        session: Session,
        *,
        prefix: str,
        sudo: bool,
        record: Recorder,
        secrets: list[str] | None = None,
        min_free_mb: int = MIN_FREE_MB,
    ) -> None:
        self.session = session
        self.prefix = validation.validate_prefix(prefix).rstrip("/")
        self.sudo = sudo
        self.record = record
        self.secrets = [s for s in (secrets or []) if s]
        self.min_free_mb = min_free_mb
        self.as_root = False

    # --- plumbing ------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "********")
        return text

    def sh(
        self,
        script: str,
        *,
        step: str,
        timeout: float = 120.0,
        check: bool = True,
        root: bool = True,
        quiet: bool = False,
    ) -> CommandResult:
        """Run a POSIX sh script (as root: directly, or via ``sudo -n``) and record it."""
        command = "sh -c " + q(script)
        if root and self.sudo and not self.as_root:
            command = "sudo -n " + command
        try:
            result = self.session.run(command, timeout=timeout, step=step)
        except SSHError as exc:
            self.record(
                f"{step}: {exc.message}",
                level="error",
                data={"stdout": self._clip(exc.extra.get("stdout", "")),
                      "stderr": self._clip(exc.extra.get("stderr", ""))},
            )  # fmt: skip
            raise
        data = {
            "exit_status": result.exit_status,
            "seconds": round(result.seconds, 3),
            "stdout": self._clip(result.stdout),
            "stderr": self._clip(result.stderr),
        }
        failed = result.exit_status != 0
        if not quiet or failed:
            self.record(step, level="error" if failed and check else "info", data=data)
        if failed and check:
            detail = self.redact((result.stderr or result.stdout).strip())
            if NO_SPACE.search(result.stderr + result.stdout):
                raise SSHError("disk_full", f"{step}: no space left on the host: {detail}",
                               step=step)  # fmt: skip
            raise SSHError(
                "command_failed",
                f"{step}: exit status {result.exit_status}: {detail[-500:] or 'no output'}",
                step=step,
            )
        return result

    def _clip(self, text: str) -> str:
        text = self.redact(text)
        return text if len(text) <= EVENT_OUTPUT_LIMIT else "…" + text[-EVENT_OUTPUT_LIMIT:]

    # --- prerequisites -------------------------------------------------------------------

    def probe(self, *, uninstall: bool = False) -> HostFacts:
        """Check everything the agent needs; one error lists everything that is missing.
        An uninstall needs only root (or passwordless sudo)."""
        parent = self.prefix.rsplit("/", 1)[0] or "/"
        result = self.sh(f"PREFIX_PARENT={q(parent)}\n{PROBE}", step="prerequisites", root=False)
        raw = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        uid = int(raw.get("uid") or -1)
        self.as_root = uid == 0
        missing = self._missing_root(raw, uid)
        if not uninstall:
            missing += self._missing_for_agent(raw, parent)
        if missing:
            raise SSHError(
                "prerequisite_missing",
                "prerequisites missing: " + "; ".join(missing),
                step="prerequisites",
                missing=missing,
            )
        python = _version(raw.get("python", ""))
        facts = HostFacts(
            uid=uid,
            python=python,
            python_full=raw.get("python", ""),
            glibc=_version(raw["glibc"]) if raw.get("glibc") else (2, 17),
            arch=raw.get("arch", ""),
            systemd=raw.get("systemd") == "yes",
            raw=raw,
        )
        self.record("prerequisites met", data={"facts": raw})
        return facts

    def _missing_root(self, raw: dict[str, str], uid: int) -> list[str]:
        user = raw.get("user", "?")
        if uid == 0:
            return []
        if not self.sudo:
            return [
                f"root or passwordless sudo (logged in as {user!r}, uid {uid}; "
                "log in as root or set sudo=true)"
            ]
        if raw.get("sudo") == "ok":
            return []
        why = "sudo is not installed" if raw.get("sudo") == "absent" else "sudo asks for a password"
        return [f"passwordless sudo for {user!r} ({why})"]

    def _missing_for_agent(self, raw: dict[str, str], parent: str) -> list[str]:
        missing = []
        python = _version(raw.get("python", ""))
        if python < MIN_PYTHON:
            found = raw.get("python") or "no python3 on PATH"
            missing.append(f"Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (found: {found})")
        elif raw.get("venv") != "yes":
            missing.append("the Python venv module with ensurepip (Debian: python3-venv)")
        if int(raw.get("userns") or 0) <= 0:
            missing.append("user namespaces (user.max_user_namespaces is 0)")
        if raw.get("overlay") == "no":
            missing.append("overlay filesystem support in the kernel")
        if raw.get("cgroup") != "yes":
            missing.append("a mounted cgroup hierarchy")
        if raw.get("systemd") != "yes" and raw.get("setsid") != "yes":
            missing.append("setsid (util-linux) to supervise the agent without systemd")
        if raw.get("tar") != "yes":
            missing.append("tar")
        free_mb = int(raw.get("disk_free_kb") or 0) // 1024
        if free_mb < self.min_free_mb:
            missing.append(
                f"{self.min_free_mb} MiB free disk under {raw.get('disk_dir', parent)} "
                f"(found {free_mb} MiB)"
            )
        return missing

    # --- install -------------------------------------------------------------------------

    def installed_version(self) -> str:
        result = self.sh(
            f"cat {q(self.prefix + '/VERSION')} 2>/dev/null || true", step="installed version",
            quiet=True,
        )  # fmt: skip
        return result.stdout.strip()

    def stage(self, bundle_path: str, bundle_sha256: str) -> None:
        """Upload the bundle and build ``<prefix>.new`` with an offline venv."""
        new = self.prefix + ".new"
        upload_dir = self.sh("mktemp -d /tmp/corral-bundle.XXXXXXXX", step="upload dir",
                             root=False, quiet=True).stdout.strip()  # fmt: skip
        if not re.match(r"^/tmp/corral-bundle\.[A-Za-z0-9]+$", upload_dir):
            raise SSHError("command_failed", f"mktemp gave {upload_dir!r}", step="upload")
        remote = upload_dir + "/bundle.tar.gz"
        try:
            size = self.session.put(bundle_path, remote, step="upload")
            self.record("bundle uploaded", data={"bytes": size, "sha256": bundle_sha256})
            script = f"""
set -e
rm -rf {q(new)}
mkdir -p {q(new)}
chmod 0755 {q(new)}
echo "{bundle_sha256}  "{q(remote)} | sha256sum -c - >/dev/null
tar -xzf {q(remote)} -C {q(new)}
"""
            self.sh(script, step="unpack bundle", timeout=300)
        finally:
            # Never let a failed clean-up hide the error that brought us here.
            with contextlib.suppress(SSHError):
                self.sh(f"rm -rf {q(upload_dir)}", step="remove upload", root=False,
                        check=False, quiet=True, timeout=30)  # fmt: skip
        site = "lib/python3*/site-packages"
        script = f"""
set -e
cd {q(new)}
python3 -m venv venv
./venv/bin/python -m pip install --no-index --find-links wheelhouse --disable-pip-version-check \
    --no-cache-dir --no-compile -q -r requirements.txt
# The agent's code lives in lib/; a relative .pth keeps the venv relocatable (staged in .new).
for d in venv/{site}; do echo ../../../../lib > "$d/corral-agent.pth"; done
./venv/bin/python -c 'import agent, celery; print("agent", agent.__version__)'
mkdir -p run log
"""
        self.sh(script, step="create venv (offline)", timeout=600)

    def stop(self, *, step: str = "stop agent") -> None:
        """Stop the agent (not its containers) if one is installed under the prefix."""
        p = q(self.prefix)
        script = f"""
if [ -d /run/systemd/system ] && [ -f {UNIT_PATH} ] && \
   grep -q {q(self.prefix + "/venv/")} {UNIT_PATH}; then
  systemctl stop {UNIT_NAME} || true
fi
if [ -x {p}/bin/corral-agentctl ]; then sh {p}/bin/corral-agentctl {p} stop; fi
true
"""
        self.sh(script, step=step, timeout=60)

    def swap(self) -> bool:
        """Move identity and logs into the staged tree and swap it in. Returns True when a
        previous install was kept as ``<prefix>.old`` (for rollback)."""
        p, new, old = q(self.prefix), q(self.prefix + ".new"), q(self.prefix + ".old")
        moves = "\n".join(
            f"  if [ -e {p}/{name} ]; then rm -rf {new}/{name}; mv {p}/{name} {new}/{name}; fi"
            for name in PRESERVED
        )
        script = f"""
set -e
rm -rf {old}
if [ -d {p} ]; then
{moves}
  mv {p} {old}
  echo previous
fi
mv {new} {p}
"""
        return "previous" in self.sh(script, step="swap in new version").stdout

    def enroll(self, *, server: str, token: str, name: str, address: str) -> None:
        p = self.prefix
        script = (
            f"{q(p + '/venv/bin/python')} -m agent --config {q(p + '/agent.json')} enroll "
            f"--server {q(server)} --token {q(token)} --state-dir {q(p + '/state')} "
            f"--name {q(name)} --address {q(address)}"
        )
        try:
            self.sh(script, step="enroll", timeout=60)
        except SSHError as exc:
            if exc.code == "command_failed":
                raise SSHError("enrollment_failed", exc.message, step="enroll") from None
            raise

    def start(self, facts: HostFacts) -> None:
        p = q(self.prefix)
        if facts.systemd:
            script = f"""
set -e
sed -e "s|@PREFIX@|"{p}"|g" {p}/share/corral-agent.service.in > {UNIT_PATH}.tmp
mv {UNIT_PATH}.tmp {UNIT_PATH}
systemctl daemon-reload
systemctl enable {UNIT_NAME}
systemctl restart {UNIT_NAME}
"""
            self.sh(script, step="start agent (systemd)", timeout=60)
        else:
            self.sh(f"sh {p}/bin/corral-agentctl {p} start", step="start agent (supervised)",
                    timeout=30)  # fmt: skip

    def commit(self) -> None:
        self.sh(f"rm -rf {q(self.prefix + '.old')}", step="remove previous version")

    def rollback(self, *, swapped: bool, had_previous: bool, facts: HostFacts | None) -> None:
        """Undo an install that failed: restore the previous version or remove ours."""
        p, new, old = q(self.prefix), q(self.prefix + ".new"), q(self.prefix + ".old")
        try:
            if swapped:
                self.stop(step="rollback: stop new agent")
                if had_previous:
                    moves = "\n".join(
                        f"if [ -e {p}/{n} ]; then rm -rf {old}/{n}; mv {p}/{n} {old}/{n}; fi"
                        for n in PRESERVED
                    )
                    self.sh(f"set -e\n{moves}\nrm -rf {p}\nmv {old} {p}",
                            step="rollback: restore previous version")  # fmt: skip
                    if facts is not None:
                        self.start(facts)
                else:
                    self.sh(self._remove_script(), step="rollback: remove new install")
            self.sh(f"rm -rf {new}", step="rollback: remove staging", quiet=True)
        except SSHError as exc:
            self.record(f"rollback incomplete: {exc.message}", level="error")
            raise

    def _remove_script(self) -> str:
        p, new, old = q(self.prefix), q(self.prefix + ".new"), q(self.prefix + ".old")
        return f"""
set -e
if [ -f {UNIT_PATH} ] && grep -q {q(self.prefix + "/venv/")} {UNIT_PATH}; then
  if [ -d /run/systemd/system ]; then systemctl disable --now {UNIT_NAME} || true; fi
  rm -f {UNIT_PATH}
  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
fi
rm -rf {p} {new} {old}
"""

    # --- uninstall -----------------------------------------------------------------------

    def remaining_containers(self) -> list[str]:
        """Container ids the agent's runtime still has state for (they are not stopped)."""
        p = q(self.prefix)
        script = f"""
root=$({p}/venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1])).get("runtime_root", ""))' {p}/agent.json 2>/dev/null)
[ -n "$root" ] && [ -d "$root" ] && ls -1 "$root" 2>/dev/null
true
"""  # noqa: E501
        out = self.sh(script, step="list containers", quiet=True).stdout
        return [line for line in out.splitlines() if re.match(r"^[A-Za-z0-9_.-]+$", line)]

    def uninstall(self) -> list[str]:
        """Stop the agent, remove unit, files and credentials. Returns containers left."""
        remaining = self.remaining_containers()
        self.stop()
        self.sh(self._remove_script(), step="remove agent files, unit and credentials")
        check = self.sh(
            f"[ -e {q(self.prefix)} ] || [ -e {q(self.prefix + '.new')} ] && echo left || true",
            step="verify removal",
            quiet=True,
        )
        if "left" in check.stdout:
            raise SSHError("command_failed", f"{self.prefix} is still present", step="uninstall")
        return remaining
