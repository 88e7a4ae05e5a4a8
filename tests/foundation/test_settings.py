"""Settings come from the environment and fail loudly, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import env
from tests.support.procs import REPO


def manage(*args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DATABASE_URL",
            "SECRET_KEY",
            "DEBUG",
            "CELERY_BROKER_URL",
            "ALLOWED_HOSTS",
            "SECURE_SSL_REDIRECT",
        )
        and not k.startswith("CORRAL_")
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**base, **env_vars},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "nonsense"),
        ("DATABASE_URL", "mysql://x@localhost/db"),
        ("CELERY_BROKER_URL", "carrier-pigeon://coop"),
        ("DEBUG", "maybe"),
        ("CORRAL_OFFLINE_AFTER", "soon"),
    ],
)
def test_malformed_setting_stops_startup_naming_the_variable(variable: str, value: str) -> None:
    result = manage("check", **{"DEBUG": "1", variable: value})
    assert result.returncode != 0
    assert variable in result.stderr
    assert "Traceback" not in result.stderr.splitlines()[-1]


def test_secret_key_is_required_when_debug_is_off() -> None:
    result = manage("check", DEBUG="0")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_check_deploy_passes_with_production_settings(tmp_path) -> None:
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        SECRET_KEY="x" * 20 + "production-secret-key-material-0123456789",
        ALLOWED_HOSTS="corral.example.org",
        CORRAL_VAR_DIR=str(tmp_path),
        CORRAL_FERNET_KEYS="ZmRlZmJhZGJlZWZmZWVkZmFjZWJhZGNhZmViYWJlMDA=",
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_database_url_parsing_covers_postgres_options() -> None:
    os.environ["CORRAL_TEST_DB"] = "postgresql://u:p%40ss@db.internal:6432/corral?sslmode=require"
    try:
        db = env.env_database("CORRAL_TEST_DB", "sqlite:///x")
    finally:
        del os.environ["CORRAL_TEST_DB"]
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
        "u",
        "p@ss",
        "db.internal",
        "6432",
        "corral",
    )
    assert db["OPTIONS"] == {"sslmode": "require"}


def test_env_int_rejects_values_below_minimum() -> None:
    os.environ["CORRAL_TEST_INT"] = "0"
    try:
        with pytest.raises(ImproperlyConfigured, match="CORRAL_TEST_INT=0 must be at least 1"):
            env.env_int("CORRAL_TEST_INT", 5, minimum=1)
    finally:
        del os.environ["CORRAL_TEST_INT"]


def test_every_model_change_has_its_migration() -> None:
    result = manage("makemigrations", "--check", "--dry-run", DEBUG="1")
    assert result.returncode == 0, result.stdout + result.stderr
