"""Helpers for the ADC tests (tests/test_adc.py, tests/test_adc_report.py, tests/serve/test_serve_adc.py):
KLARF 1.8 lots whose image lists point at real DeepPCB crops, and a small die model trained on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def train_adc_model(shared: Path, root: Path) -> tuple[Any, dict[str, list[Path]]]:
    """A small probe on DeepPCB crops (4 boards per split, 64 px) and the held-out crops by class."""
    from fabsight.die.datasets import prepare_deeppcb_crops
    from fabsight.die.model import DieModel, train

    prepare_deeppcb_crops(shared / "data" / "deeppcb", root / "crops", max_pairs=4)
    train(root / "crops" / "train", root / "model", backbone="efficientnet_lite0", input_size=64, cv_folds=0,
          cache=None)
    test = {d.name: sorted(d.iterdir()) for d in sorted((root / "crops" / "test").iterdir())}
    return DieModel(root / "model"), test


def row18(did: int, cls: int, refs: list[tuple[str, int]]) -> str:
    """A KLARF 1.8 defect row (die ``did % 3``, 1) with these ``(file, image number)`` references."""
    images = "N" if not refs else (f"Images {len(refs)} {{ "
                                   + ", ".join(f'"{f}" "PNG" {k} "Patch"' for f, k in refs) + " }")
    return f"      {did} 1000 2000 {did % 3} 1 10 10 100 10 {cls} 1 {images};"


def klarf18(path: Path, rows: list[str], lookup: bool = True) -> Path:
    """A one-wafer KLARF 1.8 lot (``LOT1``, wafer ``W01``) of ``rows``, with a class lookup naming 0 and 7."""
    lk = ('    List ClassLookupList\n    {\n      Columns 3 { int32 CLASSNUMBER, string CLASSNAME, string CLASSCODE }\n'
          '      Data 2\n      {\n        0 "Unclassified" "";\n        7 "Open" "OP";\n      }\n    }\n')
    text = ('Record FileRecord "1.8"\n{\n  Record LotRecord "LOT1"\n  {\n    Field DiePitch 2 {5000000, 5000000}\n'
            '    Record WaferRecord "W01"\n    {\n      Field SampleCenterLocation 2 {0, 0}\n'
            '      List DefectList\n      {\n        Columns 12 { int32 DEFECTID, int32 XREL, int32 YREL, '
            'int32 XINDEX, int32 YINDEX, int32 XSIZE, int32 YSIZE, float DEFECTAREA, int32 DSIZE, '
            'int32 CLASSNUMBER, int32 TEST, ImageList IMAGEINFO }\n'
            f'        Data {len(rows)}\n        {{\n' + "\n".join(rows) + '\n        }\n      }\n    }\n'
            + (lk if lookup else "") + '  }\n}\nEndOfFile;\n')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
