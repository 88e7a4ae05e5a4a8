"""Host side of the Corral test guest: build (cached) image, per-run payload disk, a private
Redis and a control-plane stand-in on loopback, one qemu TCG boot, parsed scenario results.

The guest reaches the host only through qemu user networking with ``restrict=on``: guest
``10.0.2.100:6379`` is forwarded to the private Redis and ``10.0.2.101:8000`` to the HTTP
server, both on 127.0.0.1, one ``socat`` per connection (``guestfwd=...-cmd:``), so a Celery
agent can open as many broker connections as it likes. Every helper process is stopped by
its PID when the run ends, whatever happened.

CLI: ``python tests/e2e/guest/guest_harness.py [--keep] [--only SCENARIO]``.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import http.server
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
BUILD_SCRIPT = HERE / "build.sh"
GUEST_REDIS = "10.0.2.100:6379"
GUEST_HTTP = "10.0.2.101:8000"
GUEST_SERVER = "10.0.2.102:8000"  # the real control plane, when the run has one
RESULT_RE = re.compile(r"^SCENARIO (\S+) (PASS|FAIL|SKIP) ?(.*)$")
LOG_RE = re.compile(r"^LOG (\S+) (.*)$")


@dataclass
class ControlPlane:
    """A real control plane for the guest's agent to enroll with: its HTTP port on host
    loopback, extra ``corral.*`` kernel arguments (the enrollment token), and ``tick``,
    called about five times a second while the guest runs (it may answer the guest through
    the broker, e.g. once the host has seen the agent's reports)."""

    http_port: int
    cmdline: dict[str, str]
    tick: Callable[[int], None]


# Given the private Redis port, sets up a control plane around one boot.
ControlPlaneFactory = Callable[[int], contextlib.AbstractContextManager[ControlPlane]]


class GuestError(Exception):
    """The guest could not be built, booted or did not report; the message names the step."""


@dataclass(frozen=True)
class Scenario:
    name: str
    status: str
    detail: str
    logs: tuple[str, ...]


@dataclass
class GuestRun:
    """What one boot reported. ``timings`` in seconds from qemu start."""

    scenarios: dict[str, Scenario]
    begin_seen: bool
    end_line: str | None
    console: str
    results_raw: str
    timings: dict[str, float] = field(default_factory=dict)
    host_saw_guest_key: str | None = None
    control_plane_saw: dict[str, Any] = field(default_factory=dict)

    def avc_denials(self) -> list[str]:
        """AVC denials the guest's kernel logged (the runner dumps them at the end)."""
        return [
            line.strip("\r\x00 ")[4:]
            for line in self.results_raw.splitlines()
            if line.startswith("AVC ")
        ]


def build_image(timeout: float = 900.0) -> Path:
    """Run build.sh (a cached image returns at once); the image directory.

    build.sh runs in its own process group, which is killed whole if it overruns or the
    caller is interrupted, so no debootstrap or chroot outlives the test.
    """
    proc = subprocess.Popen(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise GuestError(f"step build: build.sh did not finish within {timeout:g}s") from exc
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    if proc.returncode != 0:
        tail = "\n".join(err.splitlines()[-25:])
        raise GuestError(f"step build: build.sh exited {proc.returncode}:\n{tail}")
    image = Path(out.strip().splitlines()[-1])
    for name in ("vmlinuz", "initrd.img", "rootfs.img"):
        if not (image / name).is_file():
            raise GuestError(f"step build: {image / name} is missing")
    return image


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to our child's own process group (build.sh traps it and unmounts), then
    SIGKILL if it is still there after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def make_payload(workdir: Path) -> Path:
    """A small ext4 image with the repo's agent/ and the scenario code, made for every run."""
    tree = workdir / "payload"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")
    shutil.copytree(REPO / "agent", tree / "agent", ignore=ignore)
    shutil.copytree(HERE / "scenario", tree / "scenario", ignore=ignore)
    # Byte-compile on the host (same Python minor as the guest): imports under TCG are slow.
    compileall.compile_dir(str(tree), quiet=1)
    image = workdir / "payload.img"
    size_mb = 32 + sum(f.stat().st_size for f in tree.rglob("*") if f.is_file()) // (1 << 20) * 2
    proc = subprocess.run(
        [
            "mke2fs",
            "-q",
            "-t",
            "ext4",
            "-L",
            "corral-payload",
            "-d",
            str(tree),
            str(image),
            f"{size_mb}M",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise GuestError(f"step payload: mke2fs failed: {proc.stderr.strip()}")
    return image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _resp(*args: str) -> bytes:
    out = b"*%d\r\n" % len(args)
    for arg in args:
        data = arg.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def redis_command(port: int, *args: str) -> bytes:
    """One RESP command to the private Redis; the raw reply (the harness needs no client)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(_resp(*args))
        return sock.recv(65536)


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[int]:
    """A redis-server on a free 127.0.0.1 port, no persistence, stopped by PID at the end."""
    if shutil.which("redis-server") is None:
        raise GuestError("step redis: redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    log = open(workdir / "redis.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                if redis_command(port, "PING").startswith(b"+PONG"):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise GuestError(f"step redis: redis-server on port {port} did not answer")
            time.sleep(0.05)
        yield port
    finally:
        _stop(proc)
        log.close()


@contextlib.contextmanager
def control_plane_stand_in() -> Iterator[int]:
    """A loopback HTTP server standing in for the control plane: answers
    ``/corral-guest/<token>`` so the guest can prove the HTTP forward."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            prefix = "/corral-guest/"
            if not self.path.startswith(prefix):
                self.send_error(404)
                return
            body = f"control-plane-{self.path[len(prefix) :]}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s: by PID, only our own child."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def qemu_argv(
    image: Path,
    payload: Path,
    workdir: Path,
    rport: int,
    hport: int,
    token: str,
    only: tuple[str, ...] = (),
    server: ControlPlane | None = None,
) -> list[str]:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise GuestError("step qemu: qemu-system-x86_64 is not installed (qemu-system-x86)")
    if shutil.which("socat") is None:
        raise GuestError("step qemu: socat is not installed (the guest forwards use it)")
    append = (
        "console=ttyS0 security=selinux selinux=1 enforcing=1 panic=-1 loglevel=4 "
        f"systemd.unit=corral-guest.target corral.redis={GUEST_REDIS} corral.http={GUEST_HTTP} "
        f"corral.token={token}" + (f" corral.only={','.join(only)}" if only else "")
    )
    if server is not None:
        extra = {"server": GUEST_SERVER, **server.cmdline}
        append += "".join(f" corral.{key}={value}" for key, value in extra.items())
    rhost, rgport = GUEST_REDIS.split(":")
    hhost, hgport = GUEST_HTTP.split(":")
    netdev = (
        "user,id=n0,restrict=on,"
        f"guestfwd=tcp:{rhost}:{rgport}-cmd:socat - TCP:127.0.0.1:{rport},"
        f"guestfwd=tcp:{hhost}:{hgport}-cmd:socat - TCP:127.0.0.1:{hport}"
    )
    if server is not None:
        shost, sgport = GUEST_SERVER.split(":")
        netdev += f",guestfwd=tcp:{shost}:{sgport}-cmd:socat - TCP:127.0.0.1:{server.http_port}"
    # TCG only: /dev/kvm on these machines is PVM, which hangs stock kernels.
    return [
        qemu, "-accel", "tcg,thread=multi", "-cpu", "max", "-m", "1536", "-smp", "2",
        "-machine", "q35", "-kernel", str(image / "vmlinuz"), "-initrd",
        str(image / "initrd.img"), "-append", append,
        "-drive", f"file={image / 'rootfs.img'},if=virtio,format=raw,snapshot=on",
        "-drive", f"file={payload},if=virtio,format=raw,readonly=on",
        "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
        "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{workdir / 'console.log'}", "-serial", f"file:{workdir / 'results.log'}",
    ]  # fmt: skip


def parse_results(text: str) -> tuple[dict[str, Scenario], bool, str | None]:
    logs: dict[str, list[str]] = {}
    found: dict[str, tuple[str, str]] = {}
    begin, end = False, None
    for raw in text.splitlines():
        line = raw.strip("\r\x00 ")
        if line.startswith("BEGIN"):
            begin = True
        elif line.startswith("END"):
            end = line
        elif m := LOG_RE.match(line):
            logs.setdefault(m.group(1), []).append(m.group(2))
        elif m := RESULT_RE.match(line):
            found[m.group(1)] = (m.group(2), m.group(3))
    scenarios = {
        name: Scenario(name, status, detail, tuple(logs.get(name, ())))
        for name, (status, detail) in found.items()
    }
    return scenarios, begin, end


def boot(
    image: Path,
    workdir: Path,
    timeout: float = 720.0,
    only: tuple[str, ...] = (),
    control_plane: ControlPlaneFactory | None = None,
) -> GuestRun:
    """One guest boot with a fresh payload; returns what the scenarios reported.
    ``control_plane`` (optional) brings up a real control plane around the boot."""
    payload = make_payload(workdir)
    token = secrets.token_hex(8)
    results = workdir / "results.log"
    console = workdir / "console.log"
    with contextlib.ExitStack() as stack:
        rport = stack.enter_context(private_redis(workdir))
        hport = stack.enter_context(control_plane_stand_in())
        server = stack.enter_context(control_plane(rport)) if control_plane else None
        redis_command(rport, "SET", f"corral:host:{token}", f"host-{token}")
        argv = qemu_argv(image, payload, workdir, rport, hport, token, only, server)
        (workdir / "qemu.argv").write_text("\n".join(argv) + "\n")
        qlog = open(workdir / "qemu.log", "wb")  # noqa: SIM115 (closed in finally)
        start = time.monotonic()
        timings: dict[str, float] = {}
        proc = subprocess.Popen(argv, stdout=qlog, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - start
                text = results.read_text(errors="replace") if results.exists() else ""
                if "begin" not in timings and "BEGIN" in text:
                    timings["begin"] = round(elapsed, 1)
                if "\nEND " in f"\n{text}" and "end" not in timings:
                    timings["end"] = round(elapsed, 1)
                if "end" in timings and elapsed - timings["end"] > 30:
                    break  # reported, but did not power off: stop it below
                if elapsed > timeout:
                    break
                if server is not None:
                    server.tick(rport)
                time.sleep(0.2)
            timings["qemu_exit"] = round(time.monotonic() - start, 1)
            rc = proc.poll()
        finally:
            _stop(proc)
            qlog.close()
        guest_key = redis_command(rport, "GET", f"corral:guest:{token}")
    console_text = console.read_text(errors="replace") if console.exists() else ""
    scenarios, begin, end = parse_results(results.read_text(errors="replace")
                                          if results.exists() else "")  # fmt: skip
    run = GuestRun(scenarios, begin, end, console_text, results.read_text(errors="replace")
                   if results.exists() else "", timings)  # fmt: skip
    run.host_saw_guest_key = guest_key.decode(errors="replace").split("\r\n")[1] if (
        guest_key.startswith(b"$") and not guest_key.startswith(b"$-1")) else None  # fmt: skip
    if rc is None and end is None:
        tail = "\n".join(console_text.splitlines()[-30:])
        raise GuestError(f"step boot: no END from the guest within {timeout:g}s; console:\n{tail}")
    if rc not in (0, None):
        qemu_out = (workdir / "qemu.log").read_text(errors="replace")[-2000:]
        if not begin:
            raise GuestError(f"step qemu: qemu exited {rc} before the scenarios began:\n{qemu_out}")
    return run


@contextlib.contextmanager
def workdir(keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="corral-guest-run."))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument("--only", action="append", default=[], help="run just this scenario")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("must run as root", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    image = build_image()
    t1 = time.monotonic()
    with workdir(args.keep) as wd:
        run = boot(image, wd, only=tuple(args.only))
    t2 = time.monotonic()
    for sc in run.scenarios.values():
        for line in sc.logs:
            print(f"  {sc.name}: {line}")
        print(f"SCENARIO {sc.name} {sc.status} {sc.detail}")
    print(f"{run.end_line}; host saw guest key: {run.host_saw_guest_key}")
    print(f"build {t1 - t0:.1f}s, boot+scenarios {t2 - t1:.1f}s, timings {run.timings}")
    denials = run.avc_denials()
    print(f"AVC denials: {len(denials)}")
    for line in denials[:40]:
        print(f"  {line}")
    return 1 if any(sc.status == "FAIL" for sc in run.scenarios.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
