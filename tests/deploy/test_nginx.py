"""deploy/nginx/corral.conf in a real nginx: syntax, TLS policy, redirects, the forwarded headers
Django relies on, one HSTS header, static files, and log follows that are not buffered.

The upstream is a small HTTP server in this process that echoes what nginx forwarded, so each
header can be asserted; test_gunicorn_conf.py puts the real gunicorn + Django behind it.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deploy.harness import SITE_NAME, NginxSite, render_nginx_site
from tests.support.procs import free_port, running, wait_port

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None, reason="needs nginx (tests/system-packages.txt lists it)"
)

HSTS = "max-age=31536000; includeSubDomains"
STREAM_HOLD = 1.5  # seconds the upstream waits between the two lines of a follow


class EchoUpstream(BaseHTTPRequestHandler):
    """Answers with the request headers it got; ``?follow=1`` streams two lines, apart."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if "follow=1" in self.path:
            self._stream()
            return
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        # What Django sends; nginx must hide it in favour of its own.
        self.send_header("Strict-Transport-Security", "max-age=60; preload")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        """Answers before reading the body: what reached us is what nginx let through."""
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, line in enumerate((b'{"line": 1}\n', b'{"line": 2}\n')):
            if index:
                time.sleep(STREAM_HOLD)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoUpstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, upstream: int) -> NginxSite:
    """The example site, rendered once per module (an RSA key takes a while to make)."""
    prefix = tmp_path_factory.mktemp("nginx")
    static = prefix / "static"
    (static / "css").mkdir(parents=True)
    (static / "css" / "app.0123abcd.css").write_text("body { color: teal; }\n")
    return render_nginx_site(
        prefix,
        http_port=free_port(),
        https_port=free_port(),
        upstream_port=upstream,
        static_dir=static,
    )


@pytest.fixture(scope="module")
def nginx(rendered: NginxSite) -> Iterator[NginxSite]:
    argv = rendered.argv("-g", "daemon off;")
    with running("nginx", argv, log_dir=rendered.prefix) as proc:
        try:
            wait_port("127.0.0.1", rendered.https_port)
        except AssertionError:
            raise AssertionError(proc.log() + (rendered.prefix / "error.log").read_text()) from None
        yield rendered


def tls_context(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # we connect to 127.0.0.1; the chain is still verified
    return context


def https(
    site: NginxSite, path: str, headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPResponse, http.client.HTTPSConnection]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", site.https_port, context=tls_context(site.cert), timeout=10
    )
    conn.request("GET", path, headers={"Host": SITE_NAME, **(headers or {})})
    return conn.getresponse(), conn


