"""Errors of the wire contract and the error codes both sides use."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message that does not match its schema. ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class EnvelopeError(ProtocolError):
    """A signed envelope that must not be acted on (bad signature, expired, replayed...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__("envelope", message)
        self.code = code


# Error codes an agent reports in a failed OperationResult. Stable: the UI and API show them.
ERR_INVALID_MESSAGE = "invalid_message"
ERR_BAD_SIGNATURE = "bad_signature"
ERR_EXPIRED = "expired"
ERR_REPLAYED = "replayed"
ERR_WRONG_HOST = "wrong_host"
ERR_NOT_FOUND = "not_found"
ERR_CONFLICT = "conflict"
ERR_RUNTIME = "runtime_error"
ERR_IMAGE = "image_error"
ERR_NETWORK = "network_error"
ERR_INTERNAL = "internal_error"
