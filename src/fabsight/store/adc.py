"""ADC in the store: a KLARF uploaded with its review images (a zip) → wafers, per-defect classes,
a review queue of the defects the die model was unsure of, and training folders from the decisions.

:func:`ingest_adc_archive` works like :func:`fabsight.store.ingest.ingest_bytes`: the
expensive steps (unpacking, parsing, classifying every defect, explaining the wafers) run
before the database is touched, then one write transaction stores the upload, its wafers,
the ADC lot and one row per defect, and moves the unpacked folder and the classified KLARF
into the files folder as its last step; anything failing leaves no rows and no files.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fabsight.errors import FabsightError, FormatError
from fabsight.io._common import safe_name
from fabsight.io.archive import ZipLimits, extract_zip
from fabsight.store.db import Store
from fabsight.store.ingest import (
    UploadReader,
    add_wafer,
    analyse_maps,
    lot_row,
    parse_upload,
    read_upload,
    stored_name,
)
from fabsight.store.models import OPEN_STATES, AdcDefect, AdcLot, Upload, utcnow
from fabsight.store.queries import Conflict, NotFound, clean_label
from fabsight.utils.atomic import write_bytes

#: The upload's ``format``: a KLARF with its review images.
FORMAT = "klarf+images"
#: Review states an export takes by default: what a person decided.
DECIDED: tuple[str, ...] = ("accepted", "corrected")


@dataclass
class AdcIngestResult:
    upload_id: int
    duplicate: bool
    adc_lot: int
    wafer_ids: list[int]


def _find_klarf(root: Path, files: Sequence[Path], filename: str) -> Path:
    """The one KLARF among the unpacked files (sniffed from the content, not the name)."""
    from fabsight.adc.images import IMAGE_SUFFIXES
    from fabsight.io import detect_format

    found = []
    for f in files:
        if f.suffix.lower() in IMAGE_SUFFIXES:
            continue
        try:
            if detect_format(f) == "klarf":
                found.append(f)
        except FabsightError:
            continue
    if len(found) != 1:
        names = ", ".join(str(f.relative_to(root)) for f in found[:5])
        raise FormatError(filename, f"the zip must hold exactly one KLARF beside its images, found {len(found)}"
                                    + (f" ({names})" if names else ""))
    return found[0]


def _existing(store: Store, sha: str) -> AdcIngestResult | None:
    with store.session() as s:
        up = s.scalar(select(Upload).where(Upload.sha256 == sha))
        if up is None:
            return None
        lot = s.scalar(select(AdcLot).where(AdcLot.upload_id == up.id))
        if lot is None:
            raise Conflict(None, f"these bytes were stored as upload {up.id}, which is not a KLARF with images")
        return AdcIngestResult(up.id, True, lot.id, [w.id for w in up.wafers])


def _defect_rows(result: Any, lot_root: Path, wafer_pks: dict[str, int]) -> list[AdcDefect]:
    rows = []
    for r in result.rows:
        has_image = r.reason != "no_image"
        state = "no_image" if not has_image else ("pending" if r.needs_review else "auto")
        rows.append(AdcDefect(
            wafer_pk=wafer_pks.get(str(r.wafer)), wafer_id=str(r.wafer)[:100], defect_id=int(r.defect_id),
            original_class=r.original_class, predicted=r.class_name, confidence=r.confidence, reason=r.reason[:100],
            image=Path(r.images[0]).relative_to(lot_root).as_posix() if r.images else None,
            page=r.pages[0] if r.pages else 1, n_images=len(r.images), state=state,
            label=r.class_name if state == "auto" else None,
            priority=0.0 if r.confidence is None else 1.0 - float(r.confidence)))
    return rows


def ingest_adc_archive(
    store: Store,
    data: bytes,
    filename: str,
    *,
    files_dir: str | Path,
    die_model: Any,
    model_name: str,
    classifier: Any = None,
    wafer_model_name: str | None = None,
    kb: Any = None,
    review_code: int = 0,
    zip_limits: ZipLimits | None = None,
    read: UploadReader = read_upload,
) -> AdcIngestResult:
    """Store a zip holding one KLARF and its review images: the KLARF's wafers (classified by the
    wafer ``classifier`` when given, as any upload), every defect classified by ``die_model``
    (:func:`fabsight.adc.classify_klarf`; image references may lead anywhere inside the zip and
    nowhere else) and the classified KLARF; all of it or, on any error, nothing."""
    from fabsight.adc import classify_klarf, write_classified

    sha = hashlib.sha256(data).hexdigest()
    found = _existing(store, sha)
    if found is not None:
        return found
    files = Path(files_dir)
    files.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=files, prefix=".adc-") as scratch:
        archive, root = Path(scratch) / "upload.zip", Path(scratch) / "lot"
        archive.write_bytes(data)
        root.mkdir()
        try:
            klarf = _find_klarf(root, extract_zip(archive, root, zip_limits), filename)
            result = classify_klarf(klarf, die_model, images=[root], review_code=review_code, progress=False)
        except FabsightError as exc:
            raise type(exc)(filename, exc.message.replace(str(root), "ZIP")) from None
        (Path(scratch) / "parse").mkdir()
        _, maps = parse_upload(klarf.read_bytes(), klarf.name, Path(scratch) / "parse", ("klarf",), read)
        analysed = analyse_maps(maps, classifier, kb)
        target = files / stored_name(sha, filename)
        folder = target.with_suffix("")
        classified = folder.with_name(f"{folder.name}-classified{klarf.suffix.lower()[:10]}")
        write_classified(result, Path(scratch) / "classified")
        try:
            return _store(store, data, filename, sha, target, folder, classified, Path(scratch), klarf, result,
                          analysed, (model_name, wafer_model_name))
        except IntegrityError:
            found = _existing(store, sha)
            if found is None:
                raise
            return found


def _store(store: Store, data: bytes, filename: str, sha: str, target: Path, folder: Path, classified: Path,
           scratch: Path, klarf: Path, result: Any, analysed: list[Any],
           models: tuple[str, str | None]) -> AdcIngestResult:
    """The write transaction of :func:`ingest_adc_archive`; files are moved in as its last step."""
    try:
        with store.write() as s:
            upload = Upload(filename=filename[:300], sha256=sha, size=len(data), content_type="application/zip",
                            format=FORMAT, status="classified", path=target.name, model=models[0][:200],
                            created_at=utcnow())
            s.add(upload)
            lot_name = os.path.splitext(klarf.name)[0]
            lots = {n: lot_row(s, n) for n in {a.wmap.lot_id or lot_name for a in analysed}}
            wafers = [add_wafer(s, upload, a, lots[a.wmap.lot_id or lot_name], models[1]) for a in analysed]
            s.flush()
            lot = AdcLot(upload=upload, folder=folder.name, klarf=klarf.relative_to(scratch / "lot").as_posix(),
                         classified=classified.name, model=models[0][:200], class_numbers=result.class_numbers,
                         review_code=result.review_code, created_at=utcnow())
            lot.defects = _defect_rows(result, scratch / "lot", {w.wafer_id: w.id for w in wafers})
            s.add(lot)
            s.flush()
            write_bytes(target, data)
            os.replace(scratch / "classified", classified)
            os.replace(scratch / "lot", folder)
            return AdcIngestResult(upload.id, False, lot.id, [w.id for w in wafers])
    except BaseException:
        for p in (target, classified):
            p.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        raise


def get_adc_lot(session: Session, upload_id: int) -> AdcLot:
    """The ADC lot of an upload, or NotFound."""
    lot = session.scalar(select(AdcLot).where(AdcLot.upload_id == upload_id))
    if lot is None:
        raise NotFound(None, f"upload {upload_id} has no ADC results")
    return lot


def adc_queue(session: Session, *, state: str = "pending", upload: int | None = None,
              limit: int = 200) -> list[AdcDefect]:
    """Defects in ``state``, the ones the model was least sure of first."""
    q = select(AdcDefect).where(AdcDefect.state == state)
    if upload is not None:
        q = q.where(AdcDefect.adc_lot_pk == get_adc_lot(session, upload).id)
    return list(session.scalars(q.order_by(AdcDefect.priority.desc(), AdcDefect.id).limit(limit)))


def decide_defect(store: Store, defect_pk: int, *, label: str | None = None, reviewer: str | None = None) -> AdcDefect:
    """Accept the model's class (``label=None``) or correct it, as :func:`fabsight.store.queries.decide_review`
    does for wafers: only an open item, in one conditional UPDATE (two reviewers cannot both win)."""
    with store.write() as s:
        row = s.get(AdcDefect, defect_pk)
        if row is None:
            raise NotFound(None, f"no ADC defect {defect_pk}")
        if label is None:
            if not row.predicted:
                raise Conflict(None, f"ADC defect {defect_pk} has no model class to accept; correct it with a label")
            label, state = row.predicted, "accepted"
        else:
            label = clean_label(label)
            state = "accepted" if label == row.predicted else "corrected"
        done = s.execute(update(AdcDefect).where(AdcDefect.id == defect_pk, AdcDefect.state.in_(OPEN_STATES))
                         .values(state=state, label=label, reviewer=(reviewer or "")[:100] or None,
                                 decided_at=utcnow()))
        if done.rowcount != 1:
            raise Conflict(None, f"ADC defect {defect_pk} is already decided ({row.state})")
    with store.session() as s:
        decided = s.get(AdcDefect, defect_pk)
        assert decided is not None
        return decided


def defect_image(files_dir: Path, lot: AdcLot, row: AdcDefect) -> tuple[Path, int]:
    """Where a stored defect's first review image is (and its TIFF page), or NotFound."""
    if row.image is None:
        raise NotFound(None, f"ADC defect {row.id} has no image")
    path = files_dir / lot.folder / row.image
    if not path.is_file():
        raise NotFound(None, f"the image of ADC defect {row.id} is no longer in the files folder")
    return path, row.page


