"""Throughput of the synthetic wafer-map generator and the renderer; prints JSON.

    PYTHONPATH=src python benchmarks/synth.py [--per-class N] [--repeats R]

Maps/s counts whole WaferMaps (grid + truth) from ``generate_dataset`` over the nine
WM-811K classes (and the 38 MixedWM38 classes at 52×52), best of ``--repeats`` runs.
The generator holds BLAS to one thread, so it uses one core: ``maps_per_cpu_s`` (maps
per second of this process's CPU time) is the one-core rate even on a busy shared
machine, ``maps_per_s`` the wall-clock rate actually seen.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from fabsight.report.render import map_to_rgb, render_png
from fabsight.synth import generate_dataset


def _best(fn, repeats: int) -> tuple[float, float]:
    """Fastest (wall seconds, CPU seconds) of ``repeats`` runs."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(r[0] for r in runs), min(r[1] for r in runs)


def _rate(maps: int, seconds: tuple[float, float]) -> dict[str, int]:
    return {"maps": maps, "maps_per_s": round(maps / seconds[0]), "maps_per_cpu_s": round(maps / seconds[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=1000, help="maps per class at 52×52 (fewer for larger grids)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    generate_dataset(2)  # warm caches (geometry, imports)

    sizes = {}
    for side in (26, 52, 100, 200, 300):
        per_class = max(10, args.per_class * 52 * 52 // (side * side))
        seconds = _best(lambda s=side, n=per_class: generate_dataset(n, shapes=[(s, s)]), args.repeats)
        sizes[f"{side}x{side}"] = _rate(9 * per_class, seconds)
    mixed_n = max(10, args.per_class // 4)
    seconds = _best(lambda: generate_dataset(mixed_n, mixed=True), args.repeats)
    mixed = _rate(38 * mixed_n, seconds)

    maps = generate_dataset(4, seed=1)  # 36 maps
    thumbs = _best(lambda: [map_to_rgb(m.grid, 64) for m in maps * 10], args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        sheet, _ = _best(lambda: render_png(maps, Path(tmp) / "sheet.png"), 1)
        single, _ = _best(lambda: render_png(maps[0], Path(tmp) / "one.png"), args.repeats)
    print(
        json.dumps(
            {
                "generator_maps_per_s": sizes,
                "generator_mixed_52x52": mixed,
                "thumbnails_64px": _rate(360, thumbs),
                "render_png_single_s": round(single, 3),
                "render_png_sheet_36_s": round(sheet, 3),
                "machine": {
                    "cpus": os.cpu_count(),
                    "load_avg_1min": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
