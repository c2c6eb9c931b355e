"""Single-byte mutations of a real LSWMD pickle, each read in a memory-capped worker; prints JSON.

    PYTHONPATH=src python benchmarks/pickle_fuzz.py [--seed ../shared/data/wm811k/LSWMD_train_01.pkl]
        [--count 3000] [--structural 0.67] [--rlimit-gib 3] [--timeout 60]

Each mutation changes one byte of the seed to another random value: ``--structural`` of
them at opcode bytes and their arguments (the pickle's structure: lengths, shapes, memo
indices), the rest anywhere (mostly inside wafer-map data). A worker process reads mutated
files one after another under an address-space limit (``RLIMIT_AS``) and reports each
outcome: ``read`` (the maps came out), ``FormatError`` (one line, naming the file) or
anything else, including an error numpy or pandas report while freeing the objects. A
worker that dies (segfault, abort, out of memory) or takes longer than ``--timeout`` is
recorded with its mutation and replaced. The reader passes when every outcome is ``read``
or ``FormatError``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickletools
import resource
import selectors
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def _worker(seed_path: Path, rlimit_gib: float) -> None:
    """Read ``offset value`` lines from stdin; answer one JSON line per mutated read."""
    limit = int(rlimit_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from fabsight.errors import FormatError
    from fabsight.io import iter_maps

    seed = seed_path.read_bytes()
    sum(1 for _ in iter_maps([seed_path]))  # imports and warms up before any read is timed
    unraisable: list[str] = []  # errors numpy/pandas hit while freeing objects: internal damage
    sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value!s:.200}")
    path = Path(tempfile.mkdtemp()) / "mutated.pkl"
    for line in sys.stdin:
        offset, value = map(int, line.split())
        data = bytearray(seed)
        data[offset] = value
        path.write_bytes(data)
        t0 = time.perf_counter()
        try:
            n = sum(1 for _ in iter_maps([path]))
            out = f"read {n}"
        except FormatError as exc:
            one_line = "\n" not in str(exc) and str(exc).startswith(f"{path}: ")
            out = "FormatError" if one_line else f"FormatError not one line naming the file: {exc!s:.200}"
        except Exception as exc:  # what the run is looking for
            out = f"{type(exc).__name__}: {exc!s:.200}"
        if unraisable:
            out = f"unraisable {unraisable[0]}"
            unraisable.clear()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"out": out, "s": time.perf_counter() - t0, "rss_mb": rss}), flush=True)


def _structural_offsets(seed: bytes) -> np.ndarray:
    """Offsets of opcode bytes and of their arguments (at most 8 bytes of each), not of payloads."""
    ops = [pos for _, _, pos in pickletools.genops(seed) if pos is not None] + [len(seed)]
    spans = [range(a, min(b, a + 9)) for a, b in itertools.pairwise(ops)]
    return np.array([i for span in spans for i in span])


def _mutations(seed: bytes, count: int, structural: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    n_struct = round(count * structural)
    offsets = np.concatenate(
        [rng.choice(_structural_offsets(seed), n_struct), rng.integers(0, len(seed), count - n_struct)]
    )
    return [(int(o), (seed[o] + int(rng.integers(1, 256))) % 256) for o in offsets]


class _Worker:
    """One worker process and the way to ask it about one mutation."""

    def __init__(self, args: argparse.Namespace) -> None:
        cmd = [sys.executable, __file__, "--worker", "--seed", str(args.seed), "--rlimit-gib", str(args.rlimit_gib)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]

    def ask(self, offset: int, value: int, timeout: float) -> dict[str, Any] | None:
        """The worker's answer, or None when it died or hung (it is then stopped)."""
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(f"{offset} {value}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        if self.sel.select(timeout) and (line := self.proc.stdout.readline()):
            return json.loads(line)
        self.proc.kill()
        self.proc.wait()
        return None

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait()


def _run(args: argparse.Namespace) -> dict[str, Any]:
    seed = args.seed.read_bytes()
    mutations = _mutations(seed, args.count, args.structural, np.random.default_rng(args.rng))
    outcomes: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    slowest, max_rss, worker_rss = 0.0, 0.0, 0.0
    growth: list[dict[str, Any]] = []  # mutations after which a worker's peak memory grew by > 50 MB
    worker = _Worker(args)
    t0 = time.perf_counter()
    for offset, value in mutations:
        answer = worker.ask(offset, value, args.timeout)
        if answer is None:
            code = worker.proc.returncode
            outcomes["worker died or hung"] += 1
            failures.append({"offset": offset, "value": value, "returncode": code})
            worker, worker_rss = _Worker(args), 0.0
            continue
        out = answer["out"]
        kind = "read" if out.startswith("read ") else "FormatError" if out == "FormatError" else "other"
        outcomes[kind] += 1
        if kind == "other":
            failures.append({"offset": offset, "value": value, "out": out})
        if worker_rss and answer["rss_mb"] > worker_rss + 50:
            growth.append({"offset": offset, "value": value, "rss_mb": answer["rss_mb"], "out": out})
        worker_rss = answer["rss_mb"]
        slowest, max_rss = max(slowest, answer["s"]), max(max_rss, answer["rss_mb"])
    worker.close()
    return {
        "seed": str(args.seed),
        "seed_bytes": len(seed),
        "mutations": len(mutations),
        "structural_share": args.structural,
        "outcomes": dict(outcomes),
        "failures": failures[:50],
        "slowest_read_s": round(slowest, 3),
        "max_worker_rss_mb": round(max_rss, 1),
        "memory_growth": growth[:20],
        "rlimit_gib": args.rlimit_gib,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=Path, default=Path("../shared/data/wm811k/LSWMD_train_01.pkl"))
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--structural", type=float, default=0.67)
    ap.add_argument("--rlimit-gib", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--rng", type=int, default=0)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.seed, args.rlimit_gib)
        return
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1] / "src"))
    print(json.dumps(_run(args), indent=2))


if __name__ == "__main__":
    main()
