"""Few-shot training on another fab's maps: from the shipped WM-811K model (the default) or from scratch.

The "other fab" is MixedWM38 (52×52 maps of another source than WM-811K), kept to its
single-pattern maps (one basic pattern, or none: the nine WM-811K classes). ``--per-class``
labelled maps per class are drawn (seeded) from its train_05 + train_10 pieces and trained
through :func:`fabsight.wafer.train` (what ``fabsight wafer train`` runs): without ``init``
(few-shot data: starts from the shipped model; ``--heads``: the ``auto`` head, a linear probe,
and others) and with ``init="none"`` (from scratch); all are scored on every single-pattern
map of the validation piece.

Example (the numbers in docs/benchmarks.md)::

    PYTHONPATH=src nice -n 5 python benchmarks/few_shot_start.py --per-class 5 10 20 --heads auto finetune --threads 1
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from fabsight.io import read_maps, write_folder
from fabsight.types import WaferMap
from fabsight.wafer import Recipe, evaluate, train
from fabsight.wafer.recipe import SCRATCH

PIECES = ("MixedWM38_train_05.npz", "MixedWM38_train_10.npz")


def single_pattern(path: Path) -> list[WaferMap]:
    """The maps of one MixedWM38 file that carry one basic pattern or none."""
    return [m for m in read_maps(path) if len(m.labels) == 1]


def draw(maps: list[WaferMap], per_class: int, seed: int) -> list[WaferMap]:
    by_class: dict[str, list[WaferMap]] = defaultdict(list)
    for m in maps:
        by_class[m.labels[0]].append(m)
    rng = random.Random(seed)
    return [m for c in sorted(by_class) for m in rng.sample(by_class[c], min(per_class, len(by_class[c])))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/mixedwm38"))
    ap.add_argument("--per-class", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heads", nargs="+", default=["auto"], help="Heads tried from the shipped model.")
    args = ap.parse_args()

    pool = [m for p in PIECES for m in single_pattern(args.data / p)]
    val = single_pattern(args.data / "MixedWM38_val.npz")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.per_class:
            folder = Path(tmp) / f"k{k}"
            write_folder(draw(pool, k, args.seed), folder)
            for init, head in [*((None, h) for h in args.heads), (SCRATCH, "auto")]:
                recipe = Recipe(epochs=args.epochs, init=init, head=head, threads=args.threads, seed=args.seed)
                t0 = time.perf_counter()
                clf = train([folder], None, recipe)
                seconds = time.perf_counter() - t0
                result = evaluate(clf, val)
                rows.append({
                    "per_class": k, "start": clf.training_["start"], "head": clf.head_,
                    "macro_f1": round(result["macro_f1"], 4), "accuracy": round(result["accuracy"], 4),
                    "train_seconds": round(seconds, 1),
                })
    print(json.dumps({"val_maps": len(val), "pool_maps": len(pool), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
