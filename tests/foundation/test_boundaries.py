"""Import boundaries: the agent never imports Django or the control plane, and the protocol
imports nothing else of the agent."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support.procs import REPO

FORBIDDEN_FOR_AGENT = (
    "django",
    "rest_framework",
    "celery.contrib.django",
    "hosts",
    "containers",
    "frontend",
    "config",
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_module_under_agent_imports_django_or_the_control_plane() -> None:
    offenders = []
    for path in sorted((REPO / "agent").rglob("*.py")):
        for module in imported_modules(path):
            if module.split(".")[0] in FORBIDDEN_FOR_AGENT:
                offenders.append(f"{path.relative_to(REPO)} imports {module}")
    assert offenders == []


def test_protocol_imports_nothing_else_of_the_agent() -> None:
    offenders = []
    for path in sorted((REPO / "agent" / "protocol").rglob("*.py")):
        for module in imported_modules(path):
            if module.startswith("agent.") and not module.startswith("agent.protocol"):
                offenders.append(f"{path.relative_to(REPO)} imports {module}")
    assert offenders == []


def test_the_whole_agent_imports_on_a_host_without_django() -> None:
    """Every agent module imports with Django made unimportable, as on a host that has only
    the agent's requirements (kombu probes for Django and must find none)."""
    code = (
        "import sys\n"
        "for name in ('django', 'rest_framework', 'hosts', 'containers', 'frontend', 'config'):\n"
        "    sys.modules[name] = None\n"
        "import importlib, pkgutil, agent\n"
        "for m in pkgutil.walk_packages(agent.__path__, 'agent.'):\n"
        "    if m.name.endswith('__main__'): continue\n"
        "    importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
