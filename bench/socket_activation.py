"""Time from connect() to the first response byte: a socket-activated server (started by the
agent's Activator on that very connection) against the same server already running.

Both serve the same tiny program, given its listening socket as fd 3 (LISTEN_FDS), run with
the same interpreter, in this process. The kinds of run are interleaved (one of each per
round) so that load from other processes hits them alike. Also printed: a bare start+exit of
the same interpreter, and the Activator's own share (connect -> start callback -> forked).

    .venv/bin/python bench/socket_activation.py [--runs 30]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.network.activation import Activator, bind_socket, spawn_activated
from agent.protocol.containers import SocketSpec

SERVER = (
    "import socket\n"
    "s = socket.socket(fileno=3)\n"
    "s.setblocking(True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(b'x')\n"
    "    c.close()\n"
)
ARGV = [sys.executable, "-S", "-E", "-c", SERVER]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def first_byte(port: int) -> float:
    """Seconds from the start of connect() (the SYN) to the first byte received."""
    with socket.socket() as s:
        s.settimeout(10)
        t0 = time.perf_counter()
        s.connect(("127.0.0.1", port))
        s.recv(1)
        return time.perf_counter() - t0


class Child:
    """start/stop callbacks; records when the Activator called start and when fork returned."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.called = 0.0
        self.forked = 0.0

    def start(self, fds: list[int]) -> int:
        self.called = time.perf_counter()
        self.pid = spawn_activated(ARGV, fds, ["web"])
        self.forked = time.perf_counter()
        return self.pid

    def stop(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = None


def one_activated() -> tuple[float, float]:
    """(connect -> first byte, connect -> child forked) for one activation."""
    port = free_port()
    child = Child()
    act = Activator([SocketSpec(name="web", port=port)], child.start, child.stop, None)
    act.arm()
    try:
        t0 = time.perf_counter()
        total = first_byte(port)
        return total, child.forked - t0
    finally:
        act.close()


def one_interpreter() -> float:
    t0 = time.perf_counter()
    pid = spawn_activated([*ARGV[:3], "-c", "import socket"], [], [])
    os.waitpid(pid, 0)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    port = free_port()
    sock = bind_socket(SocketSpec(name="web", port=port))
    peer = Child()
    peer.start([sock.fileno()])
    first_byte(port)  # the always-running peer is up
    one_activated()  # warm caches
    running, activated, agent_share, interpreter = [], [], [], []
    try:
        for _ in range(args.runs):
            running.append(first_byte(port))
            total, share = one_activated()
            activated.append(total)
            agent_share.append(share)
            interpreter.append(one_interpreter())
    finally:
        peer.stop()
        sock.close()

    def ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    print(f"runs={args.runs} (interleaved) server: {' '.join(ARGV[:3])} -c <accept loop>")
    print(f"always running (peer)  : median {ms(running):9.3f} ms connect -> first byte")
    print(f"socket-activated       : median {ms(activated):9.3f} ms connect -> first byte")
    print(f"ratio activated/running: {ms(activated) / ms(running):9.1f}x")
    print(f"  of which agent (epoll wake + fork + fd placing): {ms(agent_share):.3f} ms")
    print(f"  reference, interpreter start+exit alone       : {ms(interpreter):.3f} ms")


if __name__ == "__main__":
    main()
