"""The systemd rendering of socket activation (pure; systemd is not PID 1 here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.network.errors import NetworkError
from agent.network.systemd_units import socket_units
from agent.protocol.containers import SocketSpec


def test_one_socket_unit_per_spec_and_a_service_using_them_all() -> None:
    units = socket_units(
        "c1",
        [
            SocketSpec(name="web", port=8080),
            SocketSpec(name="dns", protocol="udp", host_ip="::1", port=5353),
            SocketSpec(name="ctl", protocol="unix", path="/run/c1.sock"),
        ],
        ["/usr/bin/server", "--greeting", 'say "hi" for $5 at 100%'],
    )
    assert sorted(units) == [
        "corral-c1-ctl.socket",
        "corral-c1-dns.socket",
        "corral-c1-web.socket",
        "corral-c1.service",
    ]
    web = units["corral-c1-web.socket"]
    assert "ListenStream=127.0.0.1:8080\n" in web and "FileDescriptorName=web\n" in web
    assert "Service=corral-c1.service\n" in web
    assert "ListenDatagram=[::1]:5353\n" in units["corral-c1-dns.socket"]
    assert "ListenStream=/run/c1.sock\n" in units["corral-c1-ctl.socket"]
    service = units["corral-c1.service"]
    assert "Sockets=corral-c1-web.socket corral-c1-dns.socket corral-c1-ctl.socket\n" in service
    assert 'ExecStart="/usr/bin/server" "--greeting" "say \\"hi\\" for $$5 at 100%%"\n' in service


@pytest.mark.parametrize(
    ("cid", "sockets", "argv", "field"),
    [
        ("bad id", [SocketSpec(name="web", port=80)], ["x"], "container_id"),
        ("c1", [], ["x"], "sockets"),
        ("c1", [SocketSpec(name="web", port=80)], [], "command"),
        ("c1", [SocketSpec(name="web", port=0)], ["x"], "sockets.web"),
        ("c1", [SocketSpec(name="a b", port=80)], ["x"], "sockets.a b"),
    ],
)
def test_bad_input_names_the_field(
    cid: str, sockets: list[SocketSpec], argv: list[str], field: str
) -> None:
    with pytest.raises(NetworkError) as err:
        socket_units(cid, sockets, argv)
    assert err.value.field == field


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_systemd_itself_accepts_the_rendered_units(tmp_path: Path) -> None:
    units = socket_units(
        "c1",
        [SocketSpec(name="web", port=8080), SocketSpec(name="ctl", protocol="unix", path="/run/c")],
        ["/bin/echo", 'say "hi" for $5 at 100%'],
    )
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
