"""Rules for a container's published ports and activation sockets, shared by the model's
``clean()`` and the API serializer (so the API, the UI form and the admin refuse the same
input with the same sentence, naming the item and its field: ``sockets[1].port``)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from django.core.exceptions import ValidationError

# An agent holds no permission to publish or bind host ports below this for a container.
PRIVILEGED_PORTS_BELOW = 1024
SOCKET_PROTOCOLS = ("tcp", "udp", "unix")
MAX_SOCKETS = 16
# LISTEN_FDNAMES joins the names with ':', so a name must be a plain word.
SOCKET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
_INET_KEYS = {"name", "protocol", "host_ip", "port"}
_UNIX_KEYS = {"name", "protocol", "path"}


def _error(field: str, message: str) -> ValidationError:
    return ValidationError(f"{field}: {message}")


def check_host_port(field: str, value: Any) -> int:
    """A host port: an integer 1-65535, not privileged. Returns it."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise _error(field, f"{value!r} is not between 1 and 65535.")
    if value < PRIVILEGED_PORTS_BELOW:
        raise _error(field, f"{value} is privileged (<{PRIVILEGED_PORTS_BELOW}) and not permitted.")
    return value


def socket_list(value: Any) -> list[dict[str, Any]]:
    """Validate the sockets of a socket-activated container; return them normalised:
    ``{name, protocol: tcp|udp, host_ip, port}`` or ``{name, protocol: unix, path}``."""
    if not isinstance(value, list):
        raise _error("sockets", "must be a list.")
    if len(value) > MAX_SOCKETS:
        raise _error("sockets", f"at most {MAX_SOCKETS} sockets.")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        socket = _socket(f"sockets[{i}]", item)
        for j, earlier in enumerate(out):
            if earlier["name"] == socket["name"]:
                raise _error(f"sockets[{i}].name", f"{socket['name']!r} is also sockets[{j}].")
        out.append(socket)
    return out


def _socket(field: str, item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _error(field, "must be an object.")
    name = item.get("name")
    if not isinstance(name, str) or not SOCKET_NAME_RE.match(name):
        raise _error(f"{field}.name", "1-63 letters, digits, '_', '.', '-', starting with one.")
    protocol = item.get("protocol", "tcp")
    if protocol not in SOCKET_PROTOCOLS:
        raise _error(f"{field}.protocol", f"{protocol!r} is not one of tcp, udp, unix.")
    allowed = _UNIX_KEYS if protocol == "unix" else _INET_KEYS
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise _error(f"{field}.{unknown[0]}", f"does not apply to a {protocol} socket.")
    if protocol == "unix":
        path = item.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise _error(f"{field}.path", "a unix socket needs an absolute path.")
        if len(path.encode()) > UNIX_PATH_MAX or "\0" in path:
            raise _error(f"{field}.path", f"at most {UNIX_PATH_MAX} bytes, no NUL.")
        return {"name": name, "protocol": protocol, "path": path}
    port = check_host_port(f"{field}.port", item.get("port"))
    host_ip = item.get("host_ip", "127.0.0.1")
    try:
        if not isinstance(host_ip, str):
            raise ValueError(host_ip)
        host_ip = str(ipaddress.ip_address(host_ip))
    except ValueError:
        raise _error(f"{field}.host_ip", f"{host_ip!r} is not an IP address.") from None
    return {"name": name, "protocol": protocol, "host_ip": host_ip, "port": port}
