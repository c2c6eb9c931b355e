"""Batch throughput: maps/s of ``fabsight batch`` in-process vs Ray (1 and 2 actors), driver peak memory,
and the overhead per input file (many one-map files vs few big files). Prints JSON.

    PYTHONPATH=src python benchmarks/batch.py --maps 100000 --files 100 --out-json bench_batch.json

Inputs are MixedWM38-style ``.npz`` files of 52×52 maps drawn from a pool of generated maps
(throughput does not depend on the maps being distinct); the model is the default compact
architecture (64×64 input) trained for one epoch: speed depends on the architecture, not on
how well it was trained. Each configuration runs ``fabsight batch`` in its own process, so
``driver_peak_rss_mb`` is that run's own. The machine's load average is recorded beside the
numbers because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ("Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Random", "Scratch", "none")


def _prepare(root: Path, n_maps: int, n_files: int, n_small: int) -> dict[str, Path]:
    from fabsight.io import write_folder, write_mixedwm38
    from fabsight.synth import generate_dataset
    from fabsight.wafer import WaferClassifier

    pool = generate_dataset(200, classes=CLASSES, shapes=((52, 52),), seed=0)
    WaferClassifier(epochs=1, n_threads=2).fit(pool).save(root / "model")
    rng = np.random.default_rng(0)
    per_file = n_maps // n_files
    big = root / "big"
    for i in range(n_files):
        write_mixedwm38([pool[j] for j in rng.integers(0, len(pool), per_file)], big / f"lot{i:04d}.npz")
    few = root / "few"  # the same maps as `small`, in two files
    chosen = [pool[j] for j in rng.integers(0, len(pool), n_small)]
    write_mixedwm38(chosen[: n_small // 2], few / "a.npz")
    write_mixedwm38(chosen[n_small // 2:], few / "b.npz")
    write_folder(chosen, root / "small")
    return {"model": root / "model", "big": big, "few": few, "small": root / "small"}


def _run(inputs: Path, model: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "fabsight", "batch", str(inputs), "--model", str(model), "--out", str(out),
           "--json", "--overwrite", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    result["process_wall_s"] = round(time.perf_counter() - t0, 2)
    result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--small-files", type=int, default=2000, help="one-map files for the per-file overhead")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--configs", default="in-process,ray-1,ray-2", help="throughput runs to make")
    ap.add_argument("--no-overhead", action="store_true", help="skip the per-file overhead runs")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out-json", type=Path, default=None)
    args = ap.parse_args()

    root = args.workdir or Path(tempfile.mkdtemp(prefix="fabsight-bench-batch-"))
    t0 = time.perf_counter()
    paths = _prepare(root, args.maps, args.files, args.small_files)
    report: dict = {
        "maps": args.maps, "files": args.files, "batch_size": args.batch_size, "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "prepare_s": round(time.perf_counter() - t0, 1), "throughput": {}, "per_file_overhead": {},
    }
    configs = {
        "in-process": [],
        "ray-1": ["--ray", "local", "--workers", "1"],
        "ray-2": ["--ray", "local", "--workers", "2"],
    }
    bs = ["--batch-size", str(args.batch_size)]
    for name in args.configs.split(","):
        extra = configs[name]
        r = _run(paths["big"], paths["model"], root / f"out-{name}", extra + bs)
        r["maps_per_s"] = r.pop("rows_per_s")
        r["steady_maps_per_s"] = round(r["rows"] / (r["seconds"] - r["first_results_after_s"]), 1)
        report["throughput"][name] = r
        print(name, r["maps_per_s"], "maps/s", file=sys.stderr)
    for name, extra in () if args.no_overhead else (("in-process", []), ("ray-2", configs["ray-2"])):
        few = _run(paths["few"], paths["model"], root / "out-few", extra + bs)
        small = _run(paths["small"], paths["model"], root / "out-small", extra + bs)
        extra_files = small["inputs"] - few["inputs"]
        # steady state: from the first results on, so Ray's start-up (which varies with load) is left out
        steady = {k: r["seconds"] - r["first_results_after_s"] for k, r in (("few", few), ("small", small))}
        report["per_file_overhead"][name] = {
            "few_files": {k: few[k] for k in ("inputs", "rows", "seconds", "first_results_after_s")},
            "one_map_files": {k: small[k] for k in ("inputs", "rows", "seconds", "first_results_after_s")},
            "overhead_ms_per_file": round(1000 * (steady["small"] - steady["few"]) / extra_files, 3),
        }
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    if args.out_json:
        args.out_json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
