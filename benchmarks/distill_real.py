"""Distillation on real unlabelled maps: the shipped WM-811K model → a ≥10× smaller student.

Prints one JSON document:

1. Student: :class:`fabsight.distill.WaferDistiller` (what ``fabsight distill`` runs) with the
   shipped model as teacher, on the maps of the four WM-811K train pieces *read without
   their labels* (``--data``; 37,348 maps, the fab's own maps: the teacher was trained on
   them, the usual distillation setting), size ``--size`` (``auto``: the largest family member
   ≥10× smaller than the teacher in parameters and FLOPs), calibrated on a held-out share of
   those maps against the teacher's predictions. Reused from ``--workdir`` when already
   there, so a rerun only re-measures.
2. Quality of both on the validation piece (``LSWMD_val.pkl``, 12,450 maps neither saw):
   macro-F1, accuracy, per-class F1, and how often the student decides as the teacher does.
3. Size: parameters and FLOPs per map (:func:`fabsight.wafer.net.n_flops`) and their ratios.
4. ONNX: the student exported with :func:`fabsight.deploy.export_onnx`; its decisions on every
   validation map in ONNX Runtime compared with PyTorch's.
5. Speed: maps/s of both, end to end (``predict`` on the validation maps, preprocessing
   included) and network only (batch 256), on ``--threads`` threads; the machine may be
   shared, so the load average is reported beside the numbers.

Example (the numbers in docs/benchmarks.md)::

    PYTHONPATH=src nice -n 5 python -P benchmarks/distill_real.py --workdir /work/runs/distill-real \
        --epochs 12 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.deploy import export_onnx, load_predictor
from fabsight.distill import WaferDistiller
from fabsight.io import read_maps
from fabsight.types import WaferMap
from fabsight.utils.timing import median_times
from fabsight.wafer import WaferClassifier, evaluate, load_model
from fabsight.wafer.net import n_flops, n_parameters
from fabsight.wafer.preprocess import maps_to_array
from fabsight.wafer.pretrained import pretrained_dir

PIECES = ("LSWMD_train_01.pkl", "LSWMD_train_10.pkl", "LSWMD_train_20.pkl", "LSWMD_train_29.pkl")
SPEED_BATCH = 256


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def unlabelled_grids(data: Path, limit: int | None, seed: int) -> list[np.ndarray]:
    """The train pieces' die grids, labels dropped (a seeded ``limit`` of them when given)."""
    grids = [m.grid for piece in PIECES for m in read_maps(data / piece)]
    if limit is not None and limit < len(grids):
        keep = np.random.default_rng(seed).choice(len(grids), size=limit, replace=False)
        grids = [grids[i] for i in sorted(keep)]
    return grids


def student_model(args: argparse.Namespace, teacher: WaferClassifier) -> tuple[WaferClassifier, dict[str, Any]]:
    """Distil (or reuse) the student in ``--workdir/--student-dir``."""
    path = args.workdir / args.student_dir
    if (path / "card.json").is_file():
        log(f"reusing student {path}")
        student = load_model(path)
        t = student.training_
        return student, {"reused": str(path), "n_maps": t["n_maps"], "epochs": t["epochs"], **t["distillation"]}
    grids = unlabelled_grids(args.data, args.limit, args.seed)
    log(f"distilling on {len(grids)} unlabelled maps")
    recipe = {
        "size": args.size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "temperature": args.temperature,
        "hard_weight": args.hard_weight,
        "feature_weight": args.feature_weight,
        "mixup": args.mixup,
        "attention_weight": args.attention_weight,
        "class_balance": args.class_balance,
        "validation_fraction": args.validation_fraction,
        "init": None if args.init is None else str(args.init),
    }
    t0, load0 = time.time(), os.getloadavg()
    d = WaferDistiller(teacher, n_threads=args.train_threads, device=args.device, random_state=args.seed, **recipe)
    d.fit(grids, data=f"{len(grids)} maps of the WM-811K train pieces ({args.data}), labels not read")
    seconds = time.time() - t0
    d.student_.training_["distilled_from"] = str(pretrained_dir())
    d.student_.save(path)
    log(f"student distilled in {seconds:.0f}s -> {path}")
    return d.student_, {
        "n_maps": len(grids),
        **recipe,
        "resolved_size": d.size_,
        "train_threads": args.train_threads,
        "device": args.device,
        "seconds": seconds,
        "loadavg_before_after": [load0, os.getloadavg()],
        "agreement_on_held_out_train_maps": d.agreement_,
        "final_losses": d.student_.training_["distillation"]["final_losses"],
    }


