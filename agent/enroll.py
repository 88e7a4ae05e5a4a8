"""``python -m agent enroll``: register this host with the control plane using a single-use
token. The agent makes its own Ed25519 key; only the public half leaves the host. Enrolling
again (same state dir) rotates the key and keeps the host id."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import AgentConfig, ConfigError, load_config
from agent.protocol import envelope


class EnrollError(RuntimeError):
    """Enrollment refused or impossible; the message is the control plane's or the network's."""


def _post(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise EnrollError(f"--server must be an http(s) URL, got {url!r}")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", "")
        except (ValueError, AttributeError):
            detail = ""
        raise EnrollError(f"enrollment refused ({exc.code}): {detail or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EnrollError(f"cannot reach the control plane at {url}: {exc}") from None


def enroll(
    *,
    server: str,
    token: str,
    config_path: Path,
    state_dir: Path,
    name: str | None = None,
    address: str = "",
    broker_url: str | None = None,
    timeout: float = 15.0,
    extra: dict[str, Any] | None = None,
) -> AgentConfig:
    previous: AgentConfig | None = None
    if config_path.exists():
        try:
            previous = load_config(config_path)
        except ConfigError:
            previous = None
    key = envelope.generate_key()
    body = {
        "token": token,
        "name": name or (previous.name if previous else socket.gethostname()),
        "public_key": envelope.public_key_to_text(key.public_key()),
        "address": address,
        "agent_version": __version__,
    }
    if previous is not None:
        body["host_id"] = previous.host_id
    answer = _post(server.rstrip("/") + "/api/v1/enroll/", body, timeout)
    state_dir.mkdir(parents=True, exist_ok=True)
    config = AgentConfig(
        host_id=answer["host_id"],
        name=answer["name"],
        server_url=server,
        broker_url=broker_url or answer["broker_url"],
        controlplane_public_key=answer["controlplane_public_key"],
        state_dir=str(state_dir),
        heartbeat_interval=float(answer.get("heartbeat_interval", 10.0)),
        broker_transport_options=answer.get("broker_transport_options") or {},
        **(extra or {}),
    )
    key_tmp = config.key_file.with_suffix(".tmp")
    fd = os.open(key_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(envelope.private_key_to_pem(key))
    os.replace(key_tmp, config.key_file)
    config.save(config_path)
    return config
