"""Socket activation with real sockets on loopback and real processes (no root needed)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.network.activation import Activator, listen_env, place_fds, spawn_activated
from agent.network.errors import NetworkError
from agent.protocol.containers import SocketSpec

# Answers every connection on the first stream socket with what it was given.
SERVER = textwrap.dedent(
    """
    import os, socket
    n = int(os.environ["LISTEN_FDS"])
    assert os.environ["LISTEN_PID"] == str(os.getpid()), "LISTEN_PID is not mine"
    socks = [socket.socket(fileno=3 + i) for i in range(n)]
    kinds = ",".join(f"{s.family.name}/{s.type.name}" for s in socks)
    names = os.environ["LISTEN_FDNAMES"]
    if socks[0].type == socket.SOCK_DGRAM:  # a datagram service answers datagrams
        socks[0].setblocking(True)
        while True:
            data, peer = socks[0].recvfrom(100)
            socks[0].sendto(f"pid={os.getpid()} got={data.decode()}".encode(), peer)
    first = next(s for s in socks if s.type == socket.SOCK_STREAM)
    first.setblocking(True)
    while True:
        conn, _ = first.accept()
        conn.sendall(f"pid={os.getpid()} fds={n} names={names} kinds={kinds}".encode())
        if os.environ.get("HOLD"):
            conn.recv(1)  # keep the connection until the client closes it
        conn.close()
        if os.environ.get("EXIT_AFTER_ONE"):
            break
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(address: tuple[str, int] | str) -> str:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(address)
        return s.recv(200).decode()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


class Launcher:
    """start/stop callbacks that run SERVER as the activated process."""

    def __init__(self, names: list[str], env: dict[str, str] | None = None) -> None:
        self.names = names
        self.pids: list[int] = []
        self.running: int | None = None
        self.env = {**os.environ, **(env or {})}

    def start(self, fds: list[int]) -> int:
        pid = spawn_activated([sys.executable, "-c", SERVER], fds, self.names, self.env)
        self.pids.append(pid)
        self.running = pid
        return pid

    def stop(self) -> None:
        if self.running is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.running, signal.SIGTERM)
            os.waitpid(self.running, 0)
            self.running = None


@pytest.fixture
def activators() -> Iterator[Callable[..., tuple[Activator, Launcher]]]:
    made: list[tuple[Activator, Launcher]] = []

    def make(
        specs: list[SocketSpec], idle: int | None = None, env: dict[str, str] | None = None
    ) -> tuple[Activator, Launcher]:
        launcher = Launcher([s.name for s in specs], env)
        act = Activator(specs, launcher.start, launcher.stop, idle)
        made.append((act, launcher))
        return act, launcher

    yield make
    for act, launcher in made:
        act.close()
        launcher.stop()
        for pid in launcher.pids:  # reap any that exited on their own
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def test_listen_env_follows_the_systemd_protocol() -> None:
    assert listen_env(42, ["web", "dns"]) == {
        "LISTEN_FDS": "2",
        "LISTEN_PID": "42",
        "LISTEN_FDNAMES": "web:dns",
    }


def test_place_fds_moves_even_crossed_fds_to_3_and_clears_cloexec() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            a, b = socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            # Put them on 4 and 3, crossed, to force the parking step.
            os.dup2(a.fileno(), 4, inheritable=False)
            os.dup2(b.fileno(), 3, inheritable=False)
            place_fds([4, 3])
            s3, s4 = socket.socket(fileno=3), socket.socket(fileno=4)
            ok = (
                s3.type == socket.SOCK_STREAM
                and s4.type == socket.SOCK_DGRAM
                and os.get_inheritable(3)
                and os.get_inheritable(4)
            )
            os.write(w, b"ok" if ok else b"bad")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 10) == b"ok"
    os.close(r)
    os.waitpid(pid, 0)


def test_container_starts_only_on_first_connection_and_answers_it(activators) -> None:
    port = free_port()
    act, launcher = activators([SocketSpec(name="web", port=port)])
    act.arm()
    time.sleep(0.3)
    assert launcher.pids == [] and act.pid is None  # nothing runs before a client comes

    reply = ask(("127.0.0.1", port))

    assert launcher.pids == [act.pid]
    assert reply == f"pid={act.pid} fds=1 names=web kinds=AF_INET/SOCK_STREAM"
    assert ask(("127.0.0.1", port)) == reply  # the same process serves the next ones
    assert act.starts == 1


def test_idle_container_is_stopped_and_restarted_by_the_next_connection(activators) -> None:
    port = free_port()
    act, launcher = activators([SocketSpec(name="web", port=port)], idle=1)
    act.arm()
    first = ask(("127.0.0.1", port))
    first_pid = launcher.pids[0]
    assert first.startswith(f"pid={first_pid} ")

    wait_for(lambda: act.stops == 1, timeout=6)
    assert launcher.running is None
    with pytest.raises(ProcessLookupError):
        os.kill(first_pid, 0)  # stopped and reaped

    second = ask(("127.0.0.1", port))
    assert len(launcher.pids) == 2 and second.startswith(f"pid={launcher.pids[1]} ")
    assert act.starts == 2


