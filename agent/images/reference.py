"""Image references: ``[registry/]repository[:tag][@digest]``, parsed like Docker does.

Docker Hub defaults (``docker.io``, ``library/``) are applied only to *names* so that
references compare equal; nothing here ever contacts a registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.images.errors import INVALID_REFERENCE, ImageError

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?$")


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised image reference. ``tag`` is None only when pinned by digest."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)


def is_digest(text: str) -> bool:
    return bool(DIGEST_RE.match(text))


def parse_reference(text: str) -> Reference:
    """Parse ``text`` into a :class:`Reference`; raises ``ImageError(invalid_reference)``
    naming the part (registry, repository, tag, digest) that is wrong."""
    if not text or len(text) > 512 or text != text.strip():
        raise ImageError(INVALID_REFERENCE, f"reference {text!r}: empty, too long or padded")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST_RE.match(digest):
            raise ImageError(INVALID_REFERENCE, f"digest {digest!r}: must be sha256:<64 hex>")
    tag = None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not TAG_RE.match(tag):
            raise ImageError(INVALID_REFERENCE, f"tag {tag!r}: letters, digits, _ . -; max 128")
    registry = DEFAULT_REGISTRY
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST_RE.match(first):
            raise ImageError(INVALID_REFERENCE, f"registry {first!r}: not a host[:port]")
        registry, rest = first, remainder
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in rest:
        rest = f"library/{rest}"
    if not REPOSITORY_RE.match(rest) or len(rest) > 255:
        raise ImageError(INVALID_REFERENCE, f"repository {rest!r}: lowercase path components")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, rest, tag, digest)
