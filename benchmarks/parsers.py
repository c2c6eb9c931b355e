"""Parse + grid time and peak memory of every wafer-data reader; prints JSON.

    PYTHONPATH=src python benchmarks/parsers.py [--shared ../shared] [--runs 5] [--lswmd-maps 20000]

Times are the median of ``--runs`` full reads (file → list of WaferMap, grids built);
peak memory is measured by tracemalloc in one extra read (Python + numpy allocations).
The LSWMD pickle is generated in the public layout into a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.io import iter_maps, read_maps, write_lswmd
from fabsight.types import WaferMap

FIXTURES = (
    "klarf/LARGE_KLARF.000",
    "klarf/LAA_FAA_LAA-01.000",
    "klarf/QUU_NUU.000",
    "stdf/lot2.stdf",
    "g85/SEMI_G85_1101_ALL.xml",
)


def _measure(read: Callable[[], list[WaferMap]], runs: int) -> dict[str, Any]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        maps = read()
        times.append((time.perf_counter() - t0) * 1000)
    tracemalloc.start()
    read()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "wafers": len(maps),
        "dies": sum(m.n_dies for m in maps),
        "defects": sum(len(m.defects) for m in maps if m.defects is not None),
        "median_ms": round(statistics.median(times), 2),
        "min_ms": round(min(times), 2),
        "peak_mib": round(peak / 2**20, 2),
    }


def _synthetic_lswmd(path: Path, n: int, seed: int = 0) -> None:
    """``n`` round wafers of WM-811K-like sizes (25–60 dies across), ~30 % labelled."""
    rng = np.random.default_rng(seed)
    maps = []
    for i in range(n):
        rows, cols = rng.integers(25, 61, 2)
        yy, xx = np.mgrid[:rows, :cols]
        inside = ((yy - (rows - 1) / 2) / (rows / 2)) ** 2 + ((xx - (cols - 1) / 2) / (cols / 2)) ** 2 <= 1
        grid = np.where(inside, np.where(rng.random((rows, cols)) < 0.1, 2, 1), 0)
        label = ("Center",) if rng.random() < 0.3 else ()
        maps.append(WaferMap(grid, lot_id=f"lot{i // 25 + 1}", wafer_id=str(i % 25 + 1), labels=label))
    write_lswmd(maps, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--lswmd-maps", type=int, default=20000)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for rel in FIXTURES:
        path = args.shared / "fixtures" / rel
        if path.exists():
            results[rel] = {"bytes": path.stat().st_size, **_measure(lambda p=path: read_maps(p), args.runs)}
    with tempfile.TemporaryDirectory() as tmp:
        pkl = Path(tmp) / "LSWMD.pkl"
        t0 = time.perf_counter()
        _synthetic_lswmd(pkl, args.lswmd_maps)
        write_s = time.perf_counter() - t0
        stats = _measure(lambda: list(iter_maps([pkl])), max(1, args.runs // 2))
        stats["maps_per_s"] = round(stats["wafers"] / (stats["median_ms"] / 1000))
        results[f"generated LSWMD.pkl ({args.lswmd_maps} maps)"] = {
            "bytes": pkl.stat().st_size,
            "generate_and_write_s": round(write_s, 2),
            **stats,
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
