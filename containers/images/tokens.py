"""Per-host registry tokens for the control plane's read-only registry endpoint.

Choice: a short-lived token minted for one host and one project and sent to that host only
inside the signed pull command (``PullImage.auth``: username = host id, password = token).
The agent's registry client answers our ``Basic`` challenge with it, so agents keep a single
pull path (no registry code of their own for the control plane); the token never travels
outside an envelope sealed by the control plane and addressed to that host, it expires with
the operation, and it is bound to its host and project, so another host cannot forge or
reuse it for another tenant's images. An HMAC (Django's ``salted_hmac`` over SECRET_KEY)
is enough: only the control plane mints and verifies tokens.
"""

from __future__ import annotations

import hmac
import time

from django.utils.crypto import salted_hmac

from agent.protocol.messages import RegistryAuth
from hosts.models import Host

SALT = "corral.registry.pull"
DEFAULT_TTL = 900.0


class TokenRefused(Exception):
    """Why a registry request's credentials were refused (logged, never sent back)."""


def _sign(host_id: str, project: str, expires: int) -> str:
    return salted_hmac(SALT, f"{host_id}|{project}|{expires}", algorithm="sha256").hexdigest()


def registry_auth(host: Host, project_slug: str, *, ttl: float = DEFAULT_TTL) -> RegistryAuth:
    """Credentials for ``host`` to pull ``project_slug``'s uploads for ``ttl`` seconds."""
    expires = int(time.time() + ttl)
    token = f"{expires}.{project_slug}.{_sign(str(host.pk), project_slug, expires)}"
    return RegistryAuth(username=str(host.pk), password=token)


def registry_token_verify(username: str, token: str, project_slug: str) -> Host:
    """The host these credentials belong to, or TokenRefused: wrong signature (forged or
    another host's), another project, expired, or a host that is not enrolled."""
    expires_s, _, rest = token.partition(".")
    project, _, sig = rest.rpartition(".")
    if not expires_s.isdigit() or not sig:
        raise TokenRefused("malformed token")
    if project != project_slug:
        raise TokenRefused(f"token is for project {project!r}, not {project_slug!r}")
    if not hmac.compare_digest(sig, _sign(username, project, int(expires_s))):
        raise TokenRefused(f"bad signature for host {username!r}")
    if int(expires_s) < time.time():
        raise TokenRefused("token expired")
    host = Host.objects.filter(pk=username).first() if _is_uuid(username) else None
    if host is None or not host.public_key:
        raise TokenRefused(f"host {username!r} is not enrolled")
    return host


def _is_uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
