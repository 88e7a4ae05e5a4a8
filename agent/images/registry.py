"""A small OCI Distribution / Docker Registry v2 client on ``http.client``.

Handles bearer-token auth (``WWW-Authenticate: Bearer realm=,service=,scope=``) and basic
auth, redirects (dropping credentials when the host changes, as a blob store on another
host must not see them), TLS with a caller-provided CA, and ranged blob reads so an
interrupted download resumes. Connections are kept alive per host.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit

from agent.images.errors import (
    NETWORK_ERROR,
    NOT_FOUND,
    REGISTRY_ERROR,
    TLS_ERROR,
    UNAUTHORIZED,
    ImageError,
)
from agent.images.manifest import ACCEPT, MAX_DOCUMENT_BYTES
from agent.protocol.messages import RegistryAuth

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
CHUNK = 1 << 20
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def default_registry_url(registry: str) -> str:
    """Where a registry name is served: HTTPS, except plain HTTP for loopback hosts (as
    Docker treats 127.0.0.0/8 and localhost as insecure registries). Docker Hub's name maps
    to its API host; nothing is contacted unless a caller pulls from it."""
    if registry == "docker.io":
        return "https://registry-1.docker.io"
    host = urlsplit(f"//{registry}").hostname or ""
    if host == "localhost" or host == "::1" or host.startswith("127."):
        return f"http://{registry}"
    return f"https://{registry}"


def ssl_context(auth: RegistryAuth | None, ca_file: str | None = None) -> ssl.SSLContext:
    """System trust plus the CA of ``auth.ca_pem`` / ``ca_file`` when given."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if auth is not None and auth.ca_pem:
        ctx.load_verify_locations(cadata=auth.ca_pem)
    return ctx


