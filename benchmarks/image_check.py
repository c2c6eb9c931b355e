"""What checking each image when an image folder is listed costs. Prints JSON.

    PYTHONPATH=src python benchmarks/image_check.py --data ../shared/data --n 300

Die-image and anomaly commands list a folder, then read its images lazily in batches; so
listing checks each image once (:func:`fabsight.die.data.check_image`) and leaves the
unreadable ones out. For ``--n`` real images of each set (DeepPCB 640×640 JPEGs, magnetic-tile
JPEGs and PNG masks) this times, per image: the check, a full decode (:func:`read_image`)
(both with the files in the page cache) and, for scale, embedding with ``efficientnet_lite0``
on the CPU (one thread, batches of 32); then it cuts a copy of each image in half and counts
how many of the cut copies the check refuses (a half JPEG or PNG must never pass).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _ms_per_image(fn: object, paths: list[Path]) -> float:
    for p in paths[:5]:  # warm up the decoders
        fn(p)  # type: ignore[operator]
    t0 = time.perf_counter()
    for p in paths:
        fn(p)  # type: ignore[operator]
    return round(1000 * (time.perf_counter() - t0) / len(paths), 3)


def _embed_ms(paths: list[Path]) -> float:
    import torch

    from fabsight.backbones import create_backbone
    from fabsight.die.embeddings import extract

    torch.set_num_threads(1)
    bb = create_backbone("efficientnet_lite0", device="cpu")
    sample = paths[:64]
    t0 = time.perf_counter()
    extract(bb, sample, 32, None)
    return round(1000 * (time.perf_counter() - t0) / len(sample), 1)


def _cut_refused(paths: list[Path], tmp: Path) -> dict[str, int]:
    from fabsight.die.data import check_image
    from fabsight.errors import FabsightError

    refused = 0
    for i, p in enumerate(paths):
        cut = tmp / f"{i}{p.suffix}"
        cut.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        try:
            check_image(cut)
        except FabsightError:
            refused += 1
    return {"cut_copies": len(paths), "refused": refused}


def main() -> None:
    from fabsight.die.data import check_image, read_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    sets = {
        "deeppcb_jpg_640": sorted(args.data.glob("deeppcb/group*/*/*_test.jpg")),
        "magnetic_tile_jpg": sorted(args.data.glob("magnetic_tile/MT_*/Imgs/*.jpg")),
        "magnetic_tile_png": sorted(args.data.glob("magnetic_tile/MT_*/Imgs/*.png")),
    }
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, found in sets.items():
            paths = found[:: max(1, len(found) // args.n)][: args.n]
            for p in paths:  # both timings from the page cache: the first reader would pay the disk alone
                p.read_bytes()
            report[name] = {"images": len(paths), "check_ms": _ms_per_image(check_image, paths),
                            "decode_ms": _ms_per_image(read_image, paths),
                            **_cut_refused(paths, Path(tmp))}
    report["embed_ms_efficientnet_lite0_cpu"] = _embed_ms(sets["magnetic_tile_jpg"][: args.n])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
