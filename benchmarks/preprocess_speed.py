"""Wafer preprocessing and end-to-end ONNX Runtime speed: prints one JSON document.

Times :func:`fabsight.wafer.preprocess.maps_to_array` (one-hot + area resampling to 64×64)
and ``predict_details`` of an exported wafer model (preprocessing, network, calibration,
OOD distance, review flags) on 256 generated maps, either all 52×52 (one lot) or spread
over the seven training grid shapes. Wall-clock and process-CPU rates are both reported,
with the load average, because the reference machine is shared.

Whatever ``fabsight`` is on ``PYTHONPATH`` is measured, so an older version of the code
can be timed with the same script under the same load (docs/benchmarks.md)::

    git archive 342db88 src | tar -x -C /tmp/fabsight-old          # session-1 code
    PYTHONPATH=/tmp/fabsight-old/src python -P benchmarks/preprocess_speed.py --model DIR
    PYTHONPATH=src python -P benchmarks/preprocess_speed.py --model DIR
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from fabsight.deploy import load_predictor
from fabsight.synth import generate_dataset
from fabsight.utils.timing import median_times
from fabsight.wafer.classifier import SYNTH_SHAPES
from fabsight.wafer.preprocess import maps_to_array


def _rates(fn: Callable[[], object], n: int, rounds: int) -> dict[str, float]:
    """Median maps/s (wall) and maps per CPU-second of ``fn`` over ``rounds`` after a warm-up."""
    wall, cpu = median_times(fn, rounds)
    return {"maps_per_s": n / wall, "maps_per_cpu_s": n / cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="wafer model directory exported to ONNX")
    p.add_argument("--runtime", default="onnx", choices=["torch", "onnx", "onnx-int8"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()

    clf = load_predictor(args.model, args.runtime, n_threads=args.threads)
    batches = {
        "one_grid_52x52": generate_dataset(29, shapes=((52, 52),), seed=5)[:256],
        "seven_grid_shapes": generate_dataset(29, shapes=SYNTH_SHAPES, seed=5)[:256],
    }
    out: dict[str, object] = {"model": str(args.model), "runtime": args.runtime, "loadavg_before": os.getloadavg()}
    for name, maps in batches.items():
        out[name] = {
            "preprocessing": _rates(lambda m=maps: maps_to_array(m, clf.input_size_), len(maps), args.rounds),
            "end_to_end": _rates(lambda m=maps: clf.predict_details(m), len(maps), args.rounds),
        }
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
