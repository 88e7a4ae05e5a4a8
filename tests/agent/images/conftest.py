"""Fixtures for image tests: a real docker-registry on loopback and a store per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from imgtest_helpers import REGISTRY_BIN, Registry, run_registry

from agent.images import ImageStore


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    if not REGISTRY_BIN.exists():
        pytest.fail("docker-registry is missing: apt-get install docker-registry")
    (tmp_path / "registry").mkdir()
    with run_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")
