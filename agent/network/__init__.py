"""Container networking (none / host / bridge with IPAM, NAT, published ports) and socket
activation. Public names are re-exported here."""

from __future__ import annotations

from agent.network.activation import Activator, listen_env, place_fds, spawn_activated
from agent.network.errors import NetworkError
from agent.network.ipam import PublishedPort
from agent.network.manager import Attachment, NetworkManager

__all__ = [
    "Activator",
    "Attachment",
    "NetworkError",
    "NetworkManager",
    "PublishedPort",
    "listen_env",
    "place_fds",
    "spawn_activated",
]