def export_training(store: Store, files_dir: str | Path, out: io.BufferedIOBase | Any, *,
                    states: Sequence[str] = DECIDED, upload: int | None = None) -> dict[str, int]:
    """Write a zip of ``CLASS/LOT_WAFER_DEFECT.png`` (the layout ``fabsight die train`` reads) of the
    defects in ``states`` with their label in force, to the binary stream ``out``; images per class."""
    import cv2

    from fabsight.adc.images import ImageReader

    reader, used = ImageReader(), Counter[str]()
    with store.session() as s:
        q = select(AdcDefect).where(AdcDefect.state.in_(list(states)), AdcDefect.label.is_not(None),
                                    AdcDefect.image.is_not(None))
        if upload is not None:
            q = q.where(AdcDefect.adc_lot_pk == get_adc_lot(s, upload).id)
        rows = list(s.scalars(q.order_by(AdcDefect.id)))
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for row in rows:
                path, page = defect_image(Path(files_dir), row.adc_lot, row)
                image = reader.read(path, page)
                ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)
                if not ok:
                    raise FormatError(path, "cannot be written as PNG")
                zf.writestr(f"{row.label}/{row.adc_lot.upload_id}_{safe_name(row.wafer_id, 'wafer')}_"
                            f"{row.defect_id}.png", png.tobytes())
                used[str(row.label)] += 1
    return dict(sorted(used.items()))
