"""Secrets at rest (SSH private keys, passphrases, passwords): Fernet tokens.

``CORRAL_FERNET_KEYS`` is a comma-separated list; the first key encrypts and every key decrypts,
so a key is rotated by prepending a new one and running ``manage.py rotate_secrets``. In
development (DEBUG and no keys) one key is generated under ``var/`` with mode 0600. With DEBUG
off and no key the system check ``corral.E001`` stops the control plane. Plain text never goes
to a log or an API answer.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)
ENV_NAME = "CORRAL_FERNET_KEYS"
DEV_KEY_NAME = "fernet.key"


class SecretError(ValueError):
    """A token that no configured key can decrypt (wrong keys or tampered data)."""


def _dev_key_file() -> Path:
    return Path(settings.VAR_DIR) / DEV_KEY_NAME


def _load_or_create_dev_key(path: Path) -> str:
    """The development key: created once (0600, O_EXCL so racing processes share one key)."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    logger.info("generated a development Fernet key at %s", path)
    return key


def _env_keys() -> list[str]:
    raw: Any = settings.CORRAL.get("FERNET_KEYS") or []
    return [str(k) for k in raw if k]


def configured_keys() -> list[str]:
    """The keys in use: the environment's, or the development key when DEBUG allows it."""
    keys = _env_keys()
    if keys:
        return keys
    if settings.DEBUG:
        return [_load_or_create_dev_key(_dev_key_file())]
    raise ImproperlyConfigured(
        f"{ENV_NAME} is not set: secrets at rest (SSH keys, passwords) cannot be encrypted. "
        f"Set {ENV_NAME} to one or more Fernet keys (first encrypts, all decrypt)."
    )


@functools.cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            f"{ENV_NAME}: a key is not a valid Fernet key (32 url-safe base64 bytes): {exc}"
        ) from None


def fernet() -> MultiFernet:
    return _fernet(tuple(configured_keys()))


def encrypt(text: str) -> str:
    """Encrypt ``text`` with the first configured key; returns an ASCII token."""
    return fernet().encrypt(text.encode()).decode()


def decrypt(token: str) -> str:
    """Decrypt a token made with any configured key."""
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretError(
            f"a stored secret cannot be decrypted with the keys in {ENV_NAME} "
            "(was a key removed before `manage.py rotate_secrets` ran?)"
        ) from None


def rotate(token: str) -> str:
    """Re-encrypt a token under the first (newest) key."""
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretError(
            f"a stored secret cannot be decrypted with the keys in {ENV_NAME}"
        ) from None


@register("security", deploy=False)
def check_fernet_keys(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """corral.E001: production (DEBUG off) needs CORRAL_FERNET_KEYS; bad keys are named too."""
    keys = _env_keys()
    if not keys:
        if settings.DEBUG:
            return []
        return [
            Error(
                f"{ENV_NAME} is not set, so secrets at rest cannot be encrypted.",
                hint=f"Set {ENV_NAME} to a Fernet key (Fernet.generate_key()); "
                "prepend a new key to rotate.",
                id="corral.E001",
            )
        ]
    for index, key in enumerate(keys):
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            return [
                Error(
                    f"{ENV_NAME}: key number {index + 1} is not a valid Fernet key.",
                    hint="A Fernet key is 32 url-safe base64-encoded bytes.",
                    id="corral.E001",
                )
            ]
    return []
