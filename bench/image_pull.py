"""Pull + unpack of a ~50 MB image from a loopback docker-registry: ImageStore against the
peer ``skopeo copy docker://... oci:DIR`` + ``umoci unpack`` (Debian packages), run
interleaved in one process, medians and the ratio printed.

    .venv/bin/python bench/image_pull.py [--runs 5] [--mb 50]

Needs root (layer ownership, whiteouts), docker-registry, skopeo and umoci.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "agent" / "images"))
helpers: Any = importlib.import_module("imgtest_helpers")
images: Any = importlib.import_module("agent.images")


def build_layers(total_mb: int) -> list[list[Any]]:
    """Busybox base, then a layer of incompressible and a layer of compressible files."""
    rng = random.Random(42)
    random_mb = total_mb * 2 // 5
    text_mb = total_mb - random_mb
    noise = [
        helpers.Entry(f"data/blob{i:02d}.bin", data=rng.randbytes(1 << 20))
        for i in range(random_mb)
    ]
    words = [b"container", b"layer", b"overlay", b"digest", b"registry", b"manifest", b"corral"]
    text = []
    for i in range(text_mb * 4):  # 256 KiB text files
        line = b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
        text.append(helpers.Entry(f"share/doc/file{i:03d}.txt", data=line * (262144 // len(line))))
    return [helpers.busybox_entries(), noise, text]


def run_ours(store_root: Path, ref: str, url: str) -> float:
    start = time.perf_counter()
    store = images.ImageStore(store_root)
    record = store.pull(ref, registry_url=url)
    store.layers_for(record)
    return time.perf_counter() - start


def run_peer(work: Path, ref: str) -> float:
    oci, bundle = work / "oci", work / "bundle"
    start = time.perf_counter()
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"oci:{oci}:bench",
        ],
        check=True,
    )
    subprocess.run(
        ["umoci", "unpack", "--image", f"{oci}:bench", str(bundle)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    with tempfile.TemporaryDirectory(prefix="image-bench-") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "registry").mkdir()
        image = helpers.build_image(build_layers(args.mb), compression="gzip")
        blob_mb = sum(len(b) for b in image.layers) / 1e6
        with helpers.run_registry(tmp / "registry") as reg:
            helpers.Pusher(reg, "bench/image").image(image, "1")
            ref = f"127.0.0.1:{reg.port}/bench/image:1"
            print(f"image: {len(image.layers)} layers, {blob_mb:.1f} MB gzip, ~{args.mb} MB files")
            ours, peer = [], []
            for i in range(args.runs):
                for name in ("ours", "peer") if i % 2 == 0 else ("peer", "ours"):
                    work = tmp / f"run-{i}-{name}"
                    work.mkdir()
                    if name == "ours":
                        ours.append(run_ours(work / "store", ref, reg.url))
                    else:
                        peer.append(run_peer(work, ref))
                    shutil.rmtree(work)
        m_ours, m_peer = statistics.median(ours), statistics.median(peer)
        for label, times in (("ImageStore pull+unpack", ours), ("skopeo copy + umoci", peer)):
            runs = [round(t * 1000) for t in times]
            print(f"{label:24s} median {statistics.median(times) * 1000:8.1f} ms  runs {runs}")
        print(f"ratio ImageStore / (skopeo+umoci): {m_ours / m_peer:.2f}  (<1: ImageStore faster)")


if __name__ == "__main__":
    main()
