"""Yield analytics: Pareto speed, stacked maps, repeater recall/precision; prints JSON.

    PYTHONPATH=src python benchmarks/analytics.py [--section all|pareto|stack|repeaters]
        [--shared ../shared] [--rounds 3] [--seeds 5]

* ``pareto``: every ``--by`` on the real fixtures (LAA_FAA_LAA-01.000, LARGE_KLARF.000,
  QUU_NUU.000, lot2.stdf, the G85 maps) and on a generated lot of 1,000,000 defects
  (25 wafers × 40,000), median wall / CPU seconds over ``--rounds``; the chart as well, and
  that lot written as one KLARF file read and ranked (what ``fabsight pareto`` does).
* ``stack``: stacking 25 generated wafers (fail stack) and the real STDF per bin.
* ``repeaters``: generated lots (10 wafers, ~400 dies of 5 × 6 mm, 3 wafer-repeater sites
  per wafer on 3–8 dies, 2 lot-repeater sites on 5 wafers, 1 µm jitter) at 300, 1,000 and
  3,000 random defects per wafer, ``--seeds`` seeds each: recall and precision of the
  planted defects at the default settings, the dies / wafers the density made necessary,
  and time; the real KLARFs: flags, dies needed, expected by chance, time.

Each section is one function in :data:`SECTIONS`; a section of its own (kill ratio,
commonality) is added there and chosen with ``--section``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.analytics.pareto import INSPECTION_BY, SORT_BY, pareto, pareto_png
from fabsight.analytics.repeaters import DEFAULT_TOLERANCE_UM, find_repeaters
from fabsight.analytics.stack import stack_by_bin, stack_maps
from fabsight.io import read_maps, write_klarf
from fabsight.synth.defects import generate_defect_lot
from fabsight.utils.timing import median_times

KLARFS = ("klarf/LAA_FAA_LAA-01.000", "klarf/LARGE_KLARF.000", "klarf/QUU_NUU.000")
SORT = ("stdf/lot2.stdf", "g85/SEMI_G85_1101_ALL.xml", "g85/SEMI_G85_1101_MIN.xml")
DENSITIES = (300, 1000, 3000)  # random defects per wafer


def _timed(fn: Callable[[], object], rounds: int) -> dict[str, float]:
    wall, cpu = median_times(fn, rounds)
    return {"wall_s": round(wall, 4), "cpu_s": round(cpu, 4)}


def _pareto_run(maps: list, by: str, rounds: int) -> dict[str, Any]:
    result = pareto(maps, by)
    return {"total": result.total, "rows": len(result.rows), **_timed(lambda: pareto(maps, by), rounds)}


def pareto_section(args: argparse.Namespace) -> dict[str, Any]:
    """Every ``--by`` on the real files, then on a generated 1 M-defect lot, with the chart."""
    real: dict[str, Any] = {}
    for rel in KLARFS + SORT:
        maps = read_maps(args.shared / "fixtures" / rel)
        options = INSPECTION_BY if maps[0].defects is not None else SORT_BY
        if maps[0].defects is not None and not all("ROUGHBINNUMBER" in m.defects.extra for m in maps):
            options = tuple(b for b in options if b != "bin")
        if maps[0].bins is None or "soft_bins" not in maps[0].extras:
            options = tuple(b for b in options if b != "softbin")
        real[rel] = {by: _pareto_run(maps, by, args.rounds) for by in options}
    lot = generate_defect_lot(25, random_defects=40_000, wafer_repeaters=0, lot_repeaters=0, seed=0)
    n = sum(len(m.defects) for m in lot.maps)
    big = {by: _pareto_run(lot.maps, by, args.rounds) for by in ("class", "size", "wafer", "lot", "step")}
    with tempfile.TemporaryDirectory() as tmp:
        chart = _timed(lambda: pareto_png(pareto(lot.maps, "class"), Path(tmp) / "p.png"), 1)
        path = write_klarf(lot.maps, Path(tmp) / "lot.000")
        size_mb = round(path.stat().st_size / 1e6, 1)
        from_file = _timed(lambda: pareto(read_maps(path), "class"), 1)
    return {
        "real": real,
        "generated": {"defects": n, "wafers": len(lot.maps), "by": big, "class_chart": chart},
        "klarf_file_read_and_rank": {"megabytes": size_mb, **from_file},
    }


def stack_section(args: argparse.Namespace) -> dict[str, Any]:
    """A 25-wafer fail stack and the real STDF stacked per bin."""
    lot = generate_defect_lot(25, random_defects=2_000, seed=1)
    (stdf,) = read_maps(args.shared / "fixtures/stdf/lot2.stdf")
    return {
        "generated_25_wafers": {"grid": list(lot.maps[0].shape), **_timed(lambda: stack_maps(lot.maps), args.rounds)},
        "stdf_per_bin": {"panels": len(stack_by_bin([stdf])), **_timed(lambda: stack_by_bin([stdf]), args.rounds)},
    }


def _recall_precision(density: int, seed: int) -> dict[str, Any]:
    lot = generate_defect_lot(10, random_defects=density, wafer_repeaters=3, lot_repeaters=2, lot_wafers=5, seed=seed)
    result = find_repeaters(lot.maps)
    wall, cpu = median_times(lambda: find_repeaters(lot.maps), 1)
    flags = np.concatenate([w.flags for w in result.wafers])
    truth = np.concatenate(lot.planted)
    hit = int((flags & truth).sum())
    return {
        "defects": int(flags.size),
        "planted": int(truth.sum()),
        "flagged": int(flags.sum()),
        "recall": hit / int(truth.sum()),
        "precision": hit / max(int(flags.sum()), 1),
        "expected_by_chance": sum(w.expected_by_chance for w in result.wafers),
        "dies_needed": max(w.dies_needed for w in result.wafers),
        "wafers_needed": result.wafers[0].wafers_needed,
        "wall_s": wall,
        "cpu_s": cpu,
    }


def repeaters_section(args: argparse.Namespace) -> dict[str, Any]:
    """Planted repeaters at two densities over ``--seeds`` seeds, and the real KLARFs."""
    generated: dict[str, Any] = {}
    for density in DENSITIES:
        runs = [_recall_precision(density, seed) for seed in range(args.seeds)]
        generated[f"{density}_random_per_wafer"] = {
            "seeds": args.seeds,
            "defects_per_lot": int(np.mean([r["defects"] for r in runs])),
            "planted_per_lot": int(np.mean([r["planted"] for r in runs])),
            "recall_mean": round(float(np.mean([r["recall"] for r in runs])), 4),
            "recall_min": round(float(np.min([r["recall"] for r in runs])), 4),
            "precision_mean": round(float(np.mean([r["precision"] for r in runs])), 4),
            "precision_min": round(float(np.min([r["precision"] for r in runs])), 4),
            "expected_by_chance_in_wafer": round(float(np.mean([r["expected_by_chance"] for r in runs])), 3),
            "dies_needed_max": max(r["dies_needed"] for r in runs),
            "wafers_needed_max": max(r["wafers_needed"] for r in runs),
            "wall_s_median": round(float(np.median([r["wall_s"] for r in runs])), 4),
        }
    real = {}
    for rel in KLARFS:
        maps = read_maps(args.shared / "fixtures" / rel)
        result = find_repeaters(maps)
        real[rel] = {
            "defects": sum(len(m.defects) for m in maps),
            "flagged": result.total,
            "dies_needed": [w.dies_needed for w in result.wafers],
            "expected_by_chance": round(sum(w.expected_by_chance for w in result.wafers), 2),
            **_timed(lambda maps=maps: find_repeaters(maps), args.rounds),
        }
    return {"tolerance_um": DEFAULT_TOLERANCE_UM, "generated": generated, "real": real}


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "pareto": pareto_section,
    "stack": stack_section,
    "repeaters": repeaters_section,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=["all", *SECTIONS], default="all")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    chosen = list(SECTIONS) if args.section == "all" else [args.section]
    report: dict[str, Any] = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
    }
    for name in chosen:
        report[name] = SECTIONS[name](args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
