"""The systemd path of socket activation: ``.socket`` + ``.service`` units doing what
:class:`agent.network.activation.Activator` does, for hosts where systemd is PID 1.

Mapping:

* each :class:`SocketSpec` becomes its own ``corral-<id>-<name>.socket`` unit, because
  ``FileDescriptorName=`` names every fd of one unit alike; ``ListenStream=`` (tcp, unix) or
  ``ListenDatagram=`` (udp), ``ReusePort=no`` and ``Service=`` pointing at the service;
* the service ``corral-<id>.service`` lists them in ``Sockets=`` and runs the command;
  systemd sets ``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES`` itself. systemd orders the
  fds by socket unit, so a server should look them up by name (``sd_listen_fds_with_names``);
* idle stop has no systemd equivalent for services: the server must exit on its own after
  ``idle_stop_seconds``; systemd restarts it on the next connection (the socket stays open).

Rendering is pure (no systemd needed), so it is unit-tested here; installing the units
(``systemctl daemon-reload``, ``start *.socket``) belongs to the host's systemd driver.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent.network.errors import NetworkError
from agent.protocol.containers import SocketSpec

_UNIT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")


def _quote(arg: str) -> str:
    """One ExecStart= word: double-quoted, with systemd's escapes for \\, " and $/%."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def _listen(spec: SocketSpec) -> str:
    if spec.protocol == "unix":
        return f"ListenStream={spec.path}"
    host = f"[{spec.host_ip}]" if ":" in spec.host_ip else spec.host_ip
    key = "ListenDatagram" if spec.protocol == "udp" else "ListenStream"
    return f"{key}={host}:{spec.port}"


def socket_units(
    container_id: str, sockets: Sequence[SocketSpec], exec_start: Sequence[str]
) -> dict[str, str]:
    """Unit file name -> content for one socket-activated container."""
    if not _UNIT_ID_RE.match(container_id):
        raise NetworkError("container_id", "not usable in a unit name")
    if not sockets:
        raise NetworkError("sockets", "at least one socket is needed")
    if not exec_start:
        raise NetworkError("command", "an activated container needs a command")
    service = f"corral-{container_id}.service"
    units: dict[str, str] = {}
    for spec in sockets:
        try:
            spec.validate()
        except ValueError as exc:
            raise NetworkError(f"sockets.{spec.name}", str(exc)) from None
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", spec.name):
            raise NetworkError(f"sockets.{spec.name}", "name: letters, digits, '_', '.', '-'")
        units[f"corral-{container_id}-{spec.name}.socket"] = (
            "[Unit]\n"
            f"Description=Corral container {container_id} socket {spec.name}\n\n"
            "[Socket]\n"
            f"{_listen(spec)}\n"
            f"FileDescriptorName={spec.name}\n"
            f"Service={service}\n\n"
            "[Install]\n"
            "WantedBy=sockets.target\n"
        )
    socket_names = " ".join(name for name in units)
    units[service] = (
        "[Unit]\n"
        f"Description=Corral container {container_id}\n"
        f"Requires={socket_names}\n"
        f"After={socket_names}\n\n"
        "[Service]\n"
        f"Sockets={socket_names}\n"
        f"ExecStart={' '.join(_quote(a) for a in exec_start)}\n"
    )
    return units
