"""Run the shipped deployment files for real, with only their machine paths substituted.

Every substitution must match the shipped text exactly (a missing match fails the test), so the
tests notice when a file changes in a way they would no longer cover.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import REPO

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