class RegistryClient:
    """One repository on one registry."""

    def __init__(
        self,
        base_url: str,
        repository: str,
        *,
        auth: RegistryAuth | None = None,
        ca_file: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImageError(REGISTRY_ERROR, f"registry_url {base_url!r}: must be http(s)://host")
        self.base_url = base_url.rstrip("/")
        self.repository = repository
        self.auth = auth
        self.timeout = timeout
        self._ssl = ssl_context(auth, ca_file) if parts.scheme == "https" else None
        self._conns: dict[tuple[str, str, int], http.client.HTTPConnection] = {}
        self._token: str | None = None
        self._basic = False

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    # --- API -------------------------------------------------------------------------------

    def get_manifest(self, reference: str) -> Response:
        """Fetch a manifest or index by tag or digest; 404 raises ``not_found``."""
        url = f"{self.base_url}/v2/{self.repository}/manifests/{reference}"
        resp = self._request("GET", url, {"Accept": ACCEPT}, limit=MAX_DOCUMENT_BYTES)
        if resp.status == 404:
            raise ImageError(NOT_FOUND, f"manifest {self.repository}:{reference}: not found")
        if resp.status != 200:
            raise ImageError(REGISTRY_ERROR, f"manifest {reference}: HTTP {resp.status}")
        return resp

    def open_blob(self, digest: str, offset: int = 0) -> tuple[int, Iterator[bytes]]:
        """Stream blob ``digest`` from ``offset`` (HTTP Range). Returns the offset the
        stream really starts at: 0 when the server ignored the Range."""
        url = f"{self.base_url}/v2/{self.repository}/blobs/{digest}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        conn, resp = self._open("GET", url, headers)
        if resp.status == 404:
            resp.read()
            raise ImageError(NOT_FOUND, f"blob {digest}: not found in {self.repository}")
        if resp.status == 416 and offset:  # partial file already whole or bogus: restart
            resp.read()
            return self.open_blob(digest, 0)
        if resp.status not in (200, 206):
            resp.read()
            raise ImageError(REGISTRY_ERROR, f"blob {digest}: HTTP {resp.status}")
        start = 0
        if resp.status == 206:
            start = _range_start(resp.getheader("Content-Range", ""))
            if start != offset:  # not the part we asked for: take the whole blob instead
                resp.read()
                return self.open_blob(digest, 0)
        return start, self._iter_body(conn, resp, digest)

    # --- HTTP ------------------------------------------------------------------------------

    def _iter_body(
        self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, what: str
    ) -> Iterator[bytes]:
        try:
            while chunk := resp.read(CHUNK):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ImageError(NETWORK_ERROR, f"blob {what}: transfer broke ({exc})") from exc
        if resp.length:  # http.client reports a connection closed early as a short EOF
            conn.close()
            raise ImageError(
                NETWORK_ERROR, f"blob {what}: connection closed, {resp.length} B short"
            )
        if not resp.isclosed():
            resp.close()

    def _request(self, method: str, url: str, headers: dict[str, str], *, limit: int) -> Response:
        conn, resp = self._open(method, url, headers)
        try:
            body = resp.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ImageError(NETWORK_ERROR, f"{method} {url}: {exc}") from exc
        if len(body) > limit:
            conn.close()
            raise ImageError(REGISTRY_ERROR, f"{method} {url}: response over {limit} bytes")
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)

    def _open(
        self, method: str, url: str, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send with auth, answering one auth challenge and following redirects."""
        origin = _origin(self.base_url)
        challenged = False
        for _hop in range(MAX_REDIRECTS + 1):
            send = dict(headers)
            if _origin(url) == origin:  # credentials never leave the registry's origin
                send.update(self._auth_header())
            conn, resp = self._send(method, url, send)
            if resp.status == 401 and not challenged and _origin(url) == origin:
                challenge = resp.getheader("WWW-Authenticate", "")
                resp.read()
                challenged = True
                self._answer_challenge(challenge)
                continue
            if resp.status == 401:
                resp.read()
                raise ImageError(UNAUTHORIZED, f"{method} {url}: credentials refused")
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                resp.read()
                if not location:
                    raise ImageError(REGISTRY_ERROR, f"{method} {url}: redirect without Location")
                url = urljoin(url, location)
                if urlsplit(url).scheme not in ("http", "https"):
                    raise ImageError(REGISTRY_ERROR, f"{method}: redirect to {url!r} refused")
                continue
            return conn, resp
        raise ImageError(REGISTRY_ERROR, f"{method} {url}: more than {MAX_REDIRECTS} redirects")

    def _send(
        self, method: str, url: str, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):  # a kept-alive connection the server closed: retry once
            conn = self._conn(parts.scheme, parts.hostname or "", parts.port)
            try:
                conn.request(method, path, headers=headers)
                return conn, conn.getresponse()
            except ssl.SSLError as exc:
                conn.close()
                raise ImageError(TLS_ERROR, f"{parts.netloc}: TLS failed ({exc})") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._conns.pop((parts.scheme, parts.hostname or "", parts.port or 0), None)
                if attempt == 2 or isinstance(exc, socket.timeout | ConnectionRefusedError):
                    raise ImageError(NETWORK_ERROR, f"{method} {url}: {exc}") from exc
        raise AssertionError("unreachable")

    def _conn(self, scheme: str, host: str, port: int | None) -> http.client.HTTPConnection:
        key = (scheme, host, port or 0)
        conn = self._conns.get(key)
        if conn is None:
            if scheme == "https":
                ctx = self._ssl or ssl_context(self.auth)
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            self._conns[key] = conn
        return conn

    # --- auth ------------------------------------------------------------------------------

    def _auth_header(self) -> dict[str, str]:
        if self._token:
            return {"Authorization": f"Bearer {self._token}"}
        if self._basic and self.auth is not None:
            return {"Authorization": f"Basic {self._basic_credentials()}"}
        return {}

    def _basic_credentials(self) -> str:
        assert self.auth is not None
        raw = f"{self.auth.username}:{self.auth.password}".encode()
        return base64.b64encode(raw).decode("ascii")

    def _answer_challenge(self, challenge: str) -> None:
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if self.auth is None or not self.auth.username:
                raise ImageError(UNAUTHORIZED, f"{self.base_url}: registry wants credentials")
            self._basic = True
            return
        if scheme != "bearer":
            raise ImageError(UNAUTHORIZED, f"{self.base_url}: unknown auth scheme {scheme!r}")
        params = dict(_CHALLENGE_RE.findall(challenge))
        realm = params.pop("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise ImageError(UNAUTHORIZED, f"{self.base_url}: bearer challenge without realm")
        params.setdefault("scope", f"repository:{self.repository}:pull")
        self._token = self._fetch_token(realm, params)

    def _fetch_token(self, realm: str, params: dict[str, str]) -> str:
        url = f"{realm}{'&' if '?' in realm else '?'}{urlencode(params)}"
        headers = {}
        if self.auth is not None and self.auth.username:
            headers["Authorization"] = f"Basic {self._basic_credentials()}"
        _conn, resp = self._send("GET", url, headers)
        body = resp.read(MAX_DOCUMENT_BYTES)
        if resp.status != 200:
            raise ImageError(UNAUTHORIZED, f"token {realm}: HTTP {resp.status}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except ValueError:
            token = None
        if not isinstance(token, str) or not token:
            raise ImageError(UNAUTHORIZED, f"token {realm}: no token in response")
        return token


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _range_start(content_range: str) -> int:
    """First byte of ``Content-Range: bytes <first>-<last>/<size>``; -1 if unreadable."""
    match = re.match(r"^bytes (\d+)-\d+/(?:\d+|\*)$", content_range.strip())
    return int(match.group(1)) if match else -1
