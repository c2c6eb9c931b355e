"""Where the time of wafer-pattern prediction goes, on real WM-811K maps: prints one JSON document.

Each stage of ``WaferClassifier.predict_details`` is timed alone at batches of 256 on the
first ``--maps`` maps of the validation piece (reading the file is not timed), then the
whole call and ``predict``; single-map latency is the median over ``--single`` maps, one
call each. WM-811K mixes hundreds of grid sizes (a batch of 256 holds ~40 of them, from
22×15 to 212×204 dies), so these are the costs of a realistic, not a one-lot, batch.

Stages: ``preprocess`` (:func:`fabsight.wafer.preprocess.maps_to_array`), ``network``
(the forward pass alone, on preprocessed batches), ``ood`` (Mahalanobis distance of the
embeddings), ``grid_checks`` (:func:`fabsight.wafer.review.grid_checks`), then
``predict_details`` and ``predict`` end to end. Each gets wall-clock maps/s and maps per
CPU-second of this process: on a shared machine the first says what a user waited, the
second is steadier, and ``network_share`` (end-to-end / network-only maps/s) says how much
of the time is the network, whatever the load. ``--input-sizes`` adds network-only rates of
the same architecture (random weights) at other input sides, to weigh a smaller input.

Example (the numbers in docs/benchmarks.md)::

    PYTHONPATH=src nice -n 5 python benchmarks/wafer_speed.py --model MODEL_DIR --threads 2
    PYTHONPATH=src nice -n 5 python benchmarks/wafer_speed.py --model MODEL_DIR --runtime onnx
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.deploy import load_predictor
from fabsight.io import read_maps
from fabsight.utils.timing import median_times
from fabsight.wafer.preprocess import maps_to_array
from fabsight.wafer.review import grid_checks

BATCH = 256
DEFAULT_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "wm811k" / "LSWMD_val.pkl"


def rates(fn: Callable[[], object], n: int, rounds: int) -> dict[str, float]:
    """Median maps/s (wall) and maps per process CPU-second of ``fn`` over ``rounds``."""
    wall, cpu = median_times(fn, rounds)
    return {"maps_per_s": round(n / wall, 1), "maps_per_cpu_s": round(n / cpu, 1)}


def batches(items: list[Any]) -> list[list[Any]]:
    return [items[s : s + BATCH] for s in range(0, len(items), BATCH)]


def stages(clf: Any, maps: list[Any], rounds: int) -> dict[str, dict[str, float]]:
    """Each stage of ``predict_details`` alone, then the whole call and ``predict``."""
    parts = batches(maps)
    grids = [[m.grid for m in b] for b in parts]
    size = clf.input_size_
    inputs = [maps_to_array(b, size) for b in parts]
    embeddings = [clf.forward(x)[1] for x in inputs]
    n = len(maps)
    return {
        "preprocess": rates(lambda: [maps_to_array(b, size) for b in parts], n, rounds),
        "network": rates(lambda: [clf.forward(x) for x in inputs], n, rounds),
        "ood": rates(lambda: [clf.ood_.score(e) for e in embeddings], n, rounds),
        "grid_checks": rates(lambda: [grid_checks(g) for g in grids], n, rounds),
        "predict_details": rates(lambda: [clf.predict_details(b) for b in parts], n, rounds),
        "predict": rates(lambda: [clf.predict(b) for b in parts], n, rounds),
    }


def latency_ms(fn: Callable[[list[Any]], object], maps: list[Any]) -> float:
    """Median wall milliseconds of ``fn`` on one map at a time (after one warm-up call)."""
    fn(maps[:1])
    times = []
    for m in maps:
        t0 = time.perf_counter()
        fn([m])
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 2)


def other_sizes(clf: Any, sizes: list[int], rounds: int) -> dict[str, dict[str, float]]:
    """Network-only rates of the model's architecture (random weights) at other input sides."""
    import torch

    from fabsight.wafer.net import WaferNet, inference_copy

    cfg = clf.net_.config
    net = inference_copy(WaferNet(cfg["n_outputs"], tuple(cfg["widths"]), cfg["embed_dim"], cfg["cosine_head"]))
    torch.set_num_threads(clf.n_threads)
    rng = np.random.default_rng(0)
    out = {}
    for side in sizes:
        x = rng.random((BATCH, 3, side, side), dtype=np.float32)
        xt = torch.from_numpy(x / x.sum(axis=1, keepdims=True)).contiguous(memory_format=torch.channels_last)

        def forward(xt: torch.Tensor = xt) -> None:
            with torch.inference_mode():
                for _ in range(8):
                    net.classify(net.embed(xt))

        out[str(side)] = rates(forward, 8 * BATCH, rounds)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="wafer model directory")
    p.add_argument("--val", type=Path, default=DEFAULT_VAL, help="WM-811K validation piece (LSWMD layout)")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx", "onnx-int8"])
    p.add_argument("--threads", type=int, default=2, help="network threads (torch or ONNX Runtime)")
    p.add_argument("--maps", type=int, default=2048, help="first N validation maps")
    p.add_argument("--single", type=int, default=64, help="maps timed one call each for the latency")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--input-sizes", type=int, nargs="*", default=[], help="network-only rates at these input sides")
    args = p.parse_args()

    maps = read_maps(args.val)[: args.maps]
    clf = load_predictor(args.model, args.runtime, n_threads=args.threads)
    out: dict[str, Any] = {
        "model": str(args.model),
        "runtime": args.runtime,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "maps": len(maps),
        "grid_shapes": len({m.grid.shape for m in maps}),
        "batch": BATCH,
        "input_size": clf.input_size_,
        "loadavg_before": os.getloadavg(),
    }
    out["stages"] = stages(clf, maps, args.rounds)
    net = out["stages"]["network"]
    out["network_share"] = {  # end-to-end rate / network-only rate: 1.0 would be a free rest
        k: {unit: round(out["stages"][k][unit] / net[unit], 3) for unit in net} for k in ("predict_details", "predict")
    }
    out["single_map_latency_ms"] = {
        "predict_details": latency_ms(clf.predict_details, maps[: args.single]),
        "predict": latency_ms(clf.predict, maps[: args.single]),
    }
    if args.input_sizes and args.runtime == "torch":
        out["network_at_input_size"] = other_sizes(clf, args.input_sizes, args.rounds)
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
