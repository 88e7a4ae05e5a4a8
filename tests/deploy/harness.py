"""Run the shipped deployment files for real, with only their machine paths substituted.

Every substitution must match the shipped text exactly (a missing match fails the test), so the
tests notice when a file changes in a way they would no longer cover.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet

from tests.support.procs import REPO, Proc, free_port, running, wait_port

DEPLOY = REPO / "deploy"
SITE_NAME = "corral.example.org"


def substitute(text: str, replacements: Mapping[str, str], *, source: str) -> str:
    """Replace each key by its value; every key must occur in ``text``."""
    for old, new in replacements.items():
        assert old in text, f"{source} no longer contains {old!r}; update the test's substitution"
        text = text.replace(old, new)
    return text


def self_signed_certificate(directory: Path, name: str = SITE_NAME) -> tuple[Path, Path]:
    """An RSA certificate for ``name`` (RSA so that a refused non-forward-secret RSA cipher
    is refused by the server's configuration, not for want of a matching key)."""
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    argv = [
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
        "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return cert, key


@dataclass(frozen=True)
class NginxSite:
    """The example site rendered into ``prefix`` with loopback ports and test paths."""

    prefix: Path
    main_conf: Path
    http_port: int
    https_port: int
    cert: Path

    def argv(self, *extra: str) -> list[str]:
        return [
            "nginx", "-p", str(self.prefix), "-c", str(self.main_conf),
            "-e", str(self.prefix / "error.log"), *extra,
        ]  # fmt: skip


def render_nginx_site(
    prefix: Path, *, http_port: int, https_port: int, upstream_port: int, static_dir: Path
) -> NginxSite:
    """deploy/nginx/corral.conf inside a minimal nginx.conf that keeps everything in ``prefix``."""
    cert, key = self_signed_certificate(prefix)
    acme = prefix / "acme"
    acme.mkdir()
    shipped = (DEPLOY / "nginx" / "corral.conf").read_text()
    site = substitute(
        shipped,
        {
            "listen 80;": f"listen 127.0.0.1:{http_port};",
            "listen [::]:80;": "",
            "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
            "listen [::]:443 ssl http2;": "",
            f"/etc/letsencrypt/live/{SITE_NAME}/fullchain.pem": str(cert),
            f"/etc/letsencrypt/live/{SITE_NAME}/privkey.pem": str(key),
            "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream_port};",
            "alias /var/lib/corral/static/;": f"alias {static_dir}/;",
            "root /var/www/letsencrypt;": f"root {acme};",
        },
        source="deploy/nginx/corral.conf",
    )
    (prefix / "corral.conf").write_text(site)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would otherwise switch to "nobody", who cannot enter the test's
    # private temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    main_conf = prefix / "nginx.conf"
    main_conf.write_text(
        f"""{user}worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 128; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {prefix / "access.log"};
{temp_paths}
    include {prefix / "corral.conf"};
}}
"""
    )
    return NginxSite(prefix, main_conf, http_port, https_port, cert)


# --- systemd units and environment files -------------------------------------------------


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), ...]}, in file order (keys may repeat)."""
    return parse_unit_text(path.read_text(), name=path.name)


def parse_unit_text(text: str, *, name: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{name}:{number}: a setting outside any section"
        assert "=" in line and not line.endswith("\\"), f"{name}:{number}: {line!r}"
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(path: Path, section: str, key: str) -> list[str]:
    return [v for k, v in parse_unit(path).get(section, []) if k == key]


def unit_value(path: Path, section: str, key: str) -> str:
    values = unit_values(path, section, key)
    assert len(values) == 1, f"{path.name}: expected one {key}= in [{section}], found {values}"
    return values[0]


def expand_specifiers(value: str, *, hostname: str) -> str:
    """The systemd specifiers our units use: %% (a literal %) and %H (the host name)."""
    out, index = [], 0
    while index < len(value):
        char = value[index]
        if char == "%":
            spec = value[index + 1 : index + 2]
            assert spec in ("%", "H"), f"unexpected specifier %{spec} in {value!r}"
            out.append("%" if spec == "%" else hostname)
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def read_env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile= as systemd reads the subset we allow: NAME=value lines (no quotes,
    no spaces around '='), comments and blank lines."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"{path.name}:{number}: {line!r}"
        assert value == value.strip(), f"{path.name}:{number}: whitespace around the value"
        assert not value.startswith(("'", '"')), f"{path.name}:{number}: quoted value"
        assert name not in values, f"{path.name}:{number}: {name} set twice"
        values[name] = value
    return values


# --- the units' commands and environments, as systemd would build them from this checkout ---

UNITS = DEPLOY / "systemd"


def from_checkout(value: str) -> str:
    """The control plane's /opt/corral paths pointed at this checkout (not /opt/corral-agent)."""
    return re.sub(r"/opt/corral(?![\w-])", str(REPO), value)


def unit_argv(name: str) -> list[str]:
    line = unit_value(UNITS / name, "Service", "ExecStart")
    return shlex.split(from_checkout(expand_specifiers(line, hostname=socket.gethostname())))


def unit_env(name: str, var_dir: Path, **overrides: str) -> dict[str, str]:
    """Environment= then EnvironmentFile= (which wins, as in systemd), then test overrides;
    /var/lib/corral becomes ``var_dir``."""
    env: dict[str, str] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for assignment in shlex.split(unit_value(UNITS / name, "Service", "Environment")):
        key, _, value = assignment.partition("=")
        env[key] = value
    assert unit_value(UNITS / name, "Service", "EnvironmentFile") == "/etc/corral/corral.env"
    env.update(read_env_file(DEPLOY / "env.example"))
    env.update(
        SECRET_KEY=secrets.token_urlsafe(50),
        CORRAL_FERNET_KEYS=Fernet.generate_key().decode(),
        DATABASE_URL=f"sqlite:///{var_dir}/corral.sqlite3",
        CELERY_BROKER_URL="filesystem://",
        CORRAL_AGENT_BROKER_URL="filesystem://",
    )
    env = {k: v.replace("/var/lib/corral", str(var_dir)) for k, v in env.items()}
    env.update(overrides)
    return env


def stop_like_systemd(proc: Proc, name: str) -> float:
    """SIGTERM to the main process only; returns how long it took to exit."""
    limit = float(next(iter(unit_values(UNITS / name, "Service", "TimeoutStopSec")), "90"))
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    code = proc.popen.wait(timeout=limit)
    took = time.monotonic() - started
    assert code == 0, f"{name} exited {code} on SIGTERM:\n{proc.log()[-3000:]}"
    return took


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[str]:
    """A Redis of the test's own on loopback, with a password as the README sets one up; its
    broker URL. (The filesystem transport of development writes control files into the
    working directory, which is the checkout here and read-only under the units' sandbox.)"""
    port = free_port()
    argv = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "s3cret",
        "--save", "", "--appendonly", "no", "--dir", str(directory),
    ]  # fmt: skip
    with running("redis", argv, log_dir=directory):
        wait_port("127.0.0.1", port)
        yield f"redis://:s3cret@127.0.0.1:{port}/0"
