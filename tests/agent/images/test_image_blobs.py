"""The content-addressed blob store: verification, resume, one fetch under concurrency."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest
from imgtest_helpers import env_for_subprocess, sha

from agent.images.blobs import BlobStore
from agent.images.errors import ImageError

DATA = bytes(range(256)) * 4096  # 1 MiB


def _fetcher(data: bytes, calls: list[int]):  # type: ignore[no-untyped-def]
    def fetch(offset: int) -> tuple[int, Iterable[bytes]]:
        calls.append(offset)
        return offset, [data[offset : offset + 65536 * 3], data[offset + 65536 * 3 :]]

    return fetch


def test_blob_is_stored_under_its_digest_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    calls: list[int] = []
    digest = sha(DATA)
    store.ingest(digest, len(DATA), _fetcher(DATA, calls))
    store.ingest(digest, len(DATA), _fetcher(DATA, calls))
    assert calls == [0]
    path = tmp_path / "blobs" / "sha256" / digest[7:]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest[7:]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_digest_mismatch_names_expected_and_got_and_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ImageError) as err:
        store.ingest(wrong, len(DATA), _fetcher(DATA, []))
    assert err.value.code == "digest_mismatch"
    assert wrong in err.value.detail and sha(DATA) in err.value.detail
    assert not store.has(wrong)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_size_overflow_stops_the_transfer(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(ImageError) as err:
        store.ingest(sha(DATA), 1000, _fetcher(DATA, []))
    assert err.value.code == "size_mismatch"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_interrupted_download_resumes_from_the_partial_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = sha(DATA)
    offsets: list[int] = []

    def broken(offset: int) -> tuple[int, Iterable[bytes]]:
        offsets.append(offset)

        def gen() -> Iterable[bytes]:
            yield DATA[:300_000]
            raise ImageError("network_error", "transfer broke")

        return offset, gen()

    with pytest.raises(ImageError):
        store.ingest(digest, len(DATA), broken)
    assert (tmp_path / "tmp" / f"{digest[7:]}.partial").stat().st_size == 300_000
    calls: list[int] = []
    store.ingest(digest, len(DATA), _fetcher(DATA, calls))
    assert offsets == [0] and calls == [300_000]
    assert store.read(digest) == DATA


def test_source_that_ignores_range_restarts_cleanly(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = sha(DATA)
    (tmp_path / "tmp" / f"{digest[7:]}.partial").write_bytes(b"garbage!" * 100)
    store.ingest(digest, len(DATA), lambda _offset: (0, [DATA]))
    assert store.read(digest) == DATA


def test_non_sha256_digest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as err:
        BlobStore(tmp_path).ingest("sha512:" + "a" * 128, 1, lambda _o: (0, [b"x"]))
    assert err.value.code == "digest_mismatch"


def test_two_processes_ingesting_one_blob_fetch_it_once(tmp_path: Path) -> None:
    """Each process records in a shared log when its fetcher runs; the lock must let only
    one of them fetch, the other finds the blob present."""
    log = tmp_path / "fetch.log"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from agent.images.blobs import BlobStore
        data = bytes(range(256)) * 4096
        def fetch(offset):
            with open({str(log)!r}, "a") as f:
                f.write("fetch\\n")
            def gen():
                for i in range(0, len(data), 65536):
                    time.sleep(0.01)
                    yield data[i:i + 65536]
            return offset, gen()
        BlobStore(Path({str(tmp_path / "store")!r})).ingest({sha(DATA)!r}, {len(DATA)}, fetch)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env_for_subprocess()) for _ in range(2)
    ]
    try:
        codes = [p.wait(60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0, 0]
    assert log.read_text().count("fetch") == 1
    assert BlobStore(tmp_path / "store").read(sha(DATA)) == DATA
