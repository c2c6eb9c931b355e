"""Distillation + ONNX export benchmark (MISSION M1, M2): prints one JSON document.

1. Teacher: the ``wide`` WaferNet trained on generated maps (reused from ``--workdir`` when
   already there, so a rerun only re-measures).
2. Student: ``fabsight distill`` logic (:class:`fabsight.distill.WaferDistiller`) on
   generated maps *with their labels thrown away*, other seed than the teacher's data,
   plus ``--synthetic-per-epoch`` fresh generated maps each epoch and ``--mixup``.
3. Quality of both on maps neither saw: the wafer benchmark's test sets (other grid sizes,
   three noise levels) and its shifted "few-shot target" distribution (pattern parameters
   past the generator's ranges, 26×26 and 200×200 grids, heavy noise), used here as is,
   without adaptation.
4. Size: parameters and FLOPs per map (:func:`fabsight.wafer.net.n_flops`).
5. Mixed-type (``--mixed-teacher DIR``, e.g. the wafer benchmark's ``medium`` multi-label
   model): the same distillation into ``--mixed-size``, scored by exact-match accuracy and
   macro-F1 on the wafer benchmark's mixed test set (38 combinations, 52×52, seed 777).
6. Speed: both models exported with ``fabsight.deploy.export_onnx`` (fp32 and INT8) and
   timed on preprocessed batches, in PyTorch and in ONNX Runtime, at batch 256 (maps/s)
   and batch 1 (median latency), on ``--threads`` threads. The machine is shared, so the
   load average is reported beside the numbers.

Examples (the exact session-2 commands, with their numbers, are in docs/benchmarks.md)::

    PYTHONPATH=src python -P benchmarks/distill_export.py --workdir /tmp/fabsight-distill-bench \
        --size small --student-dir student-small-v2 --student-epochs 30 --unlabelled-per-class 150 \
        --synthetic-per-epoch 1800 --mixup 0.2 --sections quality
    PYTHONPATH=src python -P benchmarks/distill_export.py --workdir /tmp/fabsight-distill-bench \
        --mixed-teacher /tmp/fabsight-models/wafer-mixed --student-epochs 20 --synthetic-per-epoch 1900 \
        --mixup 0.2 --sections mixed
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.deploy import export_onnx, load_predictor
from fabsight.distill import WaferDistiller, synthetic_classes
from fabsight.synth import generate_dataset
from fabsight.types import WaferMap
from fabsight.utils.timing import median_times
from fabsight.wafer import WaferClassifier, evaluate, load_model
from fabsight.wafer.classifier import SYNTH_SHAPES
from fabsight.wafer.net import ARCHITECTURES
from fabsight.wafer.preprocess import maps_to_array

# The wafer benchmark's test sets and helpers, shared rather than copied (loaded by path:
# benchmarks/ is a folder of scripts, not a package).
_spec = importlib.util.spec_from_file_location("wafer_classify", Path(__file__).with_name("wafer_classify.py"))
wafer_classify = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wafer_classify)
TEST_NOISE, TEST_SHAPES, TARGET = wafer_classify.TEST_NOISE, wafer_classify.TEST_SHAPES, wafer_classify.target_maps
log, _round = wafer_classify.log, wafer_classify._round


def teacher_model(args: argparse.Namespace) -> tuple[WaferClassifier, dict[str, Any]]:
    path = args.workdir / "teacher"
    if (path / "card.json").is_file():
        log(f"reusing teacher {path}")
        return load_model(path), {"reused": str(path)}
    train = generate_dataset(args.teacher_per_class, shapes=SYNTH_SHAPES, seed=0)
    widths, embed_dim = ARCHITECTURES["wide"]
    t0 = time.time()
    clf = WaferClassifier(
        widths=widths, embed_dim=embed_dim, epochs=args.teacher_epochs, n_threads=args.threads, device=args.device
    )
    clf.fit(train, data=f"fabsight.synth: {args.teacher_per_class} maps/class x 9 WM-811K classes, seed 0")
    clf.save(path)
    log(f"teacher trained in {time.time() - t0:.0f}s -> {path}")
    return clf, {"maps": len(train), "epochs": args.teacher_epochs, "device": args.device, "seconds": time.time() - t0}


def student_model(args: argparse.Namespace, teacher: WaferClassifier) -> tuple[WaferClassifier, dict[str, Any]]:
    path = args.workdir / args.student_dir
    if (path / "card.json").is_file():
        log(f"reusing student {path}")
        student = load_model(path)
        t = student.training_
        info = {"reused": str(path), "unlabelled_maps": t["n_maps"], "epochs": t["epochs"], **t["distillation"]}
        return student, {
            **info,
            "agreement": student.metrics_["agreement_with_teacher"],
            "compression": t["compression"],
        }
    unlabelled = [m.grid for m in generate_dataset(args.unlabelled_per_class, shapes=SYNTH_SHAPES, seed=100)]
    data = f"{len(unlabelled)} generated maps, labels discarded"
    return distil(args, teacher, args.workdir / "teacher", unlabelled, args.size, path, data)


def distil(
    args: argparse.Namespace,
    teacher: WaferClassifier,
    teacher_dir: Path,
    unlabelled: list[np.ndarray],
    size: str,
    path: Path,
    data: str,
) -> tuple[WaferClassifier, dict[str, Any]]:
    """One distillation run with the command-line recipe; the student is saved to ``path``."""
    recipe = {
        "epochs": args.student_epochs,
        "synthetic_per_epoch": args.synthetic_per_epoch,
        "mixup": args.mixup,
        "hard_weight": args.hard_weight,
        "temperature": args.temperature,
        "attention_weight": args.attention_weight,
        "init": None if args.student_init is None else str(args.student_init),
    }
    t0, load0 = time.time(), os.getloadavg()
    d = WaferDistiller(teacher, size=size, n_threads=args.train_threads, device=args.device, **recipe)
    d.fit(unlabelled, data=data)
    d.student_.training_["distilled_from"] = str(teacher_dir)
    d.student_.save(path)
    log(f"student distilled in {time.time() - t0:.0f}s -> {path}")
    info = {
        "unlabelled_maps": len(unlabelled),
        **recipe,
        "train_threads": args.train_threads,
        "device": args.device,
        "seconds": time.time() - t0,
        "loadavg_before_after": [load0, os.getloadavg()],
        "agreement": d.agreement_,
        "compression": d.compression_,
    }
    return d.student_, info


def quality(clf: WaferClassifier, sets: dict[str, list[WaferMap]]) -> dict[str, Any]:
    out = {}
    for name, maps in sets.items():
        r = evaluate(clf, maps)
        out[name] = {"n": r["n"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
    return out


def speed(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    maps = generate_dataset(29, shapes=((52, 52),), seed=5)[:256]
    out: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    wall, cpu = median_times(partial(maps_to_array, maps, 64), args.rounds)
    out["preprocessing_only"] = {"maps_per_s_batch256": len(maps) / wall, "maps_per_cpu_s_batch256": len(maps) / cpu}
    for runtime in ("torch", "onnx", "onnx-int8"):
        clf = load_predictor(model_dir, runtime, n_threads=args.threads)
        x = maps_to_array(maps, clf.input_size_)
        wall, cpu = median_times(partial(clf.forward, x), args.rounds)
        wall1, _ = median_times(partial(clf.forward, x[:1]), args.rounds * 20)
        wall_e2e, cpu_e2e = median_times(partial(clf.predict_details, maps), args.rounds)
        out[runtime] = {
            "network_maps_per_s_batch256": len(x) / wall,
            "network_maps_per_cpu_s_batch256": len(x) / cpu,
            # what `threads` otherwise idle cores would do, assuming the threads scale perfectly
            "idle_cores_estimate_maps_per_s_batch256": args.threads * len(x) / cpu,
            "latency_ms_batch1": 1000 * wall1,
            # predict_details: preprocessing + network + calibration, OOD distance, review flags
            "end_to_end_maps_per_s_batch256": len(maps) / wall_e2e,
            "end_to_end_maps_per_cpu_s_batch256": len(maps) / cpu_e2e,
        }
    out["loadavg_after"] = os.getloadavg()
    return out


def mixed(args: argparse.Namespace) -> dict[str, Any]:
    """Distil the multi-label ``--mixed-teacher`` and score both on the mixed test set."""
    teacher = load_model(args.mixed_teacher)
    teacher.n_threads = args.threads
    path = args.workdir / (args.mixed_student_dir or f"mixed-student-{args.mixed_size}")
    if (path / "card.json").is_file():
        log(f"reusing mixed student {path}")
        student, info = load_model(path), {"reused": str(path)}
    else:
        pool = synthetic_classes(teacher)
        per = -(-args.mixed_unlabelled // len(pool))
        unlabelled = [m.grid for m in generate_dataset(per, mixed=True, classes=pool, shapes=((52, 52),), seed=100)]
        data = f"{len(unlabelled)} generated mixed-type 52x52 maps, labels discarded"
        student, info = distil(args, teacher, args.mixed_teacher, unlabelled, args.mixed_size, path, data)
    test = generate_dataset(args.mixed_test_per_class, mixed=True, shapes=((52, 52),), seed=777)
    out: dict[str, Any] = {"teacher_dir": str(args.mixed_teacher), "student_dir": str(path), "distill": info}
    for role, clf in (("teacher", teacher), ("student", student)):
        r = evaluate(clf, test)
        out[role] = {"n": r["n"], "exact_match_accuracy": r["exact_match_accuracy"], "macro_f1": r["macro_f1"]}
    out["student_minus_teacher"] = {
        m: out["student"][m] - out["teacher"][m] for m in ("exact_match_accuracy", "macro_f1")
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/fabsight-distill-bench"))
    p.add_argument("--sections", default="quality,export,speed", help="any of quality, export, speed, mixed")
    p.add_argument("--teacher-per-class", type=int, default=300)
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--unlabelled-per-class", type=int, default=300)
    p.add_argument("--student-epochs", type=int, default=12)
    p.add_argument("--size", default="tiny", choices=["tiny", "small"])
    p.add_argument("--student-dir", help="student folder name in --workdir (default student-SIZE)")
    p.add_argument("--synthetic-per-epoch", type=int, default=0)
    p.add_argument("--mixup", type=float, default=0.0)
    p.add_argument("--hard-weight", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--attention-weight", type=float, default=0.0)
    p.add_argument("--student-init", type=Path, help="student directory to continue distilling from")
    p.add_argument("--mixed-teacher", type=Path, default=Path("/tmp/fabsight-models/wafer-mixed"))
    p.add_argument("--mixed-size", default="tiny", choices=["tiny", "small"])
    p.add_argument("--mixed-student-dir", help="mixed student folder name in --workdir (default mixed-student-SIZE)")
    p.add_argument("--mixed-unlabelled", type=int, default=3800, help="unlabelled mixed maps (all combinations)")
    p.add_argument("--mixed-test-per-class", type=int, default=60)
    p.add_argument("--test-per-class", type=int, default=40)
    p.add_argument("--threads", type=int, default=2, help="threads for evaluation and timing")
    p.add_argument("--train-threads", type=int, default=1, help="torch threads while distilling")
    p.add_argument("--device", default="cpu", help="where the teacher trains and distillation runs (cpu, cuda, auto)")
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    args.student_dir = args.student_dir or f"student-{args.size}"
    sections = set(args.sections.split(","))
    result: dict[str, Any] = {"threads": args.threads, "cpu_count": os.cpu_count(), "sections": sorted(sections)}
    student_dir = args.workdir / args.student_dir

    if sections & {"quality", "export", "speed"}:
        teacher, teacher_info = teacher_model(args)
        student, student_info = student_model(args, teacher)
        result["teacher"] = {"dir": str(args.workdir / "teacher"), "train": teacher_info}
        result["student"] = {"dir": str(student_dir), "distill": student_info}
    if "quality" in sections:
        sets = {
            name: generate_dataset(args.test_per_class, shapes=TEST_SHAPES, seed=1000 + i, noise=noise)
            for i, (name, noise) in enumerate(TEST_NOISE.items())
        }
        sets["all_test"] = [m for maps in list(sets.values()) for m in maps]
        sets["shifted_target"] = TARGET(args.test_per_class, seed=7)
        log("evaluating")
        teacher.n_threads = student.n_threads = args.threads
        q_t, q_s = quality(teacher, sets), quality(student, sets)
        result["teacher"]["quality"], result["student"]["quality"] = q_t, q_s
        result["student_minus_teacher"] = {
            k: {m: q_s[k][m] - q_t[k][m] for m in ("accuracy", "macro_f1")} for k in sets
        }
    if "export" in sections:
        log("exporting to ONNX (fp32 + INT8)")
        result["export"] = {}
        for role, d in (("teacher", args.workdir / "teacher"), ("student", student_dir)):
            e = export_onnx(d, int8=True, n_threads=args.threads)["onnx"]
            result["export"][role] = {"check": e["check"], "int8": e["int8"]}
    if "speed" in sections:
        log("timing")
        result["speed"] = {"teacher": speed(args, args.workdir / "teacher"), "student": speed(args, student_dir)}
    if "mixed" in sections:
        log("mixed-type distillation")
        result["mixed"] = mixed(args)
    print(json.dumps(_round(result), indent=2))


if __name__ == "__main__":
    main()
