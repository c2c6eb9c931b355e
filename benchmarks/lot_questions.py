"""What a lot page and a yield question cost: :class:`fabsight.analytics.lot.LotAnalytics` on real
files (the Paretos, the stacked map, repeaters, kill ratios of the demo lot A103) and ``ask``
answering the analytics questions once the encoder is loaded; prints JSON.

    PYTHONPATH=src python benchmarks/lot_questions.py [--shared ../shared] [--rounds 3]

Inputs: LAA_FAA_LAA-01.000 (12,264 defects) and LARGE_KLARF.000 from ``--shared``/fixtures/klarf,
and the packaged demo lot A103 (KLARF + STDF + G85 of the same wafers). Times are medians over
``--rounds`` of a fresh ``LotAnalytics`` each (nothing cached between rounds).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fabsight.analytics.lot import LotAnalytics
from fabsight.assist.facts import wafer_facts
from fabsight.assist.knowledge import load_kb
from fabsight.assist.qa import Lot, ask
from fabsight.demo import example_files
from fabsight.io import read_maps

QUESTIONS = ("Which defect class dominates?", "Are there repeaters?", "Which defect class kills the most dies?",
             "Which tool do the edge-ring wafers share?")


def _median_s(fn: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 3)


def page(maps: list, rounds: int) -> dict[str, Any]:
    """Everything the lot page computes, on a fresh LotAnalytics per round."""
    def run() -> LotAnalytics:
        an = LotAnalytics(list(maps))
        if an.inspection:
            an.defect_pareto("class")
            an.defect_pareto("size")
        if an.sort:
            an.sort_pareto("bin")
        an.stacks()
        _ = an.repeaters, an.kill_ratio
        return an

    an = run()
    kill = an.kill_ratio
    return {
        "results": len(an.maps),
        "defects": sum(len(m.defects) for m in an.inspection),
        "repeaters": None if an.repeaters is None else an.repeaters.total,
        "kill_ratio": None if kill is None else [(r.name, round(r.kill_ratio, 3)) for r in kill.by_class],
        "kill_missing": an.kill_missing(),
        "seconds": _median_s(run, rounds),
    }


def questions(maps: list, rounds: int) -> dict[str, Any]:
    kb = load_kb()
    lot = Lot([wafer_facts(m) for m in maps], kb, LotAnalytics(list(maps)))
    ask("warm-up: load the encoder", lot)
    out = {}
    for q in QUESTIONS:
        a = ask(q, lot)
        out[q] = {"answered": a.answered, "intent": a.intent, "answer": a.text[:160],
                  "seconds": _median_s(lambda q=q: ask(q, Lot(lot.facts, kb, LotAnalytics(list(maps)))), rounds)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    klarf = args.shared / "fixtures" / "klarf"
    a103 = [m for f in example_files() if "A103" in f.name for m in read_maps(f)]
    out: dict[str, Any] = {"benchmark": "lot_questions", "python": platform.python_version(), "page": {}}
    for name, maps in (("LAA_FAA_LAA-01.000", read_maps(klarf / "LAA_FAA_LAA-01.000")),
                       ("LARGE_KLARF.000", read_maps(klarf / "LARGE_KLARF.000")), ("demo lot A103", a103)):
        out["page"][name] = page(maps, args.rounds)
    out["questions (demo lot A103)"] = questions(a103, args.rounds)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
