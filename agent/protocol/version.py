"""Protocol version. Bump SCHEMA_VERSION on any incompatible change of a message."""

from __future__ import annotations

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
