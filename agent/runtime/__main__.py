"""``python -m agent.runtime``: the runtime command line."""

from __future__ import annotations

import sys

from agent.runtime.cli import main

sys.exit(main())
