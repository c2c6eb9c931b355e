"""Health checks for wafer-map training data from any source :mod:`fabsight.io` reads.

- maps that do not read, and maps with impossible values (outside 0/1/2): the readers
  refuse those, here each is reported and the rest of the data is still checked;
- maps with no on-wafer die at all (off-wafer only: an empty or mis-parsed map);
- maps with no failing die that are labelled with a defect class (a label error, or a
  map whose failing dies were lost on export);
- identical maps (same grid), label conflicts and train/test leakage among them;
- the grid-size histogram (a stray 26×26 map among 52×52 ones needs resizing or removal)
  and the class balance with suggested sampling weights.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.curate.dedup import equal_key_groups
from fabsight.curate.scan import scan, split_rank
from fabsight.curate.stats import balance
from fabsight.errors import FabsightError, FormatError
from fabsight.io.folder import MAP_SUFFIXES, read_npy, read_png
from fabsight.types import DieState, WaferMap
from fabsight.utils.progress import track

#: Labels that mean "no defect pattern": a map without failing dies may carry these.
NO_DEFECT_LABELS = frozenset({"none", "good", "ok", "pass", "normal", "clean", "unlabeled", "free"})
DROP_CHECKS = frozenset({"unreadable", "impossible_values", "no_dies", "empty_labelled", "duplicate",
                         "label_conflict", "leakage"})
KEEP_RULE = ("in each group of identical maps the kept one is in the earliest split (train before test), "
             "then the first read; a group whose copies carry different labels keeps none (label conflict)")


def _is_map_folder(path: Path) -> bool:
    """A folder of ``.npy``/``.png`` map files (``ROOT[/SPLIT]/CLASS/*``), read file by file here."""
    if not path.is_dir():
        return False
    try:
        return bool(scan([path], MAP_SUFFIXES))
    except FabsightError:
        return False


def _bad_values(path: Path) -> str:
    """Which impossible values a ``.npy`` holds, for the report (the reader only says "not 0/1/2")."""
    try:
        arr = np.load(path, allow_pickle=False)
        vals = np.unique(arr[~np.isin(arr, (0, 1, 2))]) if isinstance(arr, np.ndarray) else np.zeros(0)
    except (ValueError, OSError, EOFError, TypeError):
        return ""
    shown = ", ".join(str(v) for v in vals[:8].tolist()) + (" …" if vals.size > 8 else "")
    return f" (found {shown})" if shown else ""


def _folder_rows(root: Path, split_name: str | None) -> Iterator[tuple[dict[str, Any], WaferMap | None]]:
    for e in scan([root], MAP_SUFFIXES):
        split = e.split if e.split else split_name
        row = {"path": str(e.path), "rel": str(Path(split_name) / e.rel if split_name else e.rel), "split": split,
               "label": e.label, "flags": []}
        try:
            wmap = (read_png if e.path.suffix.lower() == ".png" else read_npy)(e.path, e.label)
        except FormatError as exc:
            impossible = "other than 0/1/2" in exc.message
            detail = exc.message + (_bad_values(e.path) if impossible and e.path.suffix.lower() == ".npy" else "")
            row["flags"].append({"check": "impossible_values" if impossible else "unreadable", "detail": detail})
            yield row, None
            continue
        yield row, wmap


def _source_rows(path: Path) -> Iterator[tuple[dict[str, Any], WaferMap | None]]:
    from fabsight.io import iter_maps

    n = 0
    try:
        for n, wmap in enumerate(iter_maps([path]), 1):
            split = wmap.extras.get("split")
            yield ({"path": str(path), "index": n - 1, "split": str(split).lower() if split else None,
                    "label": "+".join(wmap.labels) if wmap.labels else None, "flags": [],
                    "id": f"{wmap.lot_id}#{wmap.wafer_id}"}, wmap)
    except FormatError as exc:
        check = "impossible_values" if "other than 0/1/2" in exc.message else "unreadable"
        yield {"path": str(path), "index": n, "split": None, "label": None,
               "flags": [{"check": check, "detail": f"{exc.message} (reading stopped after {n} maps)"}]}, None


def _grid_key(grid: np.ndarray) -> str:
    g = np.ascontiguousarray(grid, dtype=np.uint8)
    return hashlib.sha256(str(g.shape).encode() + g.tobytes()).hexdigest()


def curate_maps(data: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Run the wafer-map checks over files, folders and globs → manifest dict."""
    rows: list[dict[str, Any]] = []
    keys: list[str | None] = []
    paths = [Path(d) for d in data]
    if not paths:
        raise FabsightError(None, "no DATA given")
    names = [p.resolve().name for p in paths]
    for p, name in zip(paths, names, strict=True):
        if not p.exists():
            raise FabsightError(p, "no such file or folder")
        split = name if len(paths) > 1 and p.is_dir() else None
        source = _folder_rows(p, split) if _is_map_folder(p) else _source_rows(p)
        for row, wmap in track(source, f"checking maps in {p.name}"):
            keys.append(None if wmap is None else _check_grid(row, wmap))
            rows.append(row)
    groups = _duplicate_groups(rows, keys)
    for row in rows:
        for f in row["flags"]:
            f["drop"] = f["check"] in DROP_CHECKS
        row["keep"] = not any(f["drop"] for f in row["flags"])
        if "index" in row:
            row["path"] = _name(row)
    return {"data": [str(d) for d in data], **_manifest(rows, groups)}


def _check_grid(row: dict[str, Any], wmap: WaferMap) -> str:
    """Record a map's shape and die counts, flag maps without dies or labelled but clean → its grid key."""
    grid = np.asarray(wmap.grid)
    row["shape"] = list(grid.shape)
    on = int((grid != DieState.OFF).sum())
    fail = int((grid == DieState.FAIL).sum())
    row.update(dies=on, failing=fail)
    if on == 0:
        row["flags"].append({"check": "no_dies", "detail": "no on-wafer die (off-wafer only)"})
    elif fail == 0 and row["label"] and row["label"].lower() not in NO_DEFECT_LABELS:
        row["flags"].append({"check": "empty_labelled", "detail": f"no failing die but labelled {row['label']}"})
    return _grid_key(grid)


def _duplicate_groups(rows: list[dict[str, Any]], keys: list[str | None]) -> list[dict[str, Any]]:
    """Maps with identical grids: flag label conflicts, split leakage and copies; the keeper is the
    member from the earliest split (train before val before test), then the first read."""
    groups = []
    for members in equal_key_groups(keys):
        keep = min(members, key=lambda i: (split_rank(rows[i]["split"]), i))
        labels = sorted({str(rows[i]["label"]) for i in members})
        splits = sorted({str(rows[i]["split"]) for i in members})
        gi = len(groups)
        for i in members:
            if len(labels) > 1:
                rows[i]["flags"].append({"check": "label_conflict", "group": gi,
                                         "detail": f"the same map is labelled {', '.join(labels)}"})
            if i == keep:
                continue
            if len(splits) > 1 and rows[i]["split"] != rows[keep]["split"]:
                rows[i]["flags"].append({"check": "leakage", "group": gi,
                                         "detail": f"also in split {rows[keep]['split']}: {_name(rows[keep])}"})
            rows[i]["flags"].append({"check": "duplicate", "group": gi, "detail": f"same map as {_name(rows[keep])}"})
        groups.append({"members": [_name(rows[i]) for i in members], "keep": _name(rows[keep]), "kind": "exact_grid",
                       "label_conflict": len(labels) > 1, "leakage": len(splits) > 1, "labels": labels,
                       "splits": splits})
    return groups


def _name(row: dict[str, Any]) -> str:
    """A map's unique name: its file, or ``FILE#index`` inside a multi-map source."""
    p = row["path"]
    return p if "index" not in row or "#" in p else f"{p}#{row['index']}"


def _manifest(rows: list[dict[str, Any]], groups: list[dict[str, Any]]) -> dict[str, Any]:
    splits = sorted({r["split"] for r in rows if r["split"]}, key=split_rank)
    train = splits[0] if splits else None
    sizes = Counter("×".join(map(str, r["shape"])) for r in rows if "shape" in r)

    def counts(kept: bool) -> Counter[str]:
        return Counter(r["label"] for r in rows if r["label"] and r["split"] == train and (r["keep"] or not kept))

    return {
        "kind": "maps", "keep_rule": KEEP_RULE, "drop_checks": sorted(DROP_CHECKS),
        "summary": {"files": len(rows), "kept": sum(r["keep"] for r in rows),
                    "dropped": sum(not r["keep"] for r in rows),
                    "flagged": dict(sorted(Counter(f["check"] for r in rows for f in r["flags"]).items())),
                    "duplicate_groups": len(groups), "label_conflict_groups": sum(g["label_conflict"] for g in groups),
                    "leakage_groups": sum(g["leakage"] for g in groups), "splits": splits,
                    "grid_sizes": dict(sizes.most_common())},
        "thresholds": {"no_defect_labels": sorted(NO_DEFECT_LABELS),
                       "duplicate": "identical grids (shape and every die state)"},
        "balance": {"split": train, "before": balance(counts(False)) if counts(False) else None,
                    "after": balance(counts(True)) if counts(True) else None},
        "groups": groups,
        "files": rows,
    }


@lru_cache(maxsize=4)
def _source_maps(path: str) -> list[WaferMap]:
    from fabsight.io import read_maps

    return read_maps(path)


def load_grid(row: dict[str, Any]) -> np.ndarray | None:
    """The grid of a manifest row again (for thumbnails)."""
    if "index" in row:
        return np.asarray(_source_maps(row["path"].rsplit("#", 1)[0])[row["index"]].grid)
    p = Path(row["path"])
    return (read_png if p.suffix.lower() == ".png" else read_npy)(p).grid
