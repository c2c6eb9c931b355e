"""Kill ratios and commonality against planted answers; prints JSON.

    PYTHONPATH=src python benchmarks/analytics_impact.py [--lots 2] [--seeds 5] [--trials 100] [--null-trials 200]

Kill ratio: each seed generates ``--lots`` lots of 25 paired wafers (40×40 grid, 1,264 dies
each; 30 % of dies carry a defect event of one of four classes with planted kill
probabilities 0.9 / 0.5 / 0.2 / 0.05; 8 % baseline fails), written as real KLARF, STDF and
G85 files with fabsight's writers and read back. Reported per class: planted vs measured
kill ratio (fail rate with the defect − clean fail rate) and kill probability (normalised),
the largest error over classes and seeds, how often the planted kill ratio lies inside the
95 % Newcombe interval, and the read + compute time. The G85 copy is aligned by
``best_alignment`` alone and must give the same counts as the STDF copy.

Commonality: 4 lots × 25 wafers through 4 steps (2–4 tools each, 2 chambers, slot, time).
Planted: wafers through ETCH02 at ETCH are flagged with probability 0.6, others 0.1; the
hit rate is how often ETCH02 (or one of its chambers) ranks first with the tool's Fisher
p < 0.01, and how often the tool itself ranks first. Null: flags independent of
the history (25 % flagged); the false-positive rate is the share of tests with p < 0.05 and
the share of histories with any finding below 0.05 after Benjamini–Hochberg and Holm.
Speed: one run over 40 lots (1,000 wafers, 4,000 history rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.analytics.align import Alignment, best_alignment, pair_wafers
from fabsight.analytics.commonality import Flag, HistoryRow, WaferResult, commonality
from fabsight.analytics.killratio import kill_ratios
from fabsight.io import read_maps, write_g85, write_klarf, write_stdf
from fabsight.synth.impact import History, paired_lot, planted_history

KILL = {1: 0.9, 2: 0.5, 3: 0.2, 4: 0.05}
BASELINE = 0.08


def _kill_seed(seed: int, lots: int, folder: Path) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    made = [paired_lot(rng, n_wafers=25, kill=KILL, baseline_fail=BASELINE, lot_id=f"K{seed:02d}{i}")
            for i in range(lots)]
    insp, stdf, g85 = [], [], []
    for i, lot in enumerate(made):
        insp.append(write_klarf(lot.inspection, folder / f"{seed}_{i}.000"))
        stdf.append(write_stdf(lot.sort, folder / f"{seed}_{i}.stdf"))
        g85.append(write_g85(lot.sort, folder / f"{seed}_{i}.xml"))
    t0 = time.perf_counter()
    inspection = [m for p in insp for m in read_maps(p)]
    sort = [m for p in stdf for m in read_maps(p)]
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = kill_ratios(inspection, sort, Alignment(flip_y=True))
    t_kill = time.perf_counter() - t0
    g_maps = [m for p in g85 for m in read_maps(p)]
    found, _ = best_alignment(pair_wafers(inspection, g_maps).pairs[0])
    from_g85 = kill_ratios(inspection, g_maps, found)
    same = [(r.key, r.dies_with, r.failing_with) for r in from_g85.by_class] == \
        [(r.key, r.dies_with, r.failing_with) for r in report.by_class]
    rows = []
    for r in sorted(report.by_class, key=lambda r: int(r.key)):
        k = KILL[int(r.key)]
        planted = k * (1 - BASELINE)
        rows.append({"class": int(r.key), "dies_with": r.dies_with, "planted_kill_ratio": round(planted, 4),
                     "kill_ratio": round(r.kill_ratio, 4), "planted_kill_probability": k,
                     "kill_probability": round(r.kill_probability, 4),
                     "in_ci": r.kill_ratio_low <= planted <= r.kill_ratio_high})
    return {"seed": seed, "dies": report.dies, "clean_fail_rate": round(report.clean_fail_rate, 4),
            "read_s": round(t_read, 3), "kill_ratio_s": round(t_kill, 3), "g85_same_counts": same,
            "g85_alignment": found.options(), "classes": rows}


def kill_benchmark(seeds: int, lots: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        runs = [_kill_seed(s, lots, Path(tmp)) for s in range(seeds)]
    rows = [c for r in runs for c in r["classes"]]
    return {
        "seeds": seeds, "wafers_per_seed": 25 * lots, "dies_per_seed": runs[0]["dies"],
        "max_abs_error_kill_ratio": round(max(abs(c["kill_ratio"] - c["planted_kill_ratio"]) for c in rows), 4),
        "max_abs_error_kill_probability": round(
            max(abs(c["kill_probability"] - c["planted_kill_probability"]) for c in rows), 4),
        "ci95_coverage": round(float(np.mean([c["in_ci"] for c in rows])), 3),
        "g85_same_counts": all(r["g85_same_counts"] for r in runs),
        "read_s_median": float(np.median([r["read_s"] for r in runs])),
        "kill_ratio_s_median": float(np.median([r["kill_ratio_s"] for r in runs])),
        "runs": runs,
    }


def _records(h: History) -> tuple[list[WaferResult], list[HistoryRow]]:
    results = [WaferResult(lot, w, "Edge-Ring" if (lot, w) in h.flagged else "none") for lot, w in h.wafers]
    rows = [HistoryRow(r["lot"], r["wafer"], r["step"], {k: r[k] for k in ("tool", "chamber", "slot")},
                       datetime.fromisoformat(r["time"])) for r in h.rows]
    return results, rows


def commonality_benchmark(trials: int, null_trials: int) -> dict[str, Any]:
    flag = Flag(pattern="Edge-Ring")
    hits, first, top_p = 0, 0, []
    for s in range(trials):
        rep = commonality(*_records(planted_history(np.random.default_rng(s))), flag)
        tool = next(f for f in rep.findings if (f.step, f.factor, f.level) == ("ETCH", "tool", "ETCH02"))
        top = rep.findings[0]
        top_p.append(tool.p_value)
        first += top is tool
        # the tool, or one of its own chambers, ranks first and the tool's own test is below 0.01
        hits += top.step == "ETCH" and top.level.split("/")[0] == "ETCH02" and tool.p_value < 0.01
    raw, n_tests, any_bh, any_holm = 0, 0, 0, 0
    for s in range(null_trials):
        h = planted_history(np.random.default_rng(10_000 + s), effect=None, rate_without=0.25)
        results, rows = _records(h)
        rep = commonality(results, rows, flag)
        p = np.array([f.p_value for f in rep.findings])
        raw += int((p < 0.05).sum())
        n_tests += p.size
        any_bh += bool(rep.significant(0.05))
        any_holm += bool(commonality(results, rows, flag, correction="holm").significant(0.05))
    big = planted_history(np.random.default_rng(1), lots=[f"L{i:02d}" for i in range(40)])
    results, rows = _records(big)
    t0 = time.perf_counter()
    rep = commonality(results, rows, flag)
    t_big = time.perf_counter() - t0
    return {
        "planted": {"trials": trials, "found_at_p_below_0.01": round(hits / trials, 3),
                    "tool_ranked_first": round(first / trials, 3),
                    "median_tool_p": float(np.median(top_p)), "max_tool_p": float(np.max(top_p))},
        "null": {"trials": null_trials, "tests_per_history": n_tests // max(null_trials, 1),
                 "raw_p_below_0.05_rate": round(raw / max(n_tests, 1), 4),
                 "any_bh_q_below_0.05_rate": round(any_bh / max(null_trials, 1), 4),
                 "any_holm_p_below_0.05_rate": round(any_holm / max(null_trials, 1), 4)},
        "speed_1000_wafers": {"rows": len(rows), "tests": len(rep.findings), "seconds": round(t_big, 3),
                              "top": rep.findings[0].sentence()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lots", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--null-trials", type=int, default=200)
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
        "kill_ratio": kill_benchmark(args.seeds, args.lots),
        "commonality": commonality_benchmark(args.trials, args.null_trials),
    }
    out["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
