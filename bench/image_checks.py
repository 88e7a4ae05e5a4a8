"""Image certification after a pull: the agent's mount-free merged view (hard links of the
unpacked layers in a scratch dir) against the named peer, a read-only overlayfs mount of the
same layers (mount, checks, umount), in this process, as root.

Prints the median time of each (checks included, since both must run them) and the ratio
merged/overlay; also the cost of building the view alone. Usage:

    python bench/image_checks.py [--files 3000] [--layers 3] [--rounds 15]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.certification import run_image_checks
from agent.certification.image_rootfs import merged_rootfs
from agent.images import ImageStore
from tests.agent.images.imgtest_helpers import (
    Entry,
    build_image,
    busybox_entries,
    tar_directory,
    write_oci_layout,
)

libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY = 1
MNT_DETACH = 2


def make_layers(files: int, layers: int) -> list[list[Entry]]:
    per = files // layers
    out = [busybox_entries()]
    for n in range(layers - 1):
        entries = [Entry(f"data{n}", "dir")]
        entries += [Entry(f"data{n}/f{i}", data=b"x" * 64) for i in range(per)]
        out.append(entries)
    return out


def overlay_checks(layers: list[Path], target: Path, config: dict, ids: list[str]) -> None:
    opts = f"lowerdir={':'.join(str(p) for p in layers)}".encode()
    if libc.mount(b"overlay", str(target).encode(), b"overlay", MS_RDONLY, opts) != 0:
        raise OSError(ctypes.get_errno(), "mount overlay")
    try:
        run_image_checks(target, config, ids, ["1.0"])
    finally:
        libc.umount2(str(target).encode(), MNT_DETACH)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (unpacking layers with whiteouts, overlay mounts)")
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-image-checks-") as tmp_s:
        tmp = Path(tmp_s)
        image = build_image(make_layers(args.files, args.layers))
        store = ImageStore(tmp / "store")
        write_oci_layout(tmp / "layout", [(image.manifest, "1.0")], image.blobs)
        tar_directory(tmp / "layout", tmp / "layout.tar")
        (record,) = store.import_archive(tmp / "layout.tar")
        layers = store.layers_for(record)
        ids = list(record.layers)
        target = tmp / "mnt"
        target.mkdir()
        times: dict[str, list[float]] = {"sparse": [], "full": [], "overlay": []}
        for _ in range(args.rounds):
            for kind in ("sparse", "full"):
                t0 = time.perf_counter()
                with merged_rootfs(layers, tmp / "scratch", full=kind == "full") as rootfs:
                    run_image_checks(rootfs, dict(record.config), ids, ["1.0"])
                times[kind].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            overlay_checks(layers, target, dict(record.config), ids)
            times["overlay"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"image: {args.files} files in {args.layers} layers, {args.rounds} rounds (medians)")
    print(f"sparse merged view + checks (used)  {med['sparse']:8.1f} ms")
    print(f"full merged view + checks           {med['full']:8.1f} ms")
    print(f"overlayfs mount + checks (peer)     {med['overlay']:8.1f} ms")
    print(
        f"ratio sparse/overlay {med['sparse'] / med['overlay']:.2f}x, "
        f"full/overlay {med['full'] / med['overlay']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
