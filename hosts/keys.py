"""The control plane's command-signing key and the hosts' report-verification keys."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

from agent.protocol import envelope

logger = logging.getLogger(__name__)


@functools.cache
def signing_key() -> Ed25519PrivateKey:
    """Load the control plane's Ed25519 key; generate it (mode 0600) on first use."""
    path = Path(settings.CORRAL["SIGNING_KEY_FILE"])
    if path.exists():
        return envelope.private_key_from_pem(path.read_bytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = envelope.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return envelope.private_key_from_pem(path.read_bytes())
    with os.fdopen(fd, "wb") as fh:
        fh.write(envelope.private_key_to_pem(key))
    logger.info("generated the control plane signing key at %s", path)
    return key


def public_key_text() -> str:
    return envelope.public_key_to_text(signing_key().public_key())


@functools.lru_cache(maxsize=65536)
def host_public_key(text: str) -> Ed25519PublicKey:
    """Parsed host key, cached by its text (rotation changes the text, so no stale entry)."""
    return envelope.public_key_from_text(text)
