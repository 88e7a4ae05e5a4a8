"""paramiko sessions with a pinned host key, timeouts on every wait, and every failure mapped
to an ``SSHError`` code with a sentence an operator can act on.

There is no trust-on-first-use here: a connection only proceeds when the presented host key
matches the pinned SHA256 fingerprint and key type (``PinnedHostKeyPolicy``). Scanning a key for
the operator to confirm is a separate call (``scan_host_key``) that never authenticates.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import logging
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import paramiko

from hosts.ssh.errors import SSHError

logger = logging.getLogger(__name__)
OUTPUT_LIMIT = 256 * 1024  # bytes kept of a command's stdout/stderr each


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint (unpadded base64 of the key blob's SHA-256)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def key_type(key: paramiko.PKey) -> str:
    return key.get_name()


class HostKeyMismatch(paramiko.SSHException):
    """The server presented a key other than the pinned one."""


class PinnedHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accept exactly one key: the pinned fingerprint and type. Never adds keys anywhere."""

    def __init__(self, expected_fingerprint: str, expected_type: str) -> None:
        self.expected_fingerprint = expected_fingerprint
        self.expected_type = expected_type

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        got_fp, got_type = fingerprint(key), key_type(key)
        if got_fp != self.expected_fingerprint or got_type != self.expected_type:
            raise HostKeyMismatch(
                f"host key mismatch: expected {self.expected_fingerprint} "
                f"({self.expected_type}), got {got_fp} ({got_type})"
            )


@dataclass(frozen=True)
class Target:
    """What a connection needs. Secrets are plain here: this object lives only in memory."""

    address: str
    port: int
    user: str
    host_key_fingerprint: str
    host_key_type: str
    private_key: str = field(default="", repr=False)
    passphrase: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str
    seconds: float


def _host_key_algorithms(pinned_type: str) -> list[str]:
    """Host key algorithms to disable so the server offers the pinned type, not another one."""
    wanted = {pinned_type}
    if pinned_type == "ssh-rsa":
        wanted |= {"rsa-sha2-256", "rsa-sha2-512"}
    preferred: tuple[str, ...] = paramiko.Transport._preferred_keys  # type: ignore[attr-defined]
    return [alg for alg in preferred if alg not in wanted]


def _load_private_key(text: str, passphrase: str) -> paramiko.PKey:
    errors = []
    key_classes: list[type[paramiko.PKey]] = [
        paramiko.Ed25519Key,
        paramiko.ECDSAKey,
        paramiko.RSAKey,
    ]
    for cls in key_classes:
        try:
            return cls.from_private_key(io.StringIO(text), password=passphrase or None)
        except paramiko.PasswordRequiredException:
            raise SSHError(
                "authentication_failed",
                "the private key is encrypted and no passphrase was given",
                step="connect",
            ) from None
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(str(exc))
    raise SSHError(
        "invalid_input",
        "private_key: not an OpenSSH/PEM private key this client can read "
        "(ed25519, ecdsa or rsa), or the passphrase is wrong",
        step="validate",
        field="private_key",
    )


