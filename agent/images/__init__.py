"""Images on an agent host: verified blob store, safe layer unpack with overlay whiteouts,
``docker save`` / OCI layout import and registry pull.

The worker calls :class:`ImageStore`; everything else here is its parts.
"""

from __future__ import annotations

from agent.images.errors import ImageError
from agent.images.records import GcResult, ImageRecord
from agent.images.reference import Reference, parse_reference
from agent.images.store import ImageStore
from agent.images.unpack import UnpackLimits
from agent.protocol.messages import RegistryAuth

__all__ = [
    "GcResult",
    "ImageError",
    "ImageRecord",
    "ImageStore",
    "Reference",
    "RegistryAuth",
    "UnpackLimits",
    "parse_reference",
]
