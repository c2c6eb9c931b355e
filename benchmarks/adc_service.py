"""ADC report and service timings on one lot: ``--report``, a zip upload classified by the service,
its dashboard page, review decisions and the training-folder export.

Input: a folder holding one KLARF and the review images it names (e.g. a lot that
``benchmarks/adc.py`` builds from held-out DeepPCB crops) and a die model. Times, after one
warm-up of each step on a throw-away store: classifying the lot and writing the classified
KLARF (what ``fabsight adc`` does), writing the HTML report, ``POST /api/adc/uploads`` of the
zipped lot (unzip, read, classify, store), ``GET /adc/{upload}``, one accept per open defect,
and ``GET /api/adc/export.zip``. Prints JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any


def _zip(lot: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(lot.rglob("*")):
            if f.is_file() and ".classified." not in f.name:
                zf.write(f, f.relative_to(lot).as_posix())
    return buf.getvalue()


def _timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _service(models: Path, data: bytes, work: Path) -> dict[str, float]:
    from fastapi.testclient import TestClient

    from fabsight.serve import create_app
    from fabsight.serve.state import Policy

    app = create_app(work / "s.sqlite", models, files_dir=work / "files", runtime="onnx", policy=Policy(token="t" * 32))
    with TestClient(app, headers={"Authorization": "Bearer " + "t" * 32}) as c:
        r, upload_s = _timed(lambda: c.post("/api/adc/uploads", files={"file": ("lot.zip", data, "application/zip")}))
        r.raise_for_status()
        upload, states = r.json()["upload"], r.json()["counts"]["lot"]["states"]
        page, page_s = _timed(lambda: c.get(f"/adc/{upload}"))
        page.raise_for_status()
        open_ids = [d["id"] for s in ("pending", "auto")
                    for d in c.get("/api/adc/defects", params={"state": s, "upload": upload, "limit": 1000}).json()]
        _, decide_s = _timed(lambda: [c.post(f"/api/adc/defects/{i}/accept", json={}).raise_for_status()
                                      for i in open_ids])
        export, export_s = _timed(lambda: c.get("/api/adc/export.zip", params={"upload": upload}))
        export.raise_for_status()
    return {"states": states, "upload_s": upload_s, "page_s": page_s, "page_bytes": len(page.content),
            "decisions": len(open_ids),
            "decide_ms_each": 1000 * decide_s / max(1, len(open_ids)), "export_s": export_s,
            "export_bytes": len(export.content)}


def _library(klarf: Path, die: Any, work: Path) -> dict[str, Any]:
    """``fabsight adc`` (classify, write the KLARF) and ``--report``, timed apart."""
    from fabsight.adc import classify_klarf, write_classified
    from fabsight.adc.report import write_report

    work.mkdir(parents=True, exist_ok=True)
    result, adc_s = _timed(lambda: classify_klarf(klarf, die, progress=False))
    _, write_s = _timed(lambda: write_classified(result, work / "out.klarf"))
    _, report_s = _timed(lambda: write_report(result, work / "out.klarf", work / "out.html"))
    return {"defects": len(result.rows), "wafers": len(result.counts()["wafers"]), "adc_s": adc_s + write_s,
            "report_s": report_s, "report_bytes": (work / "out.html").stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lot", type=Path, required=True, help="folder: one KLARF and its review images")
    ap.add_argument("--model", type=Path, required=True, help="die model directory (with network.onnx)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    from fabsight.adc import load_die_model

    work = Path(args.workdir or tempfile.mkdtemp(prefix="adc-service-"))
    klarf = next(f for f in sorted(args.lot.glob("*.klarf")) if ".classified." not in f.name)
    die = load_die_model(args.model, "onnx", n_threads=2)  # what the service loads (its default)
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    if not (models / "die").exists():
        shutil.copytree(args.model, models / "die")
    data = _zip(args.lot)
    timings: dict[str, Any] = {}
    for run in ("warmup", "timed"):
        timings = {**_library(klarf, die, work / run), "zip_bytes": len(data),
                   **_service(models, data, work / run)}
    print(json.dumps({"lot": str(klarf), "model": str(args.model), "runtime": "onnx", **timings}, indent=1))


if __name__ == "__main__":
    main()
