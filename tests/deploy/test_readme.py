"""deploy/README.md stays true: the files, commands, URLs and UI labels it names exist, and its
corral-manage wrapper really runs manage.py with the env file."""

from __future__ import annotations

import os
import re
import secrets
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.management import get_commands
from django.urls import Resolver404, resolve

from tests.deploy.harness import DEPLOY, substitute
from tests.support.procs import REPO

README = (DEPLOY / "README.md").read_text()


def test_every_deploy_file_it_names_exists() -> None:
    named = set(
        re.findall(r"`((?:systemd|nginx)/[\w.-]+|[\w.-]+\.(?:example|in|sh|conf\.py))`", README)
    )
    named |= {f"systemd/{n}" for n in re.findall(r"(corral-(?:web|worker|beat)\.service)", README)}
    assert "systemd/corral-agent.service" in named and "env.example" in named
    missing = sorted(n for n in named if not (DEPLOY / n).exists())
    assert not missing, missing


def test_every_corral_manage_command_exists() -> None:
    used = set(re.findall(r"corral-manage (\w+)", README))
    assert {"migrate", "collectstatic", "createsuperuser", "check"} <= used
    assert used <= set(get_commands()), used - set(get_commands())


@pytest.mark.parametrize("path", sorted(set(re.findall(r"(/api/v1/[\w/-]+/|/healthz)", README))))
def test_every_url_it_names_resolves(path: str) -> None:
    try:
        resolve(path)
    except Resolver404:
        pytest.fail(f"deploy/README.md names {path}, which no view serves")


def test_ui_labels_it_names_are_in_the_templates() -> None:
    templates = "".join(p.read_text() for p in (REPO / "frontend" / "templates").rglob("*.html"))
    for label in re.findall(r"\*\*Hosts → ([^*]+)\*\*", README):
        assert f">{label}<" in templates, label


def test_corral_manage_wrapper_runs_manage_py_with_the_env_file(tmp_path: Path) -> None:
    """The README's wrapper, with its paths pointed at this checkout and a filled env file,
    and without the switch to the corral user (who does not exist here)."""
    script = re.search(r"cat > /usr/local/bin/corral-manage <<'EOF'\n(.*?)\nEOF\n", README, re.S)
    assert script is not None
    fernet = Fernet.generate_key().decode()
    env_file = tmp_path / "corral.env"
    env_file.write_text(
        substitute(
            (DEPLOY / "env.example").read_text(),
            {
                "SECRET_KEY=CHANGE-ME": f"SECRET_KEY={secrets.token_urlsafe(50)}",
                "CORRAL_FERNET_KEYS=CHANGE-ME": f"CORRAL_FERNET_KEYS={fernet}",
                "CORRAL_VAR_DIR=/var/lib/corral": f"CORRAL_VAR_DIR={tmp_path}",
                "CORRAL_SIGNING_KEY_FILE=/var/lib/corral/": f"CORRAL_SIGNING_KEY_FILE={tmp_path}/",
            },
            source="deploy/env.example",
        )
    )
    wrapper = tmp_path / "corral-manage"
    wrapper.write_text(
        substitute(
            script.group(1),
            {
                "cd /opt/corral ": f"cd {REPO} ",
                "runuser -u corral -- ": "",
                "/etc/corral/corral.env": str(env_file),
            },
            source="deploy/README.md",
        )
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    done = subprocess.run(
        [str(wrapper), "shell", "-c", "from django.conf import settings; print(settings.DEBUG, "
         "settings.ALLOWED_HOSTS, settings.VAR_DIR)"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]  # after Django's "objects imported" note
    assert last.split() == ["False", "['corral.example.org']", str(tmp_path)]
