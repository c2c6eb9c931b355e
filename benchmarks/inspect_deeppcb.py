"""Golden-template inspection on DeepPCB: train on trainval.txt, score on test.txt (JSON).

    PYTHONPATH=src python benchmarks/inspect_deeppcb.py [--data ../shared/data/deeppcb] [--model-out DIR]

Reports the DeepPCB protocol (IoU > 0.33, same type) overall and per type, count accuracy,
and throughput of the whole pipeline per pair (read both JPEGs, register, detect,
classify) in one process. OpenCV and OpenMP are held to one thread so the number is a
single-core figure; the load average is printed because the reference machine is shared.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    import argparse
    import json
    import os
    import tempfile
    import time

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    from fabsight.inspect import DEFECT_TYPES, TemplateInspector, evaluate, load_pair, read_annotations, read_list
    from fabsight.inspect.model import inspect_pair, load_inspector
    from fabsight.utils.progress import track

    cv2.setNumThreads(1)
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=here.parent / "shared" / "data" / "deeppcb")
    ap.add_argument("--model-out", type=Path, default=None, help="keep the trained model here")
    ap.add_argument("--limit", type=int, default=None, help="first N pairs of each list (smoke runs)")
    args = ap.parse_args()

    load_start = os.getloadavg()
    train = read_list(args.data, "trainval.txt")[: args.limit]
    test = read_list(args.data, "test.txt")[: args.limit]
    model = TemplateInspector()
    t0 = time.perf_counter()
    extracted = model.extract(load_pair(p.test, p.template) for p in track(train, "train: candidates"))
    model.fit_candidates(extracted, [read_annotations(p.annotations) for p in train])
    train_s = time.perf_counter() - t0
    out_dir = args.model_out or Path(tempfile.mkdtemp(prefix="fabsight-inspect-")) / "model"
    model.save(out_dir, {"data": str(args.data), "list": "trainval.txt"})
    model = load_inspector(out_dir)

    dets, truths, seconds = [], [], []
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    for p in track(test, "test: inspecting"):
        s = time.perf_counter()
        t, m = load_pair(p.test, p.template)
        r = inspect_pair(t, m, model, min_confidence=0.01)
        seconds.append(time.perf_counter() - s)
        dets.append([d.scored() for d in r.detections])
        truths.append([(b.as_tuple(), b.type) for b in read_annotations(p.annotations)])
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    report = evaluate(dets, truths, DEFECT_TYPES, operating_threshold=model.threshold_)
    seconds.sort()
    result = {
        "train_pairs": len(train),
        "test_pairs": len(test),
        "train_seconds": round(train_s, 1),
        "operating_threshold": model.threshold_,
        "training": model.training_,
        **report,
        "speed": {
            "pairs_per_s_wall": round(len(test) / wall, 2),
            "pairs_per_s_cpu": round(len(test) / cpu, 2),
            "median_ms_per_pair": round(1000 * seconds[len(seconds) // 2], 1),
            "p90_ms_per_pair": round(1000 * seconds[int(0.9 * (len(seconds) - 1))], 1),
            "threads": 1,
            "load_average_start": [round(v, 2) for v in load_start],
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
        },
        "model": str(out_dir),
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
