"""Container networking (none / host / bridge with IPAM, NAT, published ports) and socket
activation. Public names are re-exported here."""

from __future__ import annotations

from agent.network.errors import NetworkError
from agent.network.ipam import PublishedPort
from agent.network.manager import Attachment, NetworkManager

__all__ = ["Attachment", "NetworkError", "NetworkManager", "PublishedPort"]
