"""The TLS broker URL that env.example and the README recommend really verifies the Redis
certificate, for both the agent's Celery app and the control plane's, against a real Redis
with TLS on loopback. The control: a bare rediss:// URL connects even to a server whose
certificate nobody trusts, which is why the parameter is there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.deploy.harness import DEPLOY, read_env_file
from tests.support.procs import REPO, free_port, running, wait_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]
PASSWORD = "broker-test-password"

AGENT_CLIENT = """
import sys
from agent.config import AgentConfig
from agent.worker import make_app
config = AgentConfig(host_id="5f1d2c3b-0000-4000-8000-000000000001", name="h1",
                     server_url="https://corral.example.org", broker_url=sys.argv[1],
                     controlplane_public_key="unused")
with make_app(config).connection_for_write() as conn:
    conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=5)
    print("PING", conn.default_channel.client.ping())
"""

CONTROLPLANE_CLIENT = """
from config.celery import app
with app.connection_for_write() as conn:
    conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=5)
    print("PING", conn.default_channel.client.ping())
"""


def certificate(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    argv = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path]]:
    """(port, the server's certificate, a certificate of someone else)."""
    directory = tmp_path_factory.mktemp("redis-tls")
    cert, key = certificate(directory, "redis")
    stranger, _ = certificate(directory, "stranger")
    port = free_port()
    argv = [
        "redis-server", "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port),
        "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
        "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(directory),
    ]  # fmt: skip
    with running("redis-tls", argv, log_dir=directory) as proc:
        wait_port("127.0.0.1", port)
        assert proc.alive(), proc.log()
        yield port, cert, stranger


def recommended_url(port: int) -> str:
    """CORRAL_AGENT_BROKER_URL from env.example, pointed at the test server."""
    shipped = urlsplit(read_env_file(DEPLOY / "env.example")["CORRAL_AGENT_BROKER_URL"])
    assert shipped.scheme == "rediss"
    return urlunsplit(shipped._replace(netloc=f":{PASSWORD}@127.0.0.1:{port}"))


def connect(client: str, url: str, trusted: Path) -> subprocess.CompletedProcess[str]:
    """A client in a fresh process whose trust store is ``trusted`` alone (SSL_CERT_FILE)."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env = {**base, "SSL_CERT_FILE": str(trusted), "PYTHONPATH": str(REPO)}
    if client == "controlplane":
        env.update(
            DEBUG="1", CELERY_BROKER_URL=url, CORRAL_VAR_DIR=str(trusted.parent / "var"),
            DJANGO_SETTINGS_MODULE="config.settings",
        )  # fmt: skip
    code = AGENT_CLIENT if client == "agent" else CONTROLPLANE_CLIENT
    return subprocess.run(
        [sys.executable, "-c", code, url],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("client", ["agent", "controlplane"])
def test_recommended_url_connects_when_the_certificate_is_trusted(
    tls_redis: tuple[int, Path, Path], client: str
) -> None:
    port, cert, _ = tls_redis
    done = connect(client, recommended_url(port), trusted=cert)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PING True" in done.stdout


@pytest.mark.parametrize("client", ["agent", "controlplane"])
def test_recommended_url_refuses_a_certificate_it_does_not_trust(
    tls_redis: tuple[int, Path, Path], client: str
) -> None:
    port, _, stranger = tls_redis
    done = connect(client, recommended_url(port), trusted=stranger)
    assert done.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr


def test_bare_rediss_url_would_not_check_the_certificate(tls_redis: tuple[int, Path, Path]) -> None:
    port, _, stranger = tls_redis
    bare = recommended_url(port).split("?", 1)[0]
    done = connect("agent", bare, trusted=stranger)
    assert done.returncode == 0, done.stderr[-2000:]  # encrypted, but to anyone at all
