"""Per-test MEDIA_ROOT for uploaded blobs (removed with the tmp dir) and a Fernet key for
registry credentials at rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet


@pytest.fixture(autouse=True)
def _media_and_keys(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.CORRAL = {**settings.CORRAL, "FERNET_KEYS": [Fernet.generate_key().decode()]}
    return Path(settings.MEDIA_ROOT)
