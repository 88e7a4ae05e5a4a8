"""A read-only OCI Distribution endpoint serving uploaded images to agents.

``GET /v2/`` (ping), ``GET|HEAD /v2/<project>/<name>/manifests/<tag or digest>`` and
``GET|HEAD /v2/<project>/<name>/blobs/<digest>`` (with ``Range``, so an interrupted pull
resumes). Every request needs a per-host token (see ``containers.images.tokens``) sent as
HTTP Basic credentials; a request without them gets the ``Basic`` challenge the agent's
registry client answers. Only blobs referenced by that project's uploads are served.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import re_path
from django.views.decorators.http import require_http_methods

from containers.choices import ImageSource
from containers.images.blobs import CHUNK, DIGEST_RE, blob_path
from containers.images.tokens import TokenRefused, registry_token_verify
from containers.models import Image
from containers.models_images import ImageUpload

logger = logging.getLogger(__name__)

NAME = r"(?P<project>[a-z0-9][a-z0-9_-]*)/(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
REF = r"(?P<ref>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|sha256:[0-9a-f]{64})"
RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _error(status: int, code: str, message: str) -> JsonResponse:
    resp = JsonResponse({"errors": [{"code": code, "message": message}]}, status=status)
    resp["Docker-Distribution-API-Version"] = "registry/2.0"
    if status == 401:
        resp["WWW-Authenticate"] = 'Basic realm="corral"'
    return resp


def _credentials(request: HttpRequest) -> tuple[str, str] | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return username, password


def _authorise(request: HttpRequest, project: str | None) -> JsonResponse | None:
    """None when the request carries a valid token for ``project`` (any project for the
    ping), else the 401 to return. The reason is logged, never sent."""
    creds = _credentials(request)
    if creds is None:
        return _error(401, "UNAUTHORIZED", "authentication required")
    username, token = creds
    try:
        if project is None:
            claimed = token.split(".", 2)[1] if token.count(".") >= 2 else ""
            registry_token_verify(username, token, claimed)
        else:
            registry_token_verify(username, token, project)
    except TokenRefused as exc:
        logger.warning("registry request %s refused: %s", request.path, exc)
        return _error(401, "UNAUTHORIZED", "credentials refused")
    return None


@require_http_methods(["GET", "HEAD"])
def ping(request: HttpRequest) -> HttpResponse:
    denied = _authorise(request, None)
    if denied:
        return denied
    resp = JsonResponse({})
    resp["Docker-Distribution-API-Version"] = "registry/2.0"
    return resp


@require_http_methods(["GET", "HEAD"])
def manifest(request: HttpRequest, project: str, name: str, ref: str) -> HttpResponse:
    denied = _authorise(request, project)
    if denied:
        return denied
    uploads = Image.objects.filter(project__slug=project, source=ImageSource.UPLOAD)
    if DIGEST_RE.match(ref):
        image = uploads.filter(reference__startswith=f"{project}/{name}:", digest=ref).first()
    else:
        image = uploads.filter(reference=f"{project}/{name}:{ref}").first()
    upload = ImageUpload.objects.filter(image=image).first() if image else None
    if image is None or upload is None:
        return _error(404, "MANIFEST_UNKNOWN", f"manifest {project}/{name}:{ref} unknown")
    data = blob_path(image.digest).read_bytes()
    resp = HttpResponse(b"" if request.method == "HEAD" else data)
    resp["Content-Type"] = upload.manifest_media_type
    resp["Content-Length"] = str(len(data))
    resp["Docker-Content-Digest"] = image.digest
    resp["Docker-Distribution-API-Version"] = "registry/2.0"
    return resp


def _stream(path: str, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left > 0 and (chunk := f.read(min(CHUNK, left))):
            left -= len(chunk)
            yield chunk


@require_http_methods(["GET", "HEAD"])
def blob(request: HttpRequest, project: str, name: str, digest: str) -> HttpResponseBase:
    denied = _authorise(request, project)
    if denied:
        return denied
    known = (
        ImageUpload.objects.filter(
            image__project__slug=project,
            image__reference__startswith=f"{project}/{name}:",
            blobs__contains=[digest],
        ).exists()
        or Image.objects.filter(
            project__slug=project, source=ImageSource.UPLOAD, digest=digest
        ).exists()
    )
    path = blob_path(digest)
    if not known or not path.is_file():
        return _error(404, "BLOB_UNKNOWN", f"blob {digest} unknown to {project}/{name}")
    size = os.path.getsize(path)
    start, end, status = 0, size - 1, 200
    match = RANGE_RE.match(request.META.get("HTTP_RANGE", ""))
    if match:
        start = int(match.group(1))
        end = min(int(match.group(2) or size - 1), size - 1)
        if start >= size or start > end:
            refused = _error(416, "RANGE_INVALID", f"range not satisfiable for {size} bytes")
            refused["Content-Range"] = f"bytes */{size}"
            return refused
        status = 206
    length = end - start + 1
    body: Iterator[bytes] = (
        iter(()) if request.method == "HEAD" else _stream(str(path), start, length)
    )
    resp = StreamingHttpResponse(body, status=status, content_type="application/octet-stream")
    resp["Content-Length"] = str(length)
    resp["Docker-Content-Digest"] = digest
    resp["Accept-Ranges"] = "bytes"
    if status == 206:
        resp["Content-Range"] = f"bytes {start}-{end}/{size}"
    return resp


urlpatterns = [
    re_path(r"^$", ping, name="registry-ping"),
    re_path(rf"^{NAME}/manifests/{REF}$", manifest, name="registry-manifest"),
    re_path(rf"^{NAME}/blobs/(?P<digest>sha256:[0-9a-f]{{64}})$", blob, name="registry-blob"),
]