def _map_connect_error(exc: BaseException, target: Target) -> SSHError:
    where = f"{target.address}:{target.port}"
    if isinstance(exc, SSHError):
        return exc
    if isinstance(exc, HostKeyMismatch):
        return SSHError("host_key_mismatch", f"{where}: {exc}", step="connect")
    if isinstance(exc, socket.gaierror):
        return SSHError(
            "name_not_resolved",
            f"{target.address}: the name does not resolve ({exc.strerror})",
            step="connect",
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return SSHError(
            "authentication_failed",
            f"{where}: authentication failed for user {target.user!r} "
            f"({'password' if target.password else 'private key'} refused)",
            step="connect",
        )
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        errnos = {getattr(e, "errno", None) for e in exc.errors.values()}
        if errnos <= {errno.ECONNREFUSED}:
            return SSHError(
                "connection_refused",
                f"{where}: connection refused (no SSH server listening)",
                step="connect",
            )
        return SSHError("connection_refused", f"{where}: cannot connect: {exc}", step="connect")
    if isinstance(exc, ConnectionRefusedError):
        return SSHError(
            "connection_refused",
            f"{where}: connection refused (no SSH server listening)",
            step="connect",
        )
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return SSHError(
            "connection_timeout",
            f"{where}: no answer within {target.connect_timeout:g} s (host down or filtered)",
            step="connect",
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return SSHError(
            "connection_timeout", f"{where}: host unreachable ({exc.strerror})", step="connect"
        )
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        # paramiko reports a handshake that never started as "No existing session".
        if "banner" in text.lower() or "no existing session" in text.lower():
            return SSHError(
                "ssh_protocol_error",
                f"{where}: no SSH banner within {target.connect_timeout:g} s "
                "(not an SSH server, or overloaded)",
                step="connect",
            )
        return SSHError("ssh_protocol_error", f"{where}: SSH error: {text}", step="connect")
    return SSHError("ssh_protocol_error", f"{where}: {type(exc).__name__}: {exc}", step="connect")


class Session:
    """One authenticated SSH connection. Use as a context manager."""

    def __init__(self, client: paramiko.SSHClient, target: Target) -> None:
        self.client, self.target = client, target

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def run(self, command: str, *, timeout: float = 60.0, step: str = "") -> CommandResult:
        """Run ``command`` (a string built with shlex.quote) and wait at most ``timeout`` s."""
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError("ssh_protocol_error", "the SSH connection was closed", step=step)
        started = time.monotonic()
        deadline = started + timeout
        channel = transport.open_session(timeout=self.target.connect_timeout)
        out, err = bytearray(), bytearray()
        try:
            channel.exec_command(command)
            channel.shutdown_write()
            while True:
                while channel.recv_ready():
                    chunk = channel.recv(65536)
                    if len(out) < OUTPUT_LIMIT:
                        out += chunk
                while channel.recv_stderr_ready():
                    chunk = channel.recv_stderr(65536)
                    if len(err) < OUTPUT_LIMIT:
                        err += chunk
                if (
                    channel.exit_status_ready()
                    and not channel.recv_ready()
                    and not (channel.recv_stderr_ready())
                ):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SSHError(
                        "command_timeout",
                        f"{step or 'command'}: no result within {timeout:g} s",
                        step=step,
                        stdout=out.decode(errors="replace"),
                        stderr=err.decode(errors="replace"),
                    )
                # The exit status does not wake select(): poll it at a short interval.
                select.select([channel], [], [], min(remaining, 0.02))
            status = channel.recv_exit_status()
        finally:
            channel.close()
        return CommandResult(
            command=command,
            exit_status=status,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            seconds=time.monotonic() - started,
        )

    def put(self, local_path: str, remote_path: str, *, mode: int = 0o600, step: str = "") -> int:
        """Copy a file with SFTP; returns its size. ENOSPC becomes ``disk_full``."""
        sftp = self.client.open_sftp()
        try:
            sftp.get_channel().settimeout(self.target.connect_timeout * 6)  # type: ignore[union-attr]
            attrs = sftp.put(local_path, remote_path)
            sftp.chmod(remote_path, mode)
            return int(attrs.st_size or 0)
        except OSError as exc:
            if exc.errno == errno.ENOSPC or "space" in str(exc).lower():
                raise SSHError(
                    "disk_full", f"{remote_path}: no space left on the host", step=step
                ) from None
            raise SSHError(
                "command_failed", f"copy to {remote_path} failed: {exc}", step=step
            ) from None
        finally:
            sftp.close()

    def read_file(self, remote_path: str, *, limit: int = 1 << 20) -> str:
        sftp = self.client.open_sftp()
        try:
            with sftp.open(remote_path, "r") as fh:
                return fh.read(limit).decode()
        finally:
            sftp.close()


def connect(target: Target) -> Session:
    """Connect and authenticate, or raise an SSHError whose code says what went wrong."""
    pkey = _load_private_key(target.private_key, target.passphrase) if target.private_key else None
    client = paramiko.SSHClient()
    # No known_hosts file is loaded, so every key goes through the pinned policy.
    client.set_missing_host_key_policy(
        PinnedHostKeyPolicy(target.host_key_fingerprint, target.host_key_type)
    )
    kwargs: dict[str, Any] = {
        "hostname": target.address,
        "port": target.port,
        "username": target.user,
        "timeout": target.connect_timeout,
        "banner_timeout": target.connect_timeout,
        "auth_timeout": target.connect_timeout,
        "channel_timeout": target.connect_timeout,
        "allow_agent": False,
        "look_for_keys": False,
        "disabled_algorithms": {"keys": _host_key_algorithms(target.host_key_type)},
    }
    if pkey is not None:
        kwargs["pkey"] = pkey
    else:
        kwargs["password"] = target.password
    try:
        client.connect(**kwargs)
    except BaseException as exc:
        client.close()
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _map_connect_error(exc, target) from None
    logger.info("ssh: connected to %s:%s as %s", target.address, target.port, target.user)
    return Session(client, target)


def scan_host_key(
    address: str, port: int, *, key_type_wanted: str | None = None, timeout: float = 10.0
) -> tuple[str, str]:
    """Fetch the server's host key (fingerprint, type) without authenticating."""
    probe = Target(
        address=address,
        port=port,
        user="-",
        host_key_fingerprint="",
        host_key_type="",
        connect_timeout=timeout,
    )
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _map_connect_error(exc, probe) from None
    disabled = {"keys": _host_key_algorithms(key_type_wanted)} if key_type_wanted else None
    transport = paramiko.Transport(sock, disabled_algorithms=disabled)
    try:
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return fingerprint(key), key_type(key)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _map_connect_error(exc, probe) from None
    finally:
        transport.close()
