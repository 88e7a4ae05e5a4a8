"""Strict checks of every host-derived value before it reaches a connection or a remote command.

Remote commands are also built with ``shlex.quote``; these regexes are the first wall, so a
value such as ``root; rm -rf /`` or a prefix with ``$(...)`` is refused before any connection.
"""

from __future__ import annotations

import ipaddress
import re

from hosts.ssh.errors import SSHError

HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
PREFIX_RE = re.compile(r"^(/[A-Za-z0-9_][A-Za-z0-9._-]{0,63}){1,16}$")
FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
    }
)
# Install prefixes that would be catastrophic to stage over or remove.
FORBIDDEN_PREFIXES = frozenset(
    {
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib64",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/usr/local",
        "/var/lib",
    }
)


def _invalid(field: str, message: str) -> SSHError:
    return SSHError("invalid_input", f"{field}: {message}", step="validate", field=field)


def validate_address(value: str) -> str:
    """A DNS name or an IP address (v4 or v6), nothing else."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not isinstance(value, str) or not HOSTNAME_RE.match(value):
        raise _invalid("address", f"{value!r} is neither an IP address nor a valid host name")
    return value


def validate_port(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise _invalid("port", f"{value!r} is not a TCP port (1-65535)")
    return value


def validate_user(value: str) -> str:
    if not isinstance(value, str) or not USER_RE.match(value):
        raise _invalid(
            "user",
            f"{value!r} is not a valid user name (lower-case letters, digits, '_' and '-', "
            "starting with a letter or '_', at most 32 characters)",
        )
    return value


def validate_prefix(value: str) -> str:
    if (
        not isinstance(value, str)
        or not PREFIX_RE.match(value)
        or any(part in (".", "..") for part in value.split("/"))
    ):
        raise _invalid(
            "install_prefix",
            f"{value!r} is not an absolute path of plain names (letters, digits, '.', '_', '-')",
        )
    if value.rstrip("/") in FORBIDDEN_PREFIXES:
        raise _invalid("install_prefix", f"{value!r} is a system directory, not an install prefix")
    return value


def validate_fingerprint(value: str) -> str:
    if not isinstance(value, str) or not FINGERPRINT_RE.match(value):
        raise _invalid(
            "host_key_fingerprint",
            f"{value!r} is not an OpenSSH SHA256 fingerprint (SHA256: and 43 base64 characters)",
        )
    return value


def validate_key_type(value: str) -> str:
    if value not in KEY_TYPES:
        raise _invalid("host_key_type", f"{value!r} is not one of {', '.join(sorted(KEY_TYPES))}")
    return value


def validate_host_name(value: str) -> str:
    """The name the agent enrolls under (the control plane's Host.name rule)."""
    if not isinstance(value, str) or not re.match(
        r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$", value
    ):
        raise _invalid("name", f"{value!r} is not a valid host name")
    return value
