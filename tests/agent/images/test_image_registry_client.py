"""The registry client's auth and redirect rules, against small recording HTTP servers on
loopback (the real registry cannot show what headers a redirect target received)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agent.images import ImageError, RegistryAuth
from agent.images.registry import RegistryClient

Handler = Callable[[http.server.BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]


@contextmanager
def serve(handle: Handler) -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            status, headers, body = handle(self)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


BLOB = b"blob-bytes"
DIGEST = "sha256:" + "c" * 64


def test_credentials_are_not_sent_to_a_redirect_on_another_origin() -> None:
    with serve(lambda h: (200, {}, BLOB)) as (storage_url, storage_seen):

        def registry(h: http.server.BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
            if "Authorization" not in h.headers:
                return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
            return 307, {"Location": f"{storage_url}/signed/blob?sig=1"}, b""

        with serve(registry) as (url, seen):
            client = RegistryClient(url, "team/app", auth=RegistryAuth("alice", "pw"))
            start, chunks = client.open_blob(DIGEST)
            assert start == 0 and b"".join(chunks) == BLOB
            client.close()
    assert seen[0].get("authorization") is None
    assert seen[1]["authorization"].startswith("Basic ")
    assert storage_seen[0]["path"] == "/signed/blob?sig=1"
    assert "authorization" not in storage_seen[0]


def test_redirect_to_a_non_http_scheme_is_refused() -> None:
    with serve(lambda h: (302, {"Location": "file:///etc/passwd"}, b"")) as (url, _seen):
        client = RegistryClient(url, "team/app")
        with pytest.raises(ImageError) as err:
            client.open_blob(DIGEST)
        client.close()
    assert err.value.code == "registry_error" and "file:///etc/passwd" in err.value.detail


def test_redirect_loops_stop() -> None:
    with serve(lambda h: (302, {"Location": h.path}, b"")) as (url, seen):
        client = RegistryClient(url, "team/app")
        with pytest.raises(ImageError) as err:
            client.get_manifest("latest")
        client.close()
    assert err.value.code == "registry_error" and len(seen) == 6


def test_bearer_challenge_fetches_a_token_with_scope_and_service() -> None:
    with serve(lambda h: (200, {}, b'{"access_token": "tok123"}')) as (auth_url, auth_seen):

        def registry(h: http.server.BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
            if h.headers.get("Authorization") != "Bearer tok123":
                challenge = f'Bearer realm="{auth_url}/token",service="reg.example"'
                return 401, {"WWW-Authenticate": challenge}, b""
            return 200, {"Content-Type": "application/json"}, b"{}"

        with serve(registry) as (url, _seen):
            client = RegistryClient(url, "team/app", auth=RegistryAuth("bob", "pw"))
            assert client.get_manifest("v1").body == b"{}"
            client.close()
    query = auth_seen[0]["path"]
    assert "service=reg.example" in query and "scope=repository%3Ateam%2Fapp%3Apull" in query
    assert auth_seen[0]["authorization"].startswith("Basic ")


def test_anonymous_client_facing_basic_auth_is_unauthorized() -> None:
    challenge = {"WWW-Authenticate": 'Basic realm="r"'}
    with serve(lambda h: (401, challenge, b"")) as (url, _seen):
        client = RegistryClient(url, "team/app")
        with pytest.raises(ImageError) as err:
            client.get_manifest("v1")
        client.close()
    assert err.value.code == "unauthorized"


def test_registry_url_must_be_http_or_https() -> None:
    with pytest.raises(ImageError) as err:
        RegistryClient("ftp://example.com", "a")
    assert err.value.code == "registry_error" and "registry_url" in err.value.detail


def test_a_206_for_the_wrong_range_falls_back_to_the_whole_blob() -> None:
    def handle(h: http.server.BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if h.headers.get("Range"):
            return 206, {"Content-Range": f"bytes 0-{len(BLOB) - 1}/{len(BLOB)}"}, BLOB
        return 200, {}, BLOB

    with serve(handle) as (url, seen):
        client = RegistryClient(url, "team/app")
        start, chunks = client.open_blob(DIGEST, offset=4)
        assert start == 0 and b"".join(chunks) == BLOB
        client.close()
    assert [s.get("range") for s in seen] == ["bytes=4-", None]
