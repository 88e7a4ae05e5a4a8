"""Builders for test images (layers, configs, manifests, archives), a real Debian
``docker-registry`` on loopback, our own push code, and a loopback proxy that counts,
redirects, truncates or rewrites registry traffic so pulls can be checked from outside."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import socket
import ssl
import subprocess
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zstandard

from agent.images.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
)

BUSYBOX = Path("/bin/busybox")
REGISTRY_BIN = Path("/usr/bin/docker-registry")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- layers ---------------------------------------------------------------------------------


@dataclass
class Entry:
    """One tar entry to write. ``kind``: file, dir, symlink, hardlink, chr, blk, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    dev: tuple[int, int] = (0, 0)
    uid: int = 0
    gid: int = 0


def tar_bytes(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    types = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "chr": tarfile.CHRTYPE,
        "blk": tarfile.BLKTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = types[e.kind]
            info.mode = e.mode if e.kind != "dir" or e.mode != 0o644 else 0o755
            info.uid, info.gid = e.uid, e.gid
            info.mtime = 1_700_000_000
            info.linkname = e.target
            info.devmajor, info.devminor = e.dev
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def compress(raw: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(raw, compresslevel=1, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(raw)
    return raw


def busybox_entries() -> list[Entry]:
    return [
        Entry("bin", "dir"),
        Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755),
        Entry("bin/sh", "symlink", target="busybox"),
        Entry("bin/ls", "symlink", target="/bin/busybox"),
        Entry("etc", "dir"),
        Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
        Entry("etc/hostname", data=b"base\n"),
        Entry("etc/conf.d", "dir"),
        Entry("etc/conf.d/a.conf", data=b"a\n"),
        Entry("etc/conf.d/b.conf", data=b"b\n"),
        Entry("tmp", "dir", mode=0o1777),
    ]


# --- images ---------------------------------------------------------------------------------

_MEDIA = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}


@dataclass
class BuiltImage:
    manifest: bytes
    config: bytes
    layers: list[bytes]  # compressed blobs, bottom first
    diff_ids: list[str]
    media_type: str = OCI_MANIFEST
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha(self.config)


def build_image(
    layers: list[list[Entry]] | list[bytes],
    *,
    compression: str = "gzip",
    arch: str = "amd64",
    docker_media: bool = False,
    config_extra: dict[str, Any] | None = None,
) -> BuiltImage:
    """An image from layer entry lists (or raw uncompressed tars) with a realistic config."""
    raws = [tar_bytes(layer) if isinstance(layer, list) else layer for layer in layers]
    blobs = [compress(raw, compression) for raw in raws]
    diff_ids = [sha(raw) for raw in raws]
    inner = {
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hello"],
        "Env": ["PATH=/bin", "GREETING=hi=there"],
        "User": "1000:1000",
        "WorkingDir": "/tmp",
        "Labels": {"org.opencontainers.image.title": "test", "tier": "base"},
        "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
        "StopSignal": "SIGQUIT",
    }
    inner.update(config_extra or {})
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": inner,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    if docker_media:
        mtype, ctype, ltype = (
            DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
            ("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        )
    else:
        mtype, ctype, ltype = OCI_MANIFEST, OCI_CONFIG, _MEDIA[compression]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mtype,
            "config": {"mediaType": ctype, "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": ltype, "digest": sha(b), "size": len(b)} for b in blobs],
        }
    ).encode()
    image = BuiltImage(manifest, config, blobs, diff_ids, mtype)
    image.blobs = {sha(b): b for b in [config, *blobs]}
    return image


