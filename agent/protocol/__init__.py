"""The wire contract between the control plane and the agents.

Task names, queue names, message schemas with validation, the signed envelope and the
protocol version. This package imports nothing else of ``agent/`` and nothing of Django:
the control plane imports it, and it is all the two sides share.
"""

from __future__ import annotations

from agent.protocol.errors import ProtocolError
from agent.protocol.version import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "ProtocolError"]
