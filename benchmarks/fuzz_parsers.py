"""Long run of the readers' mutation fuzzer (``tests/fuzzkit.py``); prints JSON per format.

    PYTHONPATH=src taskset -c 1 python benchmarks/fuzz_parsers.py --cases 100000 --format klarf
    PYTHONPATH=src python benchmarks/fuzz_parsers.py --cases 2000 --format all --keep findings/
    PYTHONPATH=src python benchmarks/fuzz_parsers.py --worst

``--worst`` instead reads each format's worst inputs (tiny files declaring gigabytes, and
real decompression bombs: 4.2 GB of zeros in a 4 MB ``.npz``, a 400 Mpixel PNG), each in a
fresh process under the same address-space cap: outcome, seconds, RSS before and peak.

Each case is a mutated seed read by the real reader in a worker process with an
address-space cap (``--cap-mib`` above the worker's warmed-up size) and a time limit
(``--case-seconds``). Reported per format: cases, cases/s, crashes (any exception other
than a one-line FabsightError), hangs, cases over the memory cap, the worker's peak RSS
(ru_maxrss) and every finding (case number, exception type, message, fabsight line).
A finding's input is saved under ``--keep``; `fabsight info FILE` replays it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzzkit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--format", default="all", choices=[*fuzzkit.FORMATS, "all"])
    ap.add_argument("--cases", type=int, default=10_000, help="cases per format")
    ap.add_argument("--seconds", type=float, default=float("inf"), help="stop a format after this long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cap-mib", type=int, default=512, help="address space a case may add (MiB)")
    ap.add_argument("--case-seconds", type=float, default=5.0, help="time limit of one case")
    ap.add_argument("--shared", type=Path, default=fuzzkit.SHARED, help="../shared, for real seed files")
    ap.add_argument("--keep", type=Path, default=None, help="folder for the inputs of findings")
    ap.add_argument("--worst", action="store_true", help="measure the worst inputs instead of fuzzing")
    args = ap.parse_args()
    if args.worst:
        rows = fuzzkit.measure(fuzzkit.worst_inputs(big=True), separate=True, cap_mib=args.cap_mib)
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    formats = fuzzkit.FORMATS if args.format == "all" else (args.format,)
    results = {}
    for fmt in formats:
        results[fmt] = fuzzkit.fuzz(
            fmt,
            cases=args.cases,
            seconds=args.seconds,
            seed=args.seed,
            cap_mib=args.cap_mib,
            case_seconds=args.case_seconds,
            shared=args.shared,
            keep=args.keep,
        )
        print(json.dumps(results[fmt]), file=sys.stderr, flush=True)  # progress, one line per format
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
