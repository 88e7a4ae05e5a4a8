"""Signed envelopes around every message, both ways.

Celery's own message signing leaves headers unsigned and has no replay protection, so each
message carries its own envelope: who it is for/from (host id), which operation, when it was
issued and when it expires, a random nonce, the payload, and an Ed25519 signature over the
canonical JSON of all of that. Commands are signed by the control plane's key and verified by
the agent; reports are signed by the host's own key and verified by the control plane against
the key it holds *for the host named in the envelope*, so a host can only speak for itself.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.protocol import errors
from agent.protocol.errors import EnvelopeError, ProtocolError
from agent.protocol.messages import payload_class
from agent.protocol.schema import Message
from agent.protocol.version import SCHEMA_VERSION, SUPPORTED_SCHEMA_VERSIONS

DEFAULT_TTL = 300.0
CLOCK_SKEW = 60.0


class NonceStore(Protocol):
    """Remembers nonces until they expire; ``add`` returns False for one seen before."""

    def add(self, nonce: str, expires_at: float) -> bool: ...


@dataclass(frozen=True)
class Envelope(Message):
    schema_version: int
    kind: str
    host_id: str
    issued_at: float
    expires_at: float
    nonce: str
    payload: dict[str, Any]
    operation_id: str | None = None
    signature: str = field(default="", compare=False)

    def validate(self) -> None:
        if self.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
            raise ProtocolError(
                "schema_version",
                f"unsupported schema version {self.schema_version}; "
                f"this side speaks {sorted(SUPPORTED_SCHEMA_VERSIONS)}",
            )
        if self.expires_at <= self.issued_at:
            raise ProtocolError("expires_at", "must be after issued_at")

    def signed_bytes(self) -> bytes:
        body = self.to_dict()
        body.pop("signature")
        return canonical_json(body)

    def message(self) -> Message:
        """The payload as its validated protocol object."""
        return payload_class(self.kind).from_dict(self.payload, path="payload")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal(
    key: Ed25519PrivateKey,
    *,
    kind: str,
    host_id: str,
    payload: Message,
    operation_id: str | None = None,
    ttl: float = DEFAULT_TTL,
    now: float | None = None,
) -> dict[str, Any]:
    """Build, sign and serialise an envelope. Returns the dict sent as the task's ``message``."""
    payload_class(kind)  # an unknown kind is a programming error on the sending side
    issued = time.time() if now is None else now
    env = Envelope(
        schema_version=SCHEMA_VERSION,
        kind=kind,
        host_id=str(host_id),
        issued_at=issued,
        expires_at=issued + ttl,
        nonce=secrets.token_hex(16),
        payload=payload.to_dict(),
        operation_id=operation_id,
    )
    sig = base64.b64encode(key.sign(env.signed_bytes())).decode()
    return replace(env, signature=sig).to_dict()


def open_envelope(
    data: Any,
    key: Ed25519PublicKey,
    *,
    expected_kind: str,
    expected_host: str | None = None,
    nonces: NonceStore | None = None,
    now: float | None = None,
) -> tuple[Envelope, Message]:
    """Verify and decode an envelope. Raises EnvelopeError (bad signature, wrong host,
    expired, replayed) or ProtocolError (malformed) and never returns an unverified payload."""
    env = Envelope.from_dict(data)
    try:
        sig = base64.b64decode(env.signature, validate=True)
        key.verify(sig, env.signed_bytes())
    except (InvalidSignature, ValueError):
        raise EnvelopeError(errors.ERR_BAD_SIGNATURE, "signature does not verify") from None
    if env.kind != expected_kind:
        raise EnvelopeError(
            errors.ERR_INVALID_MESSAGE, f"envelope is for {env.kind!r}, not {expected_kind!r}"
        )
    if expected_host is not None and env.host_id != str(expected_host):
        raise EnvelopeError(
            errors.ERR_WRONG_HOST, f"envelope names host {env.host_id}, not {expected_host}"
        )
    current = time.time() if now is None else now
    if env.expires_at < current:
        raise EnvelopeError(errors.ERR_EXPIRED, f"expired {current - env.expires_at:.0f}s ago")
    if env.issued_at > current + CLOCK_SKEW:
        raise EnvelopeError(errors.ERR_EXPIRED, "issued in the future (clock skew?)")
    message = env.message()
    if nonces is not None and not nonces.add(env.nonce, env.expires_at):
        raise EnvelopeError(errors.ERR_REPLAYED, f"nonce {env.nonce} was seen before")
    return env, message


# --- keys ----------------------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(data: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ProtocolError("key", "not an Ed25519 private key")
    return key


def public_key_to_text(key: Ed25519PublicKey) -> str:
    """Raw 32-byte public key, base64: short enough for a database column and a config file."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_from_text(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ProtocolError("public_key", "not a base64 Ed25519 public key") from None
