"""The one exception of the network package: it names the field or step that failed."""

from __future__ import annotations

from agent.protocol.errors import ERR_NETWORK


class NetworkError(Exception):
    """Bad network input or a failed network step.

    ``field`` is the dotted spec field (``network.ports[0].host_port``) for bad input, or the
    step (``step.veth``) for a host failure, so the control plane can show which one it was.
    """

    code = ERR_NETWORK

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