def quality(clf: WaferClassifier, val: list[WaferMap]) -> tuple[dict[str, Any], list[str], float]:
    """Scores on the validation piece, the predictions, and end-to-end maps/s of one ``predict``."""
    r = evaluate(clf, val)
    t0 = time.perf_counter()
    pred = clf.predict(val)
    rate = len(val) / (time.perf_counter() - t0)
    scores = {
        "macro_f1": r["macro_f1"],
        "accuracy": r["accuracy"],
        "per_class_f1": {c: v["f1"] for c, v in r["per_class"].items()},
    }
    return scores, pred, rate


def size(teacher: WaferClassifier, student: WaferClassifier) -> dict[str, Any]:
    px = teacher.input_size_
    t_p, s_p = n_parameters(teacher.net_), n_parameters(student.net_)
    t_f, s_f = n_flops(teacher.net_, px), n_flops(student.net_, px)
    return {
        "teacher": {"parameters": t_p, "flops": t_f, "widths": teacher.net_.config["widths"]},
        "student": {"parameters": s_p, "flops": s_f, "widths": student.net_.config["widths"]},
        "parameter_ratio": t_p / s_p,
        "flop_ratio": t_f / s_f,
    }


def onnx_check(args: argparse.Namespace, student_dir: Path, val: list[WaferMap], torch_pred: list[str]) -> dict:
    """Export the student and compare ONNX Runtime's decisions with PyTorch's on every validation map."""
    e = export_onnx(student_dir, sample=val[:512], n_threads=args.threads)["onnx"]
    onnx = load_predictor(student_dir, "onnx", n_threads=args.threads)
    t0 = time.perf_counter()
    pred = onnx.predict(val)
    rate = len(val) / (time.perf_counter() - t0)
    differ = sum(a != b for a, b in zip(pred, torch_pred, strict=True))
    return {
        "opset": e["opset"],
        "export_check": e["check"],
        "n_maps": len(val),
        "decisions_differing_from_torch": differ,
        "identical": differ == 0,
        "end_to_end_maps_per_s": rate,
        "network_maps_per_s_batch256": network_rate(onnx, val, args.rounds),
    }


def network_rate(clf: Any, val: list[WaferMap], rounds: int) -> float:
    """Forward passes only (preprocessed input), batch :data:`SPEED_BATCH`."""
    x = maps_to_array(val[:SPEED_BATCH], clf.input_size_)
    wall, _ = median_times(partial(clf.forward, x), rounds)
    return len(x) / wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/work/shared/data/wm811k"), help="folder of the LSWMD pieces")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/fabsight-distill-real"))
    p.add_argument("--student-dir", default="student", help="student folder name in --workdir")
    p.add_argument("--size", default="auto")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--hard-weight", type=float, default=0.0)
    p.add_argument("--feature-weight", type=float, default=1.0)
    p.add_argument("--mixup", type=float, default=0.0)
    p.add_argument("--attention-weight", type=float, default=0.0)
    p.add_argument("--class-balance", type=float, default=1.0)
    p.add_argument("--init", type=Path, help="student directory to continue distilling from")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--limit", type=int, help="distil on this many of the unlabelled maps (seeded draw)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="threads for evaluation, export and timing")
    p.add_argument("--train-threads", type=int, default=1, help="torch threads while distilling")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    teacher = load_model(pretrained_dir())
    student, distill_info = student_model(args, teacher)
    teacher.n_threads = student.n_threads = args.threads
    val = read_maps(args.data / "LSWMD_val.pkl")
    log(f"scoring on {len(val)} validation maps")
    load0 = os.getloadavg()
    q_t, pred_t, rate_t = quality(teacher, val)
    q_s, pred_s, rate_s = quality(student, val)
    result: dict[str, Any] = {
        "teacher_dir": str(pretrained_dir()),
        "student_dir": str(args.workdir / args.student_dir),
        "distill": distill_info,
        "size": size(teacher, student),
        "validation": {
            "data": str(args.data / "LSWMD_val.pkl"),
            "n_maps": len(val),
            "teacher": q_t,
            "student": q_s,
            "student_minus_teacher": {m: q_s[m] - q_t[m] for m in ("macro_f1", "accuracy")},
            "agreement_student_teacher": float(np.mean([a == b for a, b in zip(pred_s, pred_t, strict=True)])),
        },
    }
    log("exporting the student to ONNX")
    result["onnx"] = onnx_check(args, args.workdir / args.student_dir, val, pred_s)
    result["speed"] = {
        "threads": args.threads,
        **{
            role: {"end_to_end_maps_per_s": rate, "network_maps_per_s_batch256": network_rate(clf, val, args.rounds)}
            for role, clf, rate in (("teacher", teacher, rate_t), ("student", student, rate_s))
        },
        "loadavg_before_after": [load0, os.getloadavg()],
    }
    result["cpu_count"] = os.cpu_count()
    print(json.dumps(_round(result), indent=2))


if __name__ == "__main__":
    main()