@pytest.mark.slow
def test_connections_keep_an_idle_timer_from_firing(activators) -> None:
    port = free_port()
    act, launcher = activators([SocketSpec(name="web", port=port)], idle=1)
    act.arm()
    for _ in range(6):  # 1.8 s of traffic, a connection every 0.3 s
        ask(("127.0.0.1", port))
        time.sleep(0.3)
    assert act.stops == 0 and len(launcher.pids) == 1
    wait_for(lambda: act.stops == 1, timeout=6)


@pytest.mark.slow
def test_an_open_connection_keeps_the_container_from_idle_stop(activators) -> None:
    port = free_port()
    act, _ = activators([SocketSpec(name="web", port=port)], idle=1, env={"HOLD": "1"})
    act.arm()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
        assert held.recv(200).startswith(b"pid=")
        time.sleep(2.5)  # more than twice the idle time, with no new connection
        assert act.stops == 0 and act.pid is not None
    wait_for(lambda: act.stops == 1, timeout=6)


def test_all_socket_kinds_are_passed_in_order_with_names(activators, tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")
    specs = [
        SocketSpec(name="ctl", protocol="unix", path=path),
        SocketSpec(name="dns", protocol="udp", port=free_port()),
        SocketSpec(name="web", port=free_port()),
    ]
    act, _ = activators(specs)
    act.arm()
    reply = ask(path)
    assert "fds=3 names=ctl:dns:web" in reply
    assert "kinds=AF_UNIX/SOCK_STREAM,AF_INET/SOCK_DGRAM,AF_INET/SOCK_STREAM" in reply
    act.close()
    assert not Path(path).exists()


def test_a_datagram_starts_a_udp_service_which_receives_that_datagram(activators) -> None:
    port = free_port()
    act, launcher = activators([SocketSpec(name="dns", protocol="udp", port=port)])
    act.arm()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"first", ("127.0.0.1", port))
        reply = client.recv(100).decode()
    assert reply == f"pid={launcher.pids[0]} got=first" and act.starts == 1


def test_a_process_that_exits_by_itself_is_started_again(activators) -> None:
    port = free_port()
    act, launcher = activators([SocketSpec(name="web", port=port)], env={"EXIT_AFTER_ONE": "1"})
    act.arm()
    ask(("127.0.0.1", port))
    wait_for(lambda: act.pid is None)
    ask(("127.0.0.1", port))
    assert act.starts == 2 and len(launcher.pids) == 2


def test_a_start_whose_process_is_already_gone_is_retried() -> None:
    port = free_port()
    launcher = Launcher(["web"])
    dead: list[int] = []

    def start(fds: list[int]) -> int:
        if not dead:  # first time: a process that is gone (and reaped) before we watch it
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            dead.append(pid)
            return pid
        return launcher.start(fds)

    act = Activator([SocketSpec(name="web", port=port)], start, launcher.stop, None)
    try:
        act.arm()
        reply = ask(("127.0.0.1", port))
        assert reply.startswith(f"pid={launcher.pids[0]} ")
        assert len(dead) == 1 and act.starts == 2
    finally:
        act.close()
        launcher.stop()


def test_bad_socket_input_names_the_field_and_binds_nothing(activators) -> None:
    def noop_start(fds: list[int]) -> int:
        return 0

    with pytest.raises(NetworkError) as err:
        Activator(
            [SocketSpec(name="a", port=1), SocketSpec(name="a", port=2)],
            noop_start,
            lambda: None,
            None,
        )
    assert err.value.field == "sockets"
    with pytest.raises(NetworkError) as err:
        Activator([SocketSpec(name="a", port=80)], noop_start, lambda: None, 0)
    assert err.value.field == "idle_stop_seconds"
    with pytest.raises(NetworkError) as err:
        Activator(
            [SocketSpec(name="u", protocol="unix", path="rel")], noop_start, lambda: None, None
        )
    assert err.value.field == "sockets.u"

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    free = free_port()
    act, _ = activators([SocketSpec(name="ok", port=free), SocketSpec(name="busy", port=busy)])
    with pytest.raises(NetworkError) as err:
        act.arm()
    assert err.value.field == "sockets.busy"
    with socket.socket() as probe:  # the first socket was released again
        probe.bind(("127.0.0.1", free))
    taken.close()


def test_a_failed_start_is_retried_and_the_queued_connection_still_answered() -> None:
    port = free_port()
    launcher = Launcher(["web"])
    failures: list[str] = []

    def flaky_start(fds: list[int]) -> int:
        if not failures:
            failures.append("image not pulled yet")
            raise RuntimeError(failures[0])
        return launcher.start(fds)

    act = Activator([SocketSpec(name="web", port=port)], flaky_start, launcher.stop, None)
    try:
        act.arm()
        assert ask(("127.0.0.1", port)).startswith("pid=")
        assert len(failures) == 1 and act.starts == 1
    finally:
        act.close()
        launcher.stop()
