"""Every connection failure against a real sshd maps to its code and a sentence naming the
specifics; nothing is left on the host after any of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hosts.ssh import client
from hosts.ssh.errors import SSHError
from tests.hosts.ssh.sshd_support import SSHHost, make_key

pytestmark = [pytest.mark.privileged]


def target_for(host: SSHHost, **changes: Any) -> client.Target:
    values: dict[str, Any] = {
        "address": host.address,
        "port": host.port,
        "user": "root",
        "host_key_fingerprint": host.host_key.fingerprint,
        "host_key_type": host.host_key.key_type,
        "private_key": host.client_key.private_text,
        "connect_timeout": 5.0,
    }
    values.update(changes)
    return client.Target(**values)


def test_scan_returns_the_fingerprint_ssh_keygen_prints(sshd: SSHHost) -> None:
    fp, kind = client.scan_host_key(sshd.address, sshd.port, timeout=5)
    assert (fp, kind) == (sshd.host_key.fingerprint, "ssh-ed25519")


def test_connect_with_pinned_key_runs_commands(sshd: SSHHost) -> None:
    with client.connect(target_for(sshd)) as session:
        result = session.run("id -u; echo err >&2; exit 3", timeout=10)
    assert (result.exit_status, result.stdout, result.stderr) == (3, "0\n", "err\n")


def test_changed_host_key_is_refused_naming_both_fingerprints(
    sshd: SSHHost, tmp_path: Path
) -> None:
    pinned = sshd.host_key
    sshd.start_sshd(host_key=make_key(sshd.work, "host_key_2"))
    with pytest.raises(SSHError) as err:
        client.connect(target_for(sshd, host_key_fingerprint=pinned.fingerprint))
    assert err.value.code == "host_key_mismatch"
    assert (
        f"host key mismatch: expected {pinned.fingerprint} (ssh-ed25519), "
        f"got {sshd.host_key.fingerprint} (ssh-ed25519)"
    ) in err.value.message
    # Authentication never started: sshd logged no accepted or failed publickey for root.
    assert "Accepted publickey" not in sshd.sshd_log()


def test_wrong_client_key_is_authentication_failed(sshd: SSHHost) -> None:
    stranger = make_key(sshd.work, "stranger")
    with pytest.raises(SSHError) as err:
        client.connect(target_for(sshd, private_key=stranger.private_text))
    assert err.value.code == "authentication_failed"
    assert "authentication failed for user 'root'" in err.value.message


def test_closed_port_is_connection_refused(sshd: SSHHost) -> None:
    with pytest.raises(SSHError) as err:
        client.connect(target_for(sshd, port=2999))
    assert err.value.code == "connection_refused"
    assert f"{sshd.address}:2999: connection refused" in err.value.message


def test_unresolvable_name_is_name_not_resolved(sshd: SSHHost) -> None:
    with pytest.raises(SSHError) as err:
        client.connect(target_for(sshd, address="no-such-host.invalid"))
    assert err.value.code == "name_not_resolved"


def test_silent_port_is_a_banner_timeout(sshd: SSHHost) -> None:
    """A listener that never speaks SSH: the banner timeout fires, not a hang."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind((sshd.host_side, 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    try:
        with pytest.raises(SSHError) as err:
            client.connect(target_for(sshd, address=sshd.host_side, port=port,
                                      connect_timeout=1.0))  # fmt: skip
        assert err.value.code in ("ssh_protocol_error", "connection_timeout")
        assert "1 s" in err.value.message
    finally:
        for conn in accepted:
            conn.close()
        listener.close()


def test_command_timeout_stops_waiting(sshd: SSHHost) -> None:
    with client.connect(target_for(sshd)) as session, pytest.raises(SSHError) as err:
        session.run("echo started; sleep 60", timeout=5.0, step="slow step")
    assert err.value.code == "command_timeout"
    assert err.value.message == "slow step: no result within 5 s"
    assert err.value.extra["stdout"] == "started\n"