def test_nginx_accepts_the_example_configuration(rendered: NginxSite) -> None:
    done = subprocess.run(rendered.argv("-t"), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "[warn]" not in done.stderr, done.stderr


def test_plain_http_redirects_to_https_without_reaching_the_upstream(nginx: NginxSite) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", nginx.http_port, timeout=10)
    conn.request("GET", "/hosts/?page=2", headers={"Host": SITE_NAME, "X-Forwarded-Proto": "https"})
    response = conn.getresponse()
    assert response.status == 301
    assert response.getheader("Location") == f"https://{SITE_NAME}/hosts/?page=2"
    conn.close()


def test_django_gets_host_scheme_and_client_address_and_cannot_be_told_otherwise(
    nginx: NginxSite,
) -> None:
    response, conn = https(nginx, "/login/", {"X-Forwarded-Proto": "http"})
    assert response.status == 200
    seen = json.loads(response.read())
    conn.close()
    assert seen["host"] == SITE_NAME
    assert seen["x-forwarded-proto"] == "https"  # the client's own value is replaced
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"


def test_every_answer_carries_exactly_one_hsts_header_from_nginx(nginx: NginxSite) -> None:
    for path in ("/login/", "/static/css/app.0123abcd.css", "/static/missing.css"):
        response, conn = https(nginx, path)
        response.read()
        conn.close()
        assert response.msg.get_all("Strict-Transport-Security") == [HSTS], path


def test_static_files_are_served_by_nginx_with_long_caching(nginx: NginxSite) -> None:
    response, conn = https(nginx, "/static/css/app.0123abcd.css")
    assert response.status == 200
    assert response.read() == b"body { color: teal; }\n"
    conn.close()
    assert response.getheader("Content-Type", "").startswith("text/css")
    assert response.getheader("Cache-Control") == "max-age=2592000"
    assert response.getheader("X-Content-Type-Options") == "nosniff"


def handshake(site: NginxSite, *, cipher: str | None = None) -> tuple[str, str]:
    """(TLS version, cipher) negotiated; ``cipher`` limits the client to that TLS 1.2 suite."""
    context = tls_context(site.cert)
    if cipher is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(cipher)
    with (
        socket.create_connection(("127.0.0.1", site.https_port), 5) as raw,
        context.wrap_socket(raw, server_hostname=SITE_NAME) as tls,
    ):
        negotiated = tls.cipher()
        return str(tls.version()), str(negotiated[0] if negotiated else "")


def test_tls_refuses_ciphers_without_forward_secrecy(nginx: NginxSite) -> None:
    assert handshake(nginx, cipher="ECDHE-RSA-AES128-GCM-SHA256") == (
        "TLSv1.2",
        "ECDHE-RSA-AES128-GCM-SHA256",
    )
    with pytest.raises(ssl.SSLError):
        handshake(nginx, cipher="AES128-GCM-SHA256")  # RSA key exchange: no forward secrecy


def test_tls13_is_preferred_when_the_client_has_it(nginx: NginxSite) -> None:
    assert handshake(nginx)[0] == "TLSv1.3"


def first_line_delay(site: NginxSite, path: str) -> float:
    started = time.monotonic()
    response, conn = https(site, path)
    assert response.status == 200
    first = response.readline()
    delay = time.monotonic() - started
    assert json.loads(first) == {"line": 1}
    assert json.loads(response.readline()) == {"line": 2}
    conn.close()
    return delay


@pytest.mark.slow
def test_log_follow_lines_pass_through_unbuffered(nginx: NginxSite) -> None:
    """The first log line reaches the client at once, not when the stream ends; the same
    stream under another API path is buffered by nginx (the control that shows the test
    could fail)."""
    container = "7c0d3b8e-4f1a-4e61-9d7e-2b1c5a9e0f11"
    follow = first_line_delay(nginx, f"/api/v1/containers/{container}/logs/?follow=1&tail=10")
    buffered = first_line_delay(nginx, f"/api/v1/containers/{container}/stats/?follow=1")
    print(f"first line via nginx: logs {follow * 1e3:.0f} ms, other path {buffered * 1e3:.0f} ms")
    assert follow < STREAM_HOLD / 2
    assert buffered >= STREAM_HOLD * 0.9


@pytest.mark.slow
def test_registry_blobs_pass_through_unbuffered(nginx: NginxSite) -> None:
    """Agents pulling a blob get its first bytes while the rest is still being read."""
    blob = "/v2/p1/web/blobs/sha256:" + "ab" * 32 + "?follow=1"
    assert first_line_delay(nginx, blob) < STREAM_HOLD / 2


def post_head(site: NginxSite, path: str, length: int) -> int:
    """POST headers announcing ``length`` bytes and a first kilobyte; the answer's status."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", site.https_port, context=tls_context(site.cert), timeout=10
    )
    conn.putrequest("POST", path, skip_host=True)
    conn.putheader("Host", SITE_NAME)
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(length))
    conn.endheaders(b"\0" * 1024)
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/hosts/", 413),  # 100 MiB for ordinary API and form bodies
        ("/api/v1/images/upload/", 202),  # image archives: no limit, streamed to gunicorn
    ],
)
def test_only_image_uploads_may_be_larger_than_100_mib(
    nginx: NginxSite, path: str, status: int
) -> None:
    assert post_head(nginx, path, 5 * 1024**3) == status
