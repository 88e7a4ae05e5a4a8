"""OCI ``process.terminal``: a pseudo-terminal for the container process, its master handed to
the caller over ``--console-socket`` (SCM_RIGHTS), as runc and crun do.

The pair is made inside the container, after ``pivot_root``, from the container's own devpts
instance (``/dev/ptmx`` -> ``pts/ptmx``), so the process sees its terminal at ``/dev/pts/N``.
The init sends the master to the shim on the sync channel (the console socket's path is a
host path the init can no longer reach); the shim passes it on and keeps no copy: the caller
owns the terminal, as with runc.
"""

from __future__ import annotations

import fcntl
import os

from agent.runtime.errors import RuntimeFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.runtime.config import Config

# ioctl requests (asm-generic/ioctls.h, the same on x86_64 and arm64).
TIOCSCTTY = 0x540E
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
# What runc sends beside the fd (the master's name); receivers read only the fd.
CONSOLE_NAME = b"/dev/ptmx"


def check_console(config: Config, console_socket: str | None) -> None:
    """A terminal needs a console socket to hand its master to, and only a terminal uses one
    (runc refuses both mismatches the same way)."""
    if config.process.terminal and not console_socket:
        raise RuntimeFailure("console-socket", "process.terminal needs --console-socket")
    if console_socket and not config.process.terminal:
        raise RuntimeFailure("console-socket", "--console-socket needs process.terminal: true")


def open_pty() -> tuple[int, int]:
    """(master, slave) of a new pty from this mount namespace's ``/dev/ptmx``. The slave is
    opened through the master (TIOCGPTPEER), not by a path under /dev/pts."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, b"\0\0\0\0")  # unlockpt
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    except BaseException:
        os.close(master)
        raise
    return master, slave


def become_terminal_stdio(slave: int) -> None:
    """Make ``slave`` our controlling terminal (we lead a new session) and fds 0, 1, 2."""
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for target in (0, 1, 2):
        os.dup2(slave, target, inheritable=True)
    if slave > 2:
        os.close(slave)


def send_console(path: str, master: int) -> None:
    """Connect to the caller's console socket and send it the pty master (then close ours)."""
    import socket  # only for a console: socket.py costs every CLI start ~1.5 ms

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(path)
            socket.send_fds(conn, [CONSOLE_NAME], [master])
    except OSError as exc:
        raise RuntimeFailure(
            "console-socket", f"{path}: {exc.strerror or exc}", exc.errno
        ) from None
    finally:
        os.close(master)
