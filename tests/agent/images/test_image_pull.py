"""Pulls from Debian's docker-registry on loopback, pushed to by our own push code."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from imgtest_helpers import (
    BuiltImage,
    Entry,
    Proxy,
    Pusher,
    Registry,
    TokenServer,
    build_image,
    build_index,
    busybox_entries,
    env_for_subprocess,
    make_pki,
    no_tmp_layers,
    run_registry,
    sha,
    write_htpasswd,
)

from agent.images import ImageError, ImageStore, RegistryAuth, UnpackLimits
from agent.images.manifest import OCI_INDEX
from agent.images.registry import default_registry_url

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

REPO = "test/busybox"


def _two_layer_image(**kw: object) -> BuiltImage:
    top = [
        Entry("etc/hostname", data=b"top\n"),
        Entry("etc/.wh.passwd"),
        Entry("srv/app", data=b"app\n"),
    ]
    return build_image([busybox_entries(), top], **kw)  # type: ignore[arg-type]


def _ref(reg: Registry, tail: str) -> str:
    return f"127.0.0.1:{reg.port}/{REPO}{tail}"


def test_pull_by_tag_verifies_unpacks_and_records(registry: Registry, store: ImageStore) -> None:
    image = _two_layer_image()
    Pusher(registry, REPO).image(image, "1.0")
    seen: list[tuple[int, int]] = []
    record = store.pull(
        _ref(registry, ":1.0"), registry_url=registry.url, progress=lambda d, t: seen.append((d, t))
    )
    assert record.digest == image.digest and record.config_digest == image.config_digest
    assert record.layers == tuple(image.diff_ids) and record.platform == "linux/amd64"
    assert record.labels["tier"] == "base" and record.created == "2026-01-01T00:00:00Z"
    assert seen[-1][0] == seen[-1][1] == record.size
    top, base = store.layers_for(record)
    assert (base / "bin" / "busybox").stat().st_size == Path("/bin/busybox").stat().st_size
    assert (top / "srv" / "app").read_bytes() == b"app\n"
    assert store.get(_ref(registry, ":1.0")) == record
    assert store.get(image.digest) is not None
    assert store.image_config(record)["entrypoint"] == ["/bin/sh", "-c"]
    assert [r.digest for r in store.list()] == [image.digest]
    assert no_tmp_layers(store.root)


def test_loopback_registry_defaults_to_plain_http(registry: Registry, store: ImageStore) -> None:
    image = _two_layer_image()
    Pusher(registry, REPO).image(image, "latest")
    assert store.pull(_ref(registry, "")).digest == image.digest
    assert default_registry_url("example.com:5000") == "https://example.com:5000"
    assert default_registry_url("localhost:5000") == "http://localhost:5000"


def test_pull_by_digest_and_docker_media_types(registry: Registry, store: ImageStore) -> None:
    image = _two_layer_image(docker_media=True)
    Pusher(registry, REPO).image(image, None)
    record = store.pull(_ref(registry, f"@{image.digest}"), registry_url=registry.url)
    assert record.digest == image.digest
    assert record.reference.endswith(f"@{image.digest}")
    assert store.get(_ref(registry, f"@{image.digest}")) is not None


def test_pull_by_digest_of_a_present_image_needs_no_registry(
    registry: Registry, store: ImageStore
) -> None:
    image = _two_layer_image()
    Pusher(registry, REPO).image(image, "1.0")
    index = build_index({"amd64": image})
    Pusher(registry, REPO).manifest("idx", index, OCI_INDEX)
    by_index = _ref(registry, f"@{sha(index)}")
    first = store.pull(by_index, registry_url=registry.url)
    assert first.digest == image.digest
    registry.proc.terminate()
    registry.proc.wait(10)
    again = store.pull(by_index, registry_url=registry.url)
    assert again.digest == image.digest and again.reference == by_index
    with pytest.raises(ImageError) as err:  # by tag it must ask the registry
        store.pull(_ref(registry, ":1.0"), registry_url=registry.url)
    assert err.value.code == "network_error"


def test_pull_through_index_picks_amd64_and_fetches_nothing_of_arm64(
    registry: Registry, store: ImageStore
) -> None:
    amd = _two_layer_image()
    arm = build_image([[Entry("arch", data=b"arm64\n")]], arch="arm64")
    pusher = Pusher(registry, REPO)
    pusher.image(amd, None)
    pusher.image(arm, None)
    pusher.manifest("multi", build_index({"arm64": arm, "amd64": amd}), OCI_INDEX)
    with Proxy(registry.url) as proxy:
        record = store.pull(_ref(registry, ":multi"), registry_url=proxy.url)
    assert record.digest == amd.digest and record.platform == "linux/amd64"
    fetched = "".join(proxy.blob_gets())
    assert all(d[7:] not in fetched for d in arm.blobs)
    assert f"/manifests/{amd.digest}" in "".join(p for _m, p in proxy.counts)


def test_unknown_tag_is_not_found(registry: Registry, store: ImageStore) -> None:
    with pytest.raises(ImageError) as err:
        store.pull(_ref(registry, ":nope"), registry_url=registry.url)
    assert err.value.code == "not_found"


def test_manifest_not_matching_the_pinned_digest_is_refused(
    registry: Registry, store: ImageStore
) -> None:
    image = _two_layer_image()
    Pusher(registry, REPO).image(image, "1.0")
    other = "sha256:" + "1" * 64
    with Proxy(registry.url) as proxy:
        # The proxy answers the digest request with the tag's (different) manifest.
        proxy.rewrite[f"/v2/{REPO}/manifests/{other}"] = f"/v2/{REPO}/manifests/1.0"
        with pytest.raises(ImageError) as err:
            store.pull(_ref(registry, f"@{other}"), registry_url=proxy.url)
    assert err.value.code == "digest_mismatch"
    assert other in err.value.detail and image.digest in err.value.detail
    assert store.list() == [] and proxy.blob_gets() == {}


def test_corrupted_blob_is_refused_and_not_kept(registry: Registry, store: ImageStore) -> None:
    image = _two_layer_image()
    Pusher(registry, REPO).image(image, "1.0")
    with Proxy(registry.url) as proxy:
        proxy.corrupt_blobs = True
        with pytest.raises(ImageError) as err:
            store.pull(_ref(registry, ":1.0"), registry_url=proxy.url)
    assert err.value.code == "digest_mismatch"
    assert store.list() == []
    assert not store.blobs.has(image.config_digest)
    assert list(store.blobs.tmp_dir.iterdir()) == []


def test_layer_over_the_size_limit_is_refused_before_download(
    registry: Registry, tmp_path: Path
) -> None:
    image = _two_layer_image()
    Pusher(registry, REPO).image(image, "1.0")
    small = ImageStore(tmp_path / "small", limits=UnpackLimits(max_bytes=100_000))
    with Proxy(registry.url) as proxy, pytest.raises(ImageError) as err:
        small.pull(_ref(registry, ":1.0"), registry_url=proxy.url)
    assert err.value.code == "too_large" and "manifest.layers[0].size" in err.value.detail
    assert proxy.blob_gets() == {}


def test_broken_transfer_resumes_with_range(registry: Registry, store: ImageStore) -> None:
    image = _two_layer_image(compression="none")  # the big busybox layer is ~2 MB
    Pusher(registry, REPO).image(image, "1.0")
    with Proxy(registry.url) as proxy:
        proxy.cut_blob_after = 4096
        record = store.pull(_ref(registry, ":1.0"), registry_url=proxy.url)
    assert record.digest == image.digest
    assert proxy.ranges == ["bytes=4096-"]


def test_blob_redirects_are_followed(registry: Registry, store: ImageStore) -> None:
    image = _two_layer_image()
    Pusher(registry, REPO).image(image, "1.0")
    with Proxy(registry.url) as proxy:
        proxy.redirect_blobs = True
        store.pull(_ref(registry, ":1.0"), registry_url=proxy.url)
    paths = [p for _m, p in proxy.counts]
    assert sum(p.startswith("/direct/") for p in paths) == len(image.blobs)


def test_two_processes_pulling_one_image_fetch_each_blob_once(
    registry: Registry, tmp_path: Path
) -> None:
    image = _two_layer_image()
    Pusher(registry, REPO).image(image, "1.0")
    with Proxy(registry.url) as proxy:
        script = textwrap.dedent(
            f"""
            from pathlib import Path
            from agent.images import ImageStore
            r = ImageStore(Path({str(tmp_path / "shared")!r})).pull(
                {_ref(registry, ":1.0")!r}, registry_url={proxy.url!r})
            print(r.digest)
            """
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script],
                env=env_for_subprocess(),
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            outs = [p.communicate(timeout=120)[0].strip() for p in procs]
        finally:
            for p in procs:  # never leave a pulling process behind, even on failure
                if p.poll() is None:
                    p.kill()
                    p.wait()
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [image.digest, image.digest]
    gets = proxy.blob_gets()
    assert len(gets) == len(image.blobs) and set(gets.values()) == {1}, gets


def test_basic_auth_with_htpasswd(tmp_path: Path, store: ImageStore) -> None:
    (tmp_path / "reg").mkdir()
    write_htpasswd(tmp_path / "htpasswd", "alice", "s3cret")
    with run_registry(tmp_path / "reg", htpasswd=tmp_path / "htpasswd") as reg:
        reg.basic = ("alice", "s3cret")
        image = _two_layer_image()
        Pusher(reg, REPO).image(image, "1.0")
        ref = _ref(reg, ":1.0")
        with pytest.raises(ImageError) as err:
            store.pull(ref, registry_url=reg.url)
        assert err.value.code == "unauthorized"
        with pytest.raises(ImageError) as err:
            store.pull(ref, registry_url=reg.url, auth=RegistryAuth("alice", "wrong"))
        assert err.value.code == "unauthorized"
        record = store.pull(ref, registry_url=reg.url, auth=RegistryAuth("alice", "s3cret"))
    assert record.digest == image.digest


def test_bearer_token_auth(tmp_path: Path, store: ImageStore) -> None:
    (tmp_path / "reg").mkdir()
    tokens = TokenServer(tmp_path, "bob", "hunter2")
    with tokens, run_registry(tmp_path / "reg", token_auth=tokens.registry_config()) as reg:
        reg.token = tokens.mint(REPO, ["pull", "push"])
        image = _two_layer_image()
        Pusher(reg, REPO).image(image, "1.0")
        ref = _ref(reg, ":1.0")
        with pytest.raises(ImageError) as err:
            store.pull(ref, registry_url=reg.url, auth=RegistryAuth("bob", "nope"))
        assert err.value.code == "unauthorized"
        record = store.pull(ref, registry_url=reg.url, auth=RegistryAuth("bob", "hunter2"))
    assert record.digest == image.digest
    assert (TokenServer.SERVICE, f"repository:{REPO}:pull") in tokens.requests


def test_tls_with_a_private_ca(tmp_path: Path, store: ImageStore) -> None:
    (tmp_path / "reg").mkdir()
    pki = make_pki(tmp_path)
    with run_registry(tmp_path / "reg", tls=(pki.cert_path, pki.key_path)) as reg:
        reg.ssl_context = ssl.create_default_context(cafile=str(pki.ca_path))
        image = _two_layer_image()
        Pusher(reg, REPO).image(image, "1.0")
        ref = _ref(reg, ":1.0")
        with pytest.raises(ImageError) as err:
            store.pull(ref, registry_url=reg.url)
        assert err.value.code == "tls_error"
        record = store.pull(ref, registry_url=reg.url, auth=RegistryAuth(ca_pem=pki.ca_pem))
    assert record.digest == image.digest


def test_images_sharing_a_base_share_its_layer_and_gc_frees_the_rest(
    registry: Registry, store: ImageStore
) -> None:
    a = build_image([busybox_entries(), [Entry("a", data=b"a" * 100_000)]])
    b = build_image([busybox_entries(), [Entry("b", data=b"b" * 100_000)]])
    pusher = Pusher(registry, REPO)
    pusher.image(a, "a")
    pusher.image(b, "b")
    ra = store.pull(_ref(registry, ":a"), registry_url=registry.url)
    rb = store.pull(_ref(registry, ":b"), registry_url=registry.url)
    assert store.layers_for(ra)[1] == store.layers_for(rb)[1]
    assert len(list((store.root / "layers").iterdir())) == 3
    result = store.gc({_ref(registry, ":a")})
    assert result.removed_images == (rb.digest,)
    assert result.removed_layers == (rb.layers[1],)
    assert result.freed_bytes >= 100_000
    assert store.get(_ref(registry, ":b")) is None
    assert [p.is_dir() for p in store.layers_for(ra)] == [True, True]
    assert not store.blobs.has(rb.digest) and store.blobs.has(ra.digest)
    usage = store.disk_usage()
    assert usage["images"] == 1 and usage["layers"] == 2
    everything = store.gc(set())
    assert everything.removed_images == (ra.digest,)
    assert list((store.root / "layers").iterdir()) == []
    assert store.blobs.digests() == []
    assert json.loads((store.root / "refs.json").read_text()) == {}


def test_second_pull_fetches_only_the_manifest(registry: Registry, store: ImageStore) -> None:
    image = _two_layer_image()
    Pusher(registry, REPO).image(image, "1.0")
    with Proxy(registry.url) as proxy:
        store.pull(_ref(registry, ":1.0"), registry_url=proxy.url)
        first = sum(proxy.blob_gets().values())
        again = store.pull(_ref(registry, ":1.0"), registry_url=proxy.url)
        assert sum(proxy.blob_gets().values()) == first == len(image.blobs)
    assert again.digest == image.digest
    assert proxy.counts[("GET", f"/v2/{REPO}/manifests/1.0")] == 2
