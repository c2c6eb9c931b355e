"""Build the wafer-pattern model fabsight ships: trained on the real WM-811K train pieces.

The model in ``src/fabsight/wafer/pretrained/wm811k`` is what every wafer command uses when
no model is named, and where few-shot ``wafer train`` starts by default (``--init pretrained``).
This script is the only way it is made, so anyone with ``../shared/data/wm811k`` can
rebuild it and check its card:

- training data: the four train pieces (37,348 labelled maps); early stopping, calibration
  and the review threshold on a stratified 10 % of them (``validation_fraction``), so the
  validation piece stays unseen;
- the card's ``metrics.validation_piece``: macro-F1, accuracy and per-class F1 on
  ``LSWMD_val.pkl`` (12,450 maps), measured once after training;
- ``model.onnx`` (``--runtime onnx``), checked against PyTorch on every 25th validation map;
- a ``README.md`` beside the weights says where the data comes from and its licence.

Run (about 20 minutes on 2 CPU cores)::

    PYTHONPATH=src python scripts/build_pretrained_wafer.py --data ../shared/data/wm811k
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PIECES = ("LSWMD_train_01.pkl", "LSWMD_train_10.pkl", "LSWMD_train_20.pkl", "LSWMD_train_29.pkl")
OUT = Path(__file__).resolve().parents[1] / "src" / "fabsight" / "wafer" / "pretrained" / "wm811k"

README = """# fabsight's shipped wafer-pattern model (WM-811K)

A {params:,}-parameter `WaferNet` ({arch}, input {size}×{size}) that classifies a wafer map into the
nine WM-811K classes: {classes}.
`card.json` holds everything the loader needs and how it was made; `model.onnx` is the same
network for ONNX Runtime (`--runtime onnx`), checked against PyTorch on {n_check} validation maps.

- **Data.** Real wafer maps of the public WM-811K set (MIR Lab; Wu, Jang and Chen, IEEE TSM 2015),
  as labelled, cleaned and split by the faris-k/self-supervised-wafermaps repository (MIT licence):
  the four train pieces, {n_train:,} labelled maps ({n_hold:,} of them held out, stratified, for early
  stopping, calibration and the review threshold). The validation piece was not used in training.
- **Measured on the validation piece** (`LSWMD_val.pkl`, {n_val:,} maps, never seen in training):
  macro-F1 **{macro_f1:.3f}**, accuracy **{accuracy:.3f}**.

| class | {header} |
|---|{rule}|
| F1 | {f1s} |

- **Built by** `scripts/build_pretrained_wafer.py` ({seconds:.0f} s on the build machine, seed {seed}).
- **Limits.** WM-811K labels are known to be debatable between Loc, Edge-Loc and none; a fab whose
  maps differ (grid sizes, fail densities, its own classes) should adapt it with
  `fabsight wafer train MAPS` and a few labelled maps per class: with at most 20 maps in its rarest class,
  training starts from this model by default (`--init pretrained` says so explicitly, `--init none` does not).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/wm811k"))
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--arch", default="compact")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from fabsight.deploy import export_onnx
    from fabsight.io import read_maps
    from fabsight.wafer import Recipe, evaluate, train

    pieces = [args.data / p for p in PIECES]
    missing = [str(p) for p in [*pieces, args.data / "LSWMD_val.pkl"] if not p.is_file()]
    if missing:
        sys.exit(f"error: {missing[0]}: not found (the WM-811K pieces of ../shared/data/wm811k)")
    recipe = Recipe(
        epochs=args.epochs, arch=args.arch, threads=args.threads, seed=args.seed, validation_fraction=args.holdout
    )
    t0 = time.monotonic()
    clf = train(pieces, None, recipe)
    seconds = time.monotonic() - t0
    val_maps = [m for m in read_maps(args.data / "LSWMD_val.pkl") if m.labels]
    result = evaluate(clf, val_maps)
    per_class = {c: round(r["f1"], 4) for c, r in result["per_class"].items()}
    clf.metrics_["validation_piece"] = {
        "data": "LSWMD_val.pkl (WM-811K validation piece, faris-k/self-supervised-wafermaps split)",
        "n_maps": len(val_maps),
        "macro_f1": round(result["macro_f1"], 4),
        "accuracy": round(result["accuracy"], 4),
        "per_class_f1": per_class,
    }
    clf.training_["build"] = {"script": "scripts/build_pretrained_wafer.py", "seconds": round(seconds, 1)}
    clf.save(args.out)
    # ONNX Runtime is the fast path on a tool PC (docs/benchmarks.md): ship the graph, checked
    # against PyTorch on real validation maps.
    export_onnx(args.out, sample=val_maps[::25], n_threads=args.threads)
    card = json.loads((args.out / "card.json").read_text())
    (args.out / "README.md").write_text(
        README.format(
            params=card["backbone"]["parameters"],
            arch=args.arch,
            size=clf.input_size_,
            classes=", ".join(clf.classes_),
            n_train=clf.training_["n_maps"],
            n_hold=clf.training_["n_validation"],
            n_val=len(val_maps),
            macro_f1=result["macro_f1"],
            accuracy=result["accuracy"],
            header=" | ".join(per_class),
            rule="|".join(["---"] * len(per_class)),
            f1s=" | ".join(f"{v:.3f}" for v in per_class.values()),
            seconds=seconds,
            n_check=len(val_maps[::25]),
            seed=args.seed,
        )
    )
    report = {"out": str(args.out), "seconds": round(seconds, 1), **clf.metrics_["validation_piece"]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
