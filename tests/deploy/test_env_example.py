"""deploy/env.example lists every variable the control plane reads, each explained, and nothing
else; as shipped it refuses to start until its secrets are filled in, and filled in it passes
Django's deployment checks."""

from __future__ import annotations

import ast
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.deploy.harness import DEPLOY, read_env_file, substitute
from tests.support.procs import REPO

ENV_EXAMPLE = DEPLOY / "env.example"
AGENT_ENV_EXAMPLE = DEPLOY / "agent.env.example"
# Code of the control plane that may read the environment (the agent has its own, per host).
SOURCE_DIRS = ("config", "hosts", "containers", "frontend")


def python_sources(directories: tuple[str, ...] = SOURCE_DIRS) -> Iterator[Path]:
    for directory in directories:
        for path in sorted((REPO / directory).rglob("*.py")):
            if "migrations" not in path.parts and "tests" not in path.parts:
                yield path
    if directories == SOURCE_DIRS:
        yield DEPLOY / "gunicorn.conf.py"


def _const_str(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_environ(node: ast.AST) -> bool:
    """``os.environ`` or a bare ``environ``."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def variables_read(path: Path) -> set[str]:
    """Names passed to ``env_*()``/``_env_*()``/``_raw()`` (config/env.py and gunicorn.conf.py),
    ``os.environ.get()``, ``os.getenv()`` or ``os.environ[...]``, as a literal or as a module
    constant (``ENV_VAR = "CORRAL_CGROUP_DRIVER"``)."""
    tree = ast.parse(path.read_text(), str(path))
    constants: dict[str, str] = {}
    for statement in tree.body:
        if not isinstance(statement, ast.Assign | ast.AnnAssign) or statement.value is None:
            continue
        value = _const_str(statement.value)
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        for target in targets:
            if value is not None and isinstance(target, ast.Name):
                constants[target.id] = value

    def literal(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        return _const_str(node)

    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_environ(node.value):
            name = literal(node.slice)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            reads = (
                called.startswith(("env_", "_env_"))
                or called == "_raw"
                or (called == "getenv" and isinstance(func, ast.Attribute))
                or (called == "get" and isinstance(func, ast.Attribute) and _is_environ(func.value))
            )
            name = literal(node.args[0]) if reads else None
        else:
            continue
        if name is not None:
            names.add(name)
    return names


def all_variables_read(directories: tuple[str, ...] = SOURCE_DIRS) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in python_sources(directories):
        for name in variables_read(path):
            found.setdefault(name, path.relative_to(REPO))
    return found


def test_the_scan_finds_what_settings_and_env_helpers_read() -> None:
    """Guards the scanner itself: a few names known to be read in different ways."""
    found = all_variables_read()
    assert found["DATABASE_URL"] == Path("config/settings.py")  # env_database(...)
    assert found["SECRET_KEY"] == Path("config/env.py")  # _raw("SECRET_KEY")
    assert found["CORRAL_WEB_THREADS"] == Path("deploy/gunicorn.conf.py")
    assert "DJANGO_SETTINGS_MODULE" not in found  # os.environ.setdefault writes, not reads


def test_every_variable_the_control_plane_reads_is_in_env_example() -> None:
    listed = set(read_env_file(ENV_EXAMPLE))
    missing = {name: str(path) for name, path in all_variables_read().items() if name not in listed}
    assert not missing, f"add to deploy/env.example, with a comment: {missing}"


def test_env_example_lists_nothing_that_is_not_read() -> None:
    stale = set(read_env_file(ENV_EXAMPLE)) - set(all_variables_read())
    assert not stale, f"deploy/env.example lists variables nothing reads: {sorted(stale)}"


def test_every_variable_the_agent_reads_is_in_agent_env_example_and_nothing_else() -> None:
    read = all_variables_read(("agent",))
    assert read["CORRAL_CGROUP_DRIVER"] == Path("agent/runtime/cgroups/detect.py")  # a constant
    assert set(read) == set(read_env_file(AGENT_ENV_EXAMPLE))


@pytest.mark.parametrize("example", [ENV_EXAMPLE, AGENT_ENV_EXAMPLE], ids=lambda p: p.name)
def test_every_variable_is_explained_with_its_default_or_that_it_is_required(
    example: Path,
) -> None:
    comment: list[str] = []
    previous_was_comment = False
    for line in example.read_text().splitlines():
        if line.startswith("#"):
            if not previous_was_comment:
                comment = []
            comment.append(line)
            previous_was_comment = True
            continue
        previous_was_comment = False
        if not line.strip():
            comment = []
            continue
        name = line.split("=", 1)[0]
        text = "\n".join(comment)
        assert re.search(rf"\b{name}\b", text), f"{name} has no comment naming it"
        assert "Default" in text or "Required" in text, f"{name}: say its default"


def run_manage(
    values: dict[str, str], *args: str, var_dir: Path
) -> subprocess.CompletedProcess[str]:
    """manage.py with exactly the env file's variables (paths moved into ``var_dir``)."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME")}
    env.update(values)
    env["CORRAL_VAR_DIR"] = str(var_dir)
    env["CORRAL_SIGNING_KEY_FILE"] = str(var_dir / "signing_key.pem")
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def shipped() -> dict[str, str]:
    values = read_env_file(ENV_EXAMPLE)
    assert values["DEBUG"] == "false"
    assert values["CORRAL_VAR_DIR"] == "/var/lib/corral"
    return values


def test_unfilled_example_refuses_to_start_naming_the_secret(
    shipped: dict[str, str], tmp_path: Path
) -> None:
    done = run_manage(shipped, "check", var_dir=tmp_path)
    assert done.returncode != 0
    assert "SECRET_KEY must be at least 32 characters" in done.stderr


def test_example_without_a_real_fernet_key_fails_the_system_check(
    shipped: dict[str, str], tmp_path: Path
) -> None:
    shipped["SECRET_KEY"] = secrets.token_urlsafe(50)
    done = run_manage(shipped, "check", var_dir=tmp_path)
    assert done.returncode != 0
    assert "corral.E001" in done.stderr and "CORRAL_FERNET_KEYS" in done.stderr


def test_filled_in_example_passes_the_deployment_checks(
    shipped: dict[str, str], tmp_path: Path
) -> None:
    """What the README tells the operator to fill in is enough for `check --deploy`."""
    text = substitute(
        ENV_EXAMPLE.read_text(),
        {
            "SECRET_KEY=CHANGE-ME": f"SECRET_KEY={secrets.token_urlsafe(50)}",
            "CORRAL_FERNET_KEYS=CHANGE-ME": f"CORRAL_FERNET_KEYS={Fernet.generate_key().decode()}",
        },
        source="deploy/env.example",
    )
    filled = tmp_path / "corral.env"
    filled.write_text(text)
    done = run_manage(
        read_env_file(filled), "check", "--deploy", "--fail-level", "WARNING", var_dir=tmp_path
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "no issues" in done.stdout
