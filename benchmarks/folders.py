"""Every file of a folder accounted for: what it costs. Prints JSON.

    PYTHONPATH=src python benchmarks/folders.py --maps 2000 --bad 20 --parts 500

1. Reading a ``ROOT/CLASS/*.npy`` folder of ``--maps`` maps with ``iter_maps`` and a lenient
   ``ReadLog``, clean and with ``--bad`` broken files added (corrupt ``.npy``, READMEs, cut
   KLARFs): seconds, maps read, errors recorded.
2. Resuming a finished ``batch`` job of ``--parts`` parts (four one-map files each): the rerun
   checks every part's row count against its manifest lines before skipping it. Timed on the
   whole manifest and after cutting it mid-line half-way and inside its last line; the rows
   redone and the final row count (each input once) are reported, and apart the time to
   read every part's row count (what the check adds to a rerun).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

CLASSES = ("Center", "Edge-Ring", "Scratch", "none")


def _read(root: Path) -> dict[str, float | int]:
    from fabsight.io import ReadLog, iter_maps

    log = ReadLog()
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_maps([root], log))
    return {"seconds": round(time.perf_counter() - t0, 3), "maps": n, "errors": len(log.errors)}


def _folder(root: Path, n_maps: int, n_bad: int) -> dict[str, dict[str, float | int]]:
    from fabsight.io import write_folder
    from fabsight.synth import generate_dataset

    write_folder(generate_dataset(n_maps // len(CLASSES), classes=CLASSES, shapes=((52, 52),), seed=0), root)
    clean = _read(root)
    for i in range(n_bad):
        kind = i % 3
        if kind == 0:
            (root / CLASSES[i % len(CLASSES)] / f"bad{i}.npy").write_bytes(b"\x93NUMPY garbage")
        elif kind == 1:
            (root / f"README{i}.txt").write_text("notes")
        else:
            (root / f"cut{i}.000").write_text('FileVersion 1 2;\nWaferID "W1"\n')
    return {"clean": clean, "with_bad": _read(root)}


def _resume(root: Path, n_parts: int) -> dict[str, object]:
    import pandas as pd

    from fabsight.io import write_folder
    from fabsight.scale import run_batch
    from fabsight.synth import generate_dataset
    from fabsight.wafer import WaferClassifier

    model = WaferClassifier(input_size=32, epochs=1, n_threads=2).fit(
        generate_dataset(20, classes=CLASSES, shapes=((32, 32),), seed=1)).save(root / "model")
    write_folder(generate_dataset(n_parts, classes=CLASSES, shapes=((32, 32),), seed=2), root / "maps")
    out = root / "out"
    first = run_batch([root / "maps"], out, model=model, batch_size=4)
    manifest = (out / "_manifest.jsonl").read_bytes()
    result: dict[str, object] = {"parts": first["parts_written"], "rows": first["rows"],
                                 "first_run_s": first["seconds"]}
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    rows = sum(pq.read_metadata(part).num_rows for part in out.glob("part-*.parquet"))
    result["row_count_check_s"] = round(time.perf_counter() - t0, 3)
    assert rows == first["rows"]
    for name, cut in (("whole", len(manifest)), ("cut_mid_line_half_way", len(manifest) // 2),
                      ("cut_in_last_line", len(manifest) - 5)):
        work = root / name
        shutil.copytree(out, work)
        (work / "_manifest.jsonl").write_bytes(manifest[:cut])
        t0 = time.perf_counter()
        again = run_batch([root / "maps"], work, model=model, batch_size=4)
        df = pd.read_parquet(work)
        result[name] = {"rerun_s": round(time.perf_counter() - t0, 3), "rows_redone": again["rows"],
                        "rows_total": len(df), "duplicates": int(df.duplicated(["source", "index"]).sum())}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=2000)
    parser.add_argument("--bad", type=int, default=20)
    parser.add_argument("--parts", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        report = {"folder": _folder(root / "folder", args.maps, args.bad), "resume": _resume(root / "resume",
                                                                                              args.parts)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
