"""The main job on an embedded default: ``fabsight demo`` (what ``make demo`` runs).

It starts from nothing: it reads the example lots shipped with the package (KLARF, STDF and
G85 files written by fabsight's own writers), or the files a user names; classifies every
wafer with a wafer-pattern model (``fabsight demo``: the shipped WM-811K model unless another
is named, see :mod:`fabsight.wafer.pretrained`); explains each wafer; stores everything in a
SQLite results store through the same upload pipeline as the REST service; and writes a
self-contained HTML report plus a JSON summary. ``fabsight demo --serve`` then serves the
dashboard over that store. Each step is an ordinary library call, so the demo doubles as an
end-to-end example of the API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fabsight.errors import FabsightError
from fabsight.io import ReadLog
from fabsight.types import WaferMap
from fabsight.utils.atomic import atomic_dir, write_json
from fabsight.utils.progress import track

#: Where the example lots live inside the installed package.
EXAMPLES = "examples/demo_lot"
#: The results store and its files folder inside the demo's output folder.
STORE_NAME = "store.sqlite"
FILES_NAME = "store-files"


def example_files() -> list[Path]:
    """The example lot files shipped with fabsight (KLARF, STDF, G85), sorted by name."""
    root = Path(str(resources.files("fabsight").joinpath(EXAMPLES)))
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FabsightError(root, "the packaged example lot is missing (broken install?)")
    return files


@dataclass
class WaferRow:
    """One wafer's line in the report."""

    wmap: WaferMap
    picture: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": Path(self.wmap.source).name, "format": self.wmap.format, **self.wmap.summary(), **self.facts}


def _png_data_url(wmap: WaferMap) -> str:
    """A small inline PNG so the report is one file that opens anywhere."""
    from fabsight.report.render import map_to_rgb
    from fabsight.report.thumbs import png_uri

    return png_uri(map_to_rgb(wmap.grid, 120))


def _input_files(paths: Sequence[Path], log: ReadLog) -> list[Path]:
    """The files to upload: each file as given, each folder's non-hidden files (recursively);
    a missing one goes to ``log``."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not any(x.startswith(".") for x in f.parts))
        elif p.is_file():
            out.append(p)
        else:
            log.record(FabsightError(p, "no such file or folder"))
    if not out:
        raise log.nothing_read(paths[0] if paths else None, "no files to read")
    return out


def _fill_store(store_path: Path, files: Sequence[Path], models_dir: Path | None, log: ReadLog) -> list[WaferRow]:
    """Upload every file into a new store (the REST pipeline) and read the wafers back as report rows;
    a file the pipeline refuses (it stores all of a file or nothing) goes to ``log``."""
    from fabsight.serve.state import load_service
    from fabsight.store.ingest import ingest_bytes
    from fabsight.store.queries import WaferFilter, list_wafers, to_wafer_map

    svc = load_service(store_path, models_dir, files_dir=store_path.with_name(FILES_NAME))
    try:
        for f in track(files, "classifying and storing"):
            try:
                ingest_bytes(svc.store, _file_bytes(f), f.name, files_dir=svc.files_dir, classifier=svc.classifier,
                             model_name=svc.model_name, kb=svc.kb)
            except FabsightError as exc:  # the pipeline names the upload, not where it lies: name the file
                log.record(FabsightError(f, exc.message) if exc.path != str(f) else exc)
            else:
                log.files_read += 1
        with svc.store.session() as s:
            rows = []
            for w in list_wafers(s, WaferFilter(), limit=None, newest_first=False):
                wmap = to_wafer_map(w)
                wmap.source = w.source
                p = w.prediction
                facts: dict[str, Any] = {
                    "pattern": None if p is None else p.label,
                    "probability": None if p is None else round(p.probability, 4),
                    "review": w.review.state if w.review else None,
                    "explanation": w.explanation.text if w.explanation else "",
                }
                rows.append(WaferRow(wmap, facts=facts))
    finally:
        svc.store.close()
    if not rows:
        raise log.nothing_read(files[0], "no wafer maps in the given files")
    return rows


def _file_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:  # no permission, an I/O error: this file cannot be read, others may
        raise FabsightError(path, f"cannot be read ({exc.strerror or exc})") from None


def _pattern_counts(rows: list[WaferRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        key = r.facts.get("pattern") or "unclassified"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _lots(rows: list[WaferRow]) -> list[dict[str, Any]]:
    by_lot: dict[tuple[str, str], list[WaferRow]] = {}
    for r in rows:
        by_lot.setdefault((r.wmap.lot_id or "?", r.wmap.format), []).append(r)
    out = []
    for (lot, fmt), members in by_lot.items():
        good = sum(r.wmap.n_good for r in members)
        dies = sum(r.wmap.n_dies for r in members)
        out.append({"lot": lot, "format": fmt, "wafers": len(members), "yield": good / dies if dies else None})
    return out


def run_demo(
    out_dir: str | Path, files: Sequence[str | Path] | None = None, *, models_dir: str | Path | None = None,
    log: ReadLog | None = None,
) -> dict[str, Any]:
    """Classify, explain, store, render and report; returns the summary also written to ``OUT/summary.json``.

    ``models_dir`` holds the wafer-pattern model (without one the wafers are stored and
    explained but not classified). The whole output folder, store included, is built aside and
    swapped in at the end, so a failed run leaves the previous one intact. With a lenient
    ``log`` a missing input or a file the upload pipeline refuses is recorded there (and in the
    summary's ``errors``) and the other files go on; without one the first stops the demo.
    """
    import jinja2

    from fabsight.report.render import render_png

    log = log if log is not None else ReadLog(strict=True)
    paths = [Path(f) for f in files] if files else example_files()
    inputs = _input_files(paths, log)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        rows = _fill_store(tmp / STORE_NAME, inputs, None if models_dir is None else Path(models_dir), log)
        for r in track(rows, "rendering"):
            r.picture = _png_data_url(r.wmap)
        summary = {
            "inputs": [str(p) for p in inputs],
            "model": None if models_dir is None else str(models_dir),
            "wafers": len(rows),
            "lots": _lots(rows),
            "patterns": _pattern_counts(rows),
            "results": [r.to_dict() for r in rows],
            "errors": log.to_json(),
        }
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("fabsight.report", "templates"), autoescape=jinja2.select_autoescape()
        )
        html = env.get_template("demo.html").render(summary=summary, rows=rows)
        render_png([r.wmap for r in rows], tmp / "wafers.png")
        (tmp / "report.html").write_text(html, encoding="utf-8")
        write_json(tmp / "summary.json", summary)
    summary["report"] = str(out_dir / "report.html")
    summary["store"] = str(out_dir / STORE_NAME)
    return summary
