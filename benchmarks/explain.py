"""Benchmark of grounded explanations and offline Q&A (prints JSON).

Explanations: generated maps whose truth is known (fabsight.synth). The same seed drawn with
``noise=0`` gives exactly the pattern's own failing dies (the generator draws the same random
numbers; only the background is off), so the benchmark scores

* **location**: the zone the explanation names vs the zone of the generator's mean pattern
  radius (``whole wafer`` for Near-full, ``spread`` for Random and none);
* **sector**: for directional patterns (Edge-Loc, Loc, Scratch), the named sector vs the
  generator's pattern angle (exact, and within one neighbouring sector);
* **extent**: clustered dies vs the pattern's true failing dies (relative error ≤ 25 %), and
  die-level precision / recall of the pattern-vs-background attribution;
* **pattern** (with ``--model``): a named pattern is right / wrong, or the explanation
  abstained ("no dominant pattern").

Q&A: the held-out phrasings of ``benchmarks/data/qa_phrasings.yaml`` asked about a generated
lot: understood (intent and slots right) and refusal rates, plus latency, separately for the
phrasings used while tuning, the first fresh set and the set written in session 2 before the
out-of-scope rule changed.

    python benchmarks/explain.py [--per-class 30] [--model DIR] [--qa-only]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from fabsight.assist.clustering import cluster_grid
from fabsight.assist.facts import SECTORS, sector_of, wafer_facts, zone_of
from fabsight.assist.knowledge import load_kb
from fabsight.assist.qa import Lot, ask
from fabsight.synth import generate_dataset
from fabsight.types import WM811K_CLASSES, DieState

DIRECTIONAL = {"Edge-Loc", "Loc", "Scratch"}
SHAPES = ((52, 52), (40, 40))


def truth_location(label: str, truth: dict) -> str:
    if label == "Near-full":
        return "whole wafer"
    if label in ("Random", "none"):
        return "spread"
    return zone_of(truth["patterns"][label]["radius"])


def truth_sector(label: str, truth: dict) -> str:
    # generator: degrees counter-clockwise from 3 o'clock as drawn; facts: clockwise from north, notch down
    return sector_of((90.0 - truth["patterns"][label]["angle"]) % 360)


def near(a: str, b: str) -> bool:
    d = abs(SECTORS.index(a) - SECTORS.index(b)) % len(SECTORS)
    return min(d, len(SECTORS) - d) <= 1


def bench_explain(per_class: int, model: str | None, seed: int) -> dict:
    maps = generate_dataset(per_class, shapes=SHAPES, seed=seed)
    pattern_only = generate_dataset(per_class, shapes=SHAPES, seed=seed, noise=0.0)
    preds = None
    if model is not None:
        from fabsight.wafer import load_model

        preds = load_model(model).predict_details(maps)
    per = defaultdict(lambda: defaultdict(list))
    tp = fp = fn = 0
    t0 = time.perf_counter()
    for i, (m, clean) in enumerate(zip(maps, pattern_only, strict=True)):
        label = m.labels[0]
        f = wafer_facts(m, None if preds is None else preds[i])
        r = per[label]
        r["location"].append(f.location.location == truth_location(label, m.extras))
        if label in DIRECTIONAL:
            want = truth_sector(label, m.extras)
            r["sector"].append(f.location.sector == want)
            r["sector_near"].append(f.location.sector is not None and near(f.location.sector, want))
        truth_dies = (clean.grid == DieState.FAIL) & (m.grid == DieState.FAIL)
        if label not in ("none", "Random"):
            n_true = int(truth_dies.sum())
            r["extent"].append(abs(f.extent.pattern_dies - n_true) <= 0.25 * n_true)
            r["extent_rel_error"].append(abs(f.extent.pattern_dies - n_true) / max(n_true, 1))
            found = cluster_grid(m, f.clustering) >= 0
            tp += int((found & truth_dies).sum())
            fp += int((found & ~truth_dies).sum())
            fn += int((~found & truth_dies).sum())
        if preds is not None:
            p = f.pattern
            r["pattern_abstained"].append(p.status == "uncertain")
            if p.status in ("pattern", "none"):
                named = p.labels[0] if p.status == "pattern" else "none"
                r["pattern_named_right"].append(named == label)
    seconds = time.perf_counter() - t0
    per_class_out = {
        label: {k: round(float(np.mean(v)), 4) for k, v in r.items() if v} for label, r in per.items()
    }

    def overall(key: str) -> float | None:
        vals = [x for r in per.values() for x in r.get(key, [])]
        return round(float(np.mean(vals)), 4) if vals else None

    result = {
        "maps": len(maps),
        "per_class": per_class,
        "grid_shapes": [list(s) for s in SHAPES],
        "location_match": overall("location"),
        "sector_match": overall("sector"),
        "sector_within_one": overall("sector_near"),
        "extent_within_25pct": overall("extent"),
        "extent_median_rel_error": round(float(np.median([x for r in per.values()
                                                          for x in r.get("extent_rel_error", [])])), 4),
        "attribution_precision": round(tp / max(tp + fp, 1), 4),
        "attribution_recall": round(tp / max(tp + fn, 1), 4),
        "facts_ms_per_map": round(1000 * seconds / len(maps), 2),
        "by_class": per_class_out,
    }
    if preds is not None:
        result["pattern_named_accuracy"] = overall("pattern_named_right")
        result["pattern_abstain_rate"] = overall("pattern_abstained")
    return result


def bench_qa(phrasings: Path) -> dict:
    data = yaml.safe_load(phrasings.read_text())
    lot_maps = generate_dataset(1, classes=("Edge-Ring", "Center", "Donut", "Scratch", "Edge-Loc", "Random"),
                                shapes=((52, 52),), seed=5)
    facts = []
    for i, m in enumerate(lot_maps):
        m.wafer_id = str(i + 1)
        facts.append(wafer_facts(m, {"label": m.labels[0], "probability": 0.95}))
    lot = Lot(facts, load_kb())
    ask("warm-up: load the embedding model", lot)

    def score(answerable: list[dict], unanswerable: list[str]) -> dict:
        wrong, times = [], []
        for item in answerable:
            t0 = time.perf_counter()
            a = ask(item["q"], lot)
            times.append(time.perf_counter() - t0)
            expected = {k: str(v) for k, v in (item.get("slots") or {}).items()}
            if not a.answered or a.intent != item["intent"] or {k: a.slots.get(k) for k in expected} != expected:
                wrong.append({"q": item["q"], "expected": item["intent"], "got": a.intent if a.answered else None})
        kept = [q for q in unanswerable if ask(q, lot).answered]
        return {
            "answerable": len(answerable),
            "understood": round(1 - len(wrong) / len(answerable), 4),
            "unanswerable": len(unanswerable),
            "refused": round(1 - len(kept) / len(unanswerable), 4),
            "misunderstood": wrong,
            "answered_but_should_refuse": kept,
            "ms_per_question": round(1000 * float(np.mean(times)), 1),
        }

    return {
        "used_while_tuning": score(data["answerable"], data["unanswerable"]),
        "fresh": score(data["fresh_answerable"], data["fresh_unanswerable"]),
        "session2_fresh": score(data["session2_answerable"], data["session2_unanswerable"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--model", default=None, help="wafer classifier directory (adds pattern accuracy)")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--qa-only", action="store_true", help="skip the explanation part (Q&A only)")
    args = ap.parse_args()
    out = {
        "benchmark": "explain",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "classes": list(WM811K_CLASSES),
    }
    if not args.qa_only:
        out["explanations"] = bench_explain(args.per_class, args.model, args.seed)
    out["qa"] = bench_qa(Path(__file__).parent / "data" / "qa_phrasings.yaml")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
