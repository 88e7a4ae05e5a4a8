"""Certification data kept as JSON beside the code: CVE table, supported releases, image policy."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent


@cache
def load_data(name: str) -> dict[str, Any]:
    """One JSON data file of this directory, parsed once per process."""
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data
