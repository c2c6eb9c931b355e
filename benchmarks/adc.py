"""ADC end to end: KLARFs whose image lists point at real review images with known classes.

There is no public KLARF with review images, so this builds them: held-out DeepPCB defect
crops (6 classes) become KLARF 1.8 lots (``ImageList`` with relative PNG paths) and held-out
magnetic-tile images (6 classes, JPEG) KLARF 1.2 lots (``TiffFileName`` + ``IMAGELIST``
pages in a multi-page TIFF per wafer, so that path is timed too), with the true classes
as manual class numbers and a class lookup. A die model is fine-tuned (EfficientNet-Lite0,
64 px) on the training part of each set and exported to ONNX. Reported per set:

* ``die eval`` on a folder of the same test images with the same model (ONNX Runtime);
* ADC per-defect accuracy / macro-F1 on the lots (``fabsight die eval`` on KLARFs), which
  must equal the folder's (one image per defect);
* review rate, and defects per second end to end (read KLARF, load images, classify,
  write the classified KLARF) in ONNX Runtime at 1 and 2 threads, model load excluded.

Prints JSON (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import cv2


def _split(classes: dict[str, list[Path]], train_share: float, seed: int) -> tuple[dict[str, list[Path]], ...]:
    rng = random.Random(seed)
    train, test = {}, {}
    for c, paths in classes.items():
        paths = sorted(paths)
        rng.shuffle(paths)
        k = max(1, int(len(paths) * train_share))
        train[c], test[c] = paths[:k], paths[k:]
    return train, test


def _cap(split: dict[str, list[Path]], cap: int, seed: int) -> dict[str, list[Path]]:
    rng = random.Random(seed)
    return {c: rng.sample(sorted(p), min(cap, len(p))) for c, p in split.items()}


def _folder(split: dict[str, list[Path]], root: Path) -> Path:
    for c, paths in split.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for p in paths:
            dst = root / c / p.name
            if not dst.exists():
                dst.symlink_to(p.resolve())
    return root


def _lots(test: dict[str, list[Path]], size: int, seed: int) -> list[list[tuple[str, Path]]]:
    items = [(c, p) for c, paths in test.items() for p in paths]
    random.Random(seed).shuffle(items)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _klarf18(path: Path, lot: list[tuple[str, Path]], numbers: dict[str, int]) -> None:
    """Two wafers per lot; images copied beside the KLARF under img/ (relative references)."""
    (path.parent / "img").mkdir(parents=True, exist_ok=True)
    half = (len(lot) + 1) // 2
    wafers = []
    for w, part in enumerate((lot[:half], lot[half:])):
        rows = []
        for i, (c, p) in enumerate(part):
            shutil.copy(p, path.parent / "img" / f"w{w}_{i}{p.suffix}")
            rows.append(f'        {i + 1} 1000 2000 {i % 9} {i // 9} 10 10 100 10 {numbers[c]} 1 '
                        f'Images 1 {{ "img/w{w}_{i}{p.suffix}" "PNG" 1 "Patch" }};')
        wafers.append(f'    Record WaferRecord "W{w + 1:02d}"\n    {{\n      Field SampleCenterLocation 2 {{0, 0}}\n'
                      '      List DefectList\n      {\n        Columns 12 { int32 DEFECTID, int32 XREL, int32 YREL, '
                      'int32 XINDEX, int32 YINDEX, int32 XSIZE, int32 YSIZE, float DEFECTAREA, int32 DSIZE, '
                      'int32 CLASSNUMBER, int32 TEST, ImageList IMAGEINFO }\n'
                      f'        Data {len(rows)}\n        {{\n' + "\n".join(rows) + "\n        }\n      }\n    }\n")
    lookup = "".join(f'        {n} "{c}" "";\n' for c, n in numbers.items())
    path.write_text(
        f'Record FileRecord "1.8"\n{{\n  Record LotRecord "{path.stem}"\n  {{\n'
        '    Field DiePitch 2 {5000000, 5000000}\n' + "".join(wafers)
        + '    List ClassLookupList\n    {\n      Columns 3 { int32 CLASSNUMBER, string CLASSNAME, string CLASSCODE }\n'
        f'      Data {len(numbers)}\n      {{\n{lookup}      }}\n    }}\n  }}\n}}\nEndOfFile;\n', encoding="utf-8")


def _klarf12(path: Path, lot: list[tuple[str, Path]], numbers: dict[str, int]) -> None:
    """One wafer per lot; its images as the pages of one multi-page TIFF (grey, lossless: the same pixels)."""
    pages = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for _, p in lot]
    cv2.imwritemulti(str(path.with_suffix(".tif")), pages)
    rows = [f" {i + 1} 10 10 {i % 9} {i // 9} {numbers[c]} 1 1 {i + 1} 0" for i, (c, _) in enumerate(lot)]
    lookup = "".join(f'\n {n} "{c}"' for c, n in numbers.items())
    path.write_text(
        f'FileVersion 1 2;\nLotID "{path.stem}";\nDiePitch 5000 5000;\nWaferID "W01";\nSampleCenterLocation 0 0;\n'
        f"ClassLookup {len(numbers)}{lookup};\n"
        "DefectRecordSpec 8 DEFECTID XREL YREL XINDEX YINDEX CLASSNUMBER IMAGECOUNT IMAGELIST;\n"
        f"TiffFileName {path.with_suffix('.tif').name};\nDefectList\n" + "\n".join(rows) + ";\nEndOfFile;\n",
        encoding="utf-8")


def _train(train_dir: Path, model_dir: Path, args: argparse.Namespace) -> float:
    from fabsight.deploy.export import export_onnx
    from fabsight.die.model import train

    t0 = time.perf_counter()
    if not (model_dir / "card.json").is_file():
        train(train_dir, model_dir, backbone="efficientnet_lite0", method="finetune", input_size=args.input_size,
              epochs=args.epochs, max_minutes=args.max_minutes, device="cpu")
        export_onnx(model_dir, int8=False, opset=18, sample=None, n_threads=args.threads)
    return time.perf_counter() - t0


def _speed(lots: list[Path], model_dir: Path, threads: int) -> dict[str, Any]:
    from fabsight.adc import classify_klarf, load_die_model, write_classified

    model = load_die_model(model_dir, "onnx", n_threads=threads)
    classify_klarf(lots[0], model)  # warm-up: graph initialisation, file cache
    defects = review = 0
    t0 = time.perf_counter()
    for k in lots:
        result = classify_klarf(k, model)
        write_classified(result, k.with_name(k.stem + ".classified" + k.suffix))
        defects += len(result.rows)
        review += sum(r.needs_review for r in result.rows)
    seconds = time.perf_counter() - t0
    return {"threads": threads, "defects": defects, "seconds": round(seconds, 2),
            "defects_per_s": round(defects / seconds, 1), "review_rate": round(review / defects, 4)}


def run_set(name: str, train: dict[str, list[Path]], test: dict[str, list[Path]], args: argparse.Namespace, *,
            klarf_version: str) -> dict[str, Any]:
    from fabsight.adc.history import evaluate_klarfs
    from fabsight.die.model import DieModel

    work = args.workdir / name
    classes = train
    train_dir, test_dir = _folder(train, work / "train"), _folder(test, work / "test")
    train_seconds = _train(train_dir, work / "model", args)
    model = DieModel(work / "model", runtime="onnx", n_threads=2)
    folder = model.evaluate(test_dir)
    numbers = {c: i + 1 for i, c in enumerate(sorted(classes))}
    lots = []
    for i, lot in enumerate(_lots(test, args.lot_size, seed=1)):
        k = work / "lots" / f"lot{i:02d}" / (f"LOT{i:02d}.klarf" if klarf_version == "1.8" else f"LOT{i:02d}.000")
        k.parent.mkdir(parents=True, exist_ok=True)
        (_klarf18 if klarf_version == "1.8" else _klarf12)(k, lot, numbers)
        lots.append(k)
    adc = evaluate_klarfs(model, lots)
    speed = [_speed(lots, work / "model", t) for t in (1, 2)]
    return {
        "set": name, "klarf": klarf_version, "train_images": sum(map(len, train.values())),
        "test_defects": sum(map(len, test.values())), "lots": len(lots), "train_and_export_s": round(train_seconds, 1),
        "die_eval_folder": {k: folder[k] for k in ("n", "accuracy", "macro_f1", "needs_review_rate")},
        "adc_per_defect": {k: adc[k] for k in ("n", "accuracy", "macro_f1", "needs_review_rate")},
        "equal": adc["accuracy"] == folder["accuracy"] and adc["macro_f1"] == folder["macro_f1"],
        "speed": speed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--max-minutes", type=float, default=5.0)
    ap.add_argument("--lot-size", type=int, default=200)
    ap.add_argument("--train-per-class", type=int, default=150, help="training images per class (a seeded sample)")
    ap.add_argument("--test-per-class", type=int, default=200, help="test images (defects) per class")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training and export")
    ap.add_argument("--sets", default="deeppcb,magnetic_tile")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from fabsight.die.datasets import prepare_deeppcb_crops

    results = []
    sets = args.sets.split(",")
    if "deeppcb" in sets:
        crops = args.workdir / "deeppcb_crops"
        if not crops.is_dir():
            prepare_deeppcb_crops(args.shared / "deeppcb", crops)
        split = {s: {d.name: sorted(d.iterdir()) for d in sorted((crops / s).iterdir())} for s in ("train", "test")}
        results.append(run_set("deeppcb", _cap(split["train"], args.train_per_class, 0),
                               _cap(split["test"], args.test_per_class, 0), args, klarf_version="1.8"))
    if "magnetic_tile" in sets:
        root = args.shared / "magnetic_tile"
        mt = {d.name[3:]: sorted((d / "Imgs").glob("*.jpg")) for d in sorted(root.glob("MT_*"))}
        train, test = _split(mt, 0.6, seed=0)
        results.append(run_set("magnetic_tile", _cap(train, args.train_per_class, 0),
                               _cap(test, args.test_per_class, 0), args, klarf_version="1.2"))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
