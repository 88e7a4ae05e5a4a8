"""``python -m agent.runtime``: the runtime command line."""

from __future__ import annotations

from agent.runtime.cli import run

run()