def build_index(images: dict[str, BuiltImage], *, docker_media: bool = False) -> bytes:
    """An index over ``{"amd64": image, "arm64": image}``."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST if docker_media else OCI_INDEX,
            "manifests": [
                {
                    "mediaType": img.media_type,
                    "digest": img.digest,
                    "size": len(img.manifest),
                    "platform": {"os": "linux", "architecture": arch},
                }
                for arch, img in images.items()
            ],
        }
    ).encode()


# --- archives -------------------------------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_docker_save(path: Path, image: BuiltImage, tags: list[str], *, new_format: bool) -> None:
    """``docker save`` output: the pre-25 layout (``<id>/layer.tar``, ``<hex>.json``) or the
    25+ layout (OCI blobs plus manifest.json and index.json)."""
    raws = [gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b for b in image.layers]
    with tarfile.open(path, "w") as tar:
        if new_format:
            entries = {"Config": f"blobs/sha256/{image.config_digest[7:]}", "RepoTags": tags}
            layers = []
            for blob in image.layers:
                _add(tar, f"blobs/sha256/{sha(blob)[7:]}", blob)
                layers.append(f"blobs/sha256/{sha(blob)[7:]}")
            _add(tar, f"blobs/sha256/{image.config_digest[7:]}", image.config)
            _add(tar, f"blobs/sha256/{image.digest[7:]}", image.manifest)
            index = {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": image.digest,
                        "size": len(image.manifest),
                        "annotations": {"io.containerd.image.name": tags[0]} if tags else {},
                    }
                ],
            }
            _add(tar, "index.json", json.dumps(index).encode())
            _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        else:
            entries = {"Config": f"{image.config_digest[7:]}.json", "RepoTags": tags}
            layers = []
            for i, raw in enumerate(raws):
                layer_id = hashlib.sha256(f"layer{i}".encode() + raw).hexdigest()
                _add(tar, f"{layer_id}/VERSION", b"1.0")
                _add(tar, f"{layer_id}/json", json.dumps({"id": layer_id}).encode())
                _add(tar, f"{layer_id}/layer.tar", raw)
                layers.append(f"{layer_id}/layer.tar")
            _add(tar, f"{image.config_digest[7:]}.json", image.config)
            _add(tar, "repositories", b"{}")
        entries["Layers"] = layers
        _add(tar, "manifest.json", json.dumps([entries]).encode())


def write_oci_layout(
    dest: Path, manifests: list[tuple[bytes, str | None]], blobs: dict[str, bytes]
) -> None:
    """An OCI image layout directory: ``manifests`` are (document, ref.name annotation)."""
    (dest / "blobs" / "sha256").mkdir(parents=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descs = []
    for doc, ref in manifests:
        media = json.loads(doc).get("mediaType", OCI_MANIFEST)
        desc: dict[str, Any] = {"mediaType": media, "digest": sha(doc), "size": len(doc)}
        if ref:
            desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
        descs.append(desc)
        blobs = {**blobs, sha(doc): doc}
    for digest, data in blobs.items():
        (dest / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs}
    (dest / "index.json").write_text(json.dumps(index))


def tar_directory(src: Path, dest: Path) -> None:
    with tarfile.open(dest, "w") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)


# --- registry -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    ssl_context: ssl.SSLContext | None = None
    basic: tuple[str, str] | None = None
    token: str | None = None


@contextlib.contextmanager
def run_registry(
    tmp: Path,
    *,
    htpasswd: Path | None = None,
    tls: tuple[Path, Path] | None = None,
    token_auth: dict[str, str] | None = None,
) -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1:<free port>, storage in ``tmp``; stopped after.
    A port taken between choosing and binding it makes the registry exit: try another."""
    scheme = "https" if tls else "http"
    for _attempt in range(3):
        port = free_port()
        lines = [
            "version: 0.1",
            "log:",
            "  level: error",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {tmp / 'data'}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{port}",
        ]
        if tls:
            lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
        if htpasswd:
            lines += ["auth:", "  htpasswd:", "    realm: corral-test", f"    path: {htpasswd}"]
        if token_auth:
            lines += ["auth:", "  token:"] + [f"    {k}: {v}" for k, v in token_auth.items()]
        cfg = tmp / "registry.yml"
        cfg.write_text("\n".join(lines) + "\n")
        with open(tmp / "registry.log", "wb") as log:
            proc = subprocess.Popen(
                [str(REGISTRY_BIN), "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            if not _wait_until_serving(proc, port, tls is not None):
                continue  # exited at once: the port was taken
            yield Registry(f"{scheme}://127.0.0.1:{port}", port, proc)
            return
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    raise RuntimeError(f"docker-registry did not start: {(tmp / 'registry.log').read_text()}")


def _wait_until_serving(proc: subprocess.Popen[bytes], port: int, tls: bool) -> bool:
    """True once our process answers ``/v2/`` as a registry; False if it exited."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if tls:
                ctx = ssl._create_unverified_context()  # noqa: S323 - loopback readiness probe
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    "127.0.0.1", port, timeout=1, context=ctx
                )
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/v2/")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.getheader("Docker-Distribution-Api-Version") and proc.poll() is None:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("docker-registry did not answer /v2/ within 15 s")


def write_htpasswd(path: Path, user: str, password: str) -> None:
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{user}:{hashed}\n")


# --- push (our own client side of the distribution API) ------------------------------------


class Pusher:
    """Pushes blobs and manifests with monolithic uploads; basic or bearer auth."""

    def __init__(self, registry: Registry, repo: str) -> None:
        self.registry = registry
        self.repo = repo
        parts = urlsplit(registry.url)
        self.host, self.port, self.tls = parts.hostname or "", parts.port, parts.scheme == "https"

    def _conn(self) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(
                self.host, self.port, context=self.registry.ssl_context, timeout=30
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    def _req(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        hdrs = dict(headers or {})
        if self.registry.basic:
            raw = f"{self.registry.basic[0]}:{self.registry.basic[1]}".encode()
            hdrs["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        if self.registry.token:
            hdrs["Authorization"] = f"Bearer {self.registry.token}"
        conn = self._conn()
        try:
            conn.request(method, path, body=body or None, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def blob(self, data: bytes) -> None:
        digest = sha(data)
        status, _, _ = self._req("HEAD", f"/v2/{self.repo}/blobs/{digest}")
        if status == 200:
            return
        status, headers, body = self._req("POST", f"/v2/{self.repo}/blobs/uploads/")
        assert status == 202, (status, body)
        loc = urlsplit(headers["location"])
        path = (
            f"{loc.path}?{loc.query}&digest={digest}"
            if loc.query
            else f"{loc.path}?digest={digest}"
        )
        status, _, body = self._req("PUT", path, data, {"Content-Type": "application/octet-stream"})
        assert status == 201, (status, body)

    def manifest(self, ref: str, doc: bytes, media_type: str) -> None:
        status, _, body = self._req(
            "PUT", f"/v2/{self.repo}/manifests/{ref}", doc, {"Content-Type": media_type}
        )
        assert status == 201, (status, body)

    def image(self, image: BuiltImage, tag: str | None) -> None:
        for data in image.blobs.values():
            self.blob(data)
        self.manifest(tag or image.digest, image.manifest, image.media_type)


# --- proxy ----------------------------------------------------------------------------------


class Proxy:
    """A loopback HTTP proxy in front of a registry. It counts requests by (method, path)
    and can redirect blob GETs to the registry, cut the first transfer of a blob short,
    corrupt a blob, or rewrite paths."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.ranges: list[str] = []
        self.redirect_blobs = False
        self.cut_blob_after: int | None = None
        self.corrupt_blobs = False
        self.rewrite: dict[str, str] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_HEAD(self) -> None:
                proxy._handle(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def blob_gets(self) -> dict[str, int]:
        return {p: n for (m, p), n in self.counts.items() if m == "GET" and "/blobs/" in p}

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        path = self.rewrite.get(h.path, h.path)
        with self._lock:
            self.counts[(h.command, h.path)] += 1
            if h.headers.get("Range"):
                self.ranges.append(h.headers["Range"])
        if self.redirect_blobs and "/blobs/" in path and not path.startswith("/direct"):
            h.send_response(307)
            h.send_header("Location", f"/direct{path}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        path = path.removeprefix("/direct")
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        headers = {
            k: v for k, v in h.headers.items() if k.lower() in ("accept", "range", "authorization")
        }
        conn.request(h.command, path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        cut = None
        with self._lock:
            limit = self.cut_blob_after
            if limit is not None and "/blobs/" in path and h.command == "GET" and len(body) > limit:
                cut, self.cut_blob_after = limit, None  # only the first big enough transfer
        if self.corrupt_blobs and "/blobs/" in path and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "connection", "transfer-encoding", "date"):
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        if cut is not None:
            h.send_header("Connection", "close")
        h.end_headers()
        if h.command == "HEAD":
            return
        if cut is not None:
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(body)


def leftovers(root: Path) -> list[str]:
    """Everything under ``root`` (relative names), to prove nothing appeared outside."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def no_tmp_layers(store_root: Path) -> bool:
    return not any(p.name.startswith(".tmp-") for p in (store_root / "layers").iterdir())


def env_for_subprocess() -> dict[str, str]:
    env = dict(os.environ)
    repo = Path(__file__).resolve().parents[3]
    env["PYTHONPATH"] = f"{repo}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


# --- TLS and bearer tokens -----------------------------------------------------------------


@dataclass
class Pki:
    ca_pem: str
    cert_path: Path
    key_path: Path
    ca_path: Path


def make_pki(tmp: Path, cn: str = "corral-test-ca") -> Pki:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    cert_path, key_path, ca_path = tmp / "server.crt", tmp / "server.key", tmp / "ca.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    ca_path.write_text(ca_pem)
    return Pki(ca_pem, cert_path, key_path, ca_path)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A bearer token service for docker-registry's ``token`` auth: checks basic
    credentials and mints ES256 JWTs whose x5c chain is a self-signed signing cert."""

    SERVICE = "corral-test-registry"
    ISSUER = "corral-test-issuer"

    def __init__(self, tmp: Path, user: str, password: str) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.user, self.password = user, password
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral-token-signer")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = tmp / "token-signer.crt"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def registry_config(self) -> dict[str, str]:
        return {
            "realm": self.realm,
            "service": self.SERVICE,
            "issuer": self.ISSUER,
            "rootcertbundle": str(self.bundle),
        }

    def __enter__(self) -> TokenServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def mint(self, repository: str, actions: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": self.ISSUER,
            "sub": self.user,
            "aud": self.SERVICE,
            "exp": now + 300,
            "nbf": now - 60,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": [{"type": "repository", "name": repository, "actions": actions}],
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        der_sig = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der_sig)
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        from urllib.parse import parse_qs

        query = parse_qs(urlsplit(h.path).query)
        scope = query.get("scope", [None])[0]
        self.requests.append((query.get("service", [""])[0], scope))
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if h.headers.get("Authorization") != expected:
            h.send_response(401)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        repository = scope.split(":")[1] if scope else ""
        body = json.dumps({"token": self.mint(repository, ["pull"])}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
