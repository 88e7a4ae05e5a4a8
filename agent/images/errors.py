"""The one exception of the image subsystem and its stable refusal codes."""

from __future__ import annotations

# Stable codes: the agent reports them to the control plane inside ERR_IMAGE failures.
PATH_TRAVERSAL = "path_traversal"
ABSOLUTE_PATH = "absolute_path"
SYMLINK_ESCAPE = "symlink_escape"
HARDLINK_ESCAPE = "hardlink_escape"
DEVICE_NODE = "device_node"
TOO_LARGE = "too_large"
DIGEST_MISMATCH = "digest_mismatch"
SIZE_MISMATCH = "size_mismatch"
INVALID_REFERENCE = "invalid_reference"
INVALID_LAYER = "invalid_layer"
INVALID_MANIFEST = "invalid_manifest"
INVALID_CONFIG = "invalid_config"
INVALID_ARCHIVE = "invalid_archive"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
NO_MATCHING_PLATFORM = "no_matching_platform"
NOT_FOUND = "not_found"
UNAUTHORIZED = "unauthorized"
REGISTRY_ERROR = "registry_error"
NETWORK_ERROR = "network_error"
TLS_ERROR = "tls_error"
LAYER_MISSING = "layer_missing"


class ImageError(Exception):
    """A refused or failed image operation. ``code`` is one of the constants above and
    ``detail`` is a human sentence naming the field, entry or step that failed."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
