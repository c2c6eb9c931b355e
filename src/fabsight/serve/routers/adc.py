"""ADC in the service: upload a KLARF with its review images (a zip), browse the classes, review
the defects the die model was unsure of, export the decisions as training folders.

API (``/api/adc``): ``POST /uploads`` stores the zip's wafers and classifies every defect with the
die model of the models folder (:func:`fabsight.store.adc.ingest_adc_archive`); ``GET
/uploads/{id}`` the counts per class in force (a person's decision over the model's class);
``GET /uploads/{id}/classified`` the classified KLARF; ``GET /defects`` the queue;
``POST /defects/{id}/accept|correct`` a decision; ``GET /defects/{id}/image`` a review image;
``GET /export.zip`` the decided defects as ``CLASS/image.png`` (what ``fabsight die train``
reads). Pages: ``/adc`` (ADC lots, upload form) and ``/adc/{upload}`` (Pareto, wafer maps by
class, thumbnails, the review queue with the same keys as ``/review``).
"""

from __future__ import annotations

import io
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile, status
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from fabsight.errors import FabsightError, ModelError
from fabsight.io.archive import ZipLimits
from fabsight.serve.deps import ServiceDep, SessionDep
from fabsight.serve.routers.dashboard import templates
from fabsight.serve.routers.uploads import clean_filename, read_limited
from fabsight.serve.schemas import ReviewCorrection, ReviewDecision
from fabsight.store.adc import (
    DECIDED,
    adc_queue,
    decide_defect,
    defect_image,
    export_training,
    get_adc_lot,
    ingest_adc_archive,
)
from fabsight.store.models import AdcDefect, AdcLot

router = APIRouter(tags=["adc"], responses={404: {"description": "no such upload or defect"}})

ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream", "")
#: An archive may inflate to this many times the upload limit: PNG / JPEG review images do not
#: shrink in a zip, raw TIFF pages do (a few times); more is a zip bomb.
ZIP_INFLATE_FACTOR = 4
#: States whose class counts as known (the model's when sure, a person's once decided).
KNOWN = ("auto", *DECIDED)


class AdcDefectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    wafer_id: str
    defect_id: int
    wafer: int | None = None
    original_class: int | None
    predicted: str | None
    confidence: float | None
    reason: str
    n_images: int
    state: str
    label: str | None
    reviewer: str | None
    decided_at: datetime | None
    priority: float


class AdcLotOut(BaseModel):
    upload: int
    adc_lot: int
    duplicate: bool = False
    filename: str
    model: str
    class_numbers: dict[str, int]
    review_code: int
    wafers: list[int]
    #: Per wafer and for the lot: ``defects``, ``states`` (auto / pending / accepted / corrected /
    #: no_image) and ``classes`` (defects per class in force).
    counts: dict[str, Any]


def _counts(rows: list[AdcDefect]) -> dict[str, Any]:
    """Defects, review states and classes in force, per wafer and for the lot."""
    def empty() -> dict[str, Any]:
        return {"defects": 0, "states": Counter(), "classes": Counter()}

    lot, wafers = empty(), {}
    for r in rows:
        for c in (lot, wafers.setdefault(r.wafer_id, empty())):
            c["defects"] += 1
            c["states"][r.state] += 1
            if r.state in KNOWN and r.label:
                c["classes"][r.label] += 1
    for c in (lot, *wafers.values()):
        c["states"], c["classes"] = dict(c["states"]), dict(c["classes"].most_common())
    return {"lot": lot, "wafers": wafers}


def _lot_out(lot: AdcLot, duplicate: bool = False) -> AdcLotOut:
    return AdcLotOut(upload=lot.upload_id, adc_lot=lot.id, duplicate=duplicate, filename=lot.upload.filename,
                     model=lot.model, class_numbers=lot.class_numbers, review_code=lot.review_code,
                     wafers=[w.id for w in lot.upload.wafers], counts=_counts(lot.defects))


def _defect_out(row: AdcDefect) -> AdcDefectOut:
    return AdcDefectOut.model_validate(row).model_copy(update={"wafer": row.wafer_pk})


@router.post("/api/adc/uploads", status_code=status.HTTP_201_CREATED,
             responses={200: {"description": "the same zip was uploaded before (``duplicate`` is true)"},
                        400: {"description": "no die model loaded, or a bad image reference"},
                        413: {"description": "larger than the upload limit"},
                        422: {"description": "not a safe zip holding one readable KLARF"}})
def upload_adc(
    response: Response,
    svc: ServiceDep,
    session: SessionDep,
    file: Annotated[UploadFile, File(description="a zip: one KLARF (1.2 or 1.8) and the review images it names")],
    review_code: Annotated[int, Form(ge=0, description="class number written for defects sent to review")] = 0,
) -> AdcLotOut:
    """Store the KLARF's wafers and classify every defect from its images: all of it or nothing."""
    if svc.die_model is None:
        raise ModelError(None, "no die model loaded: put one (fabsight die train) in the --models folder")
    declared = (file.content_type or "").split(";")[0].strip().lower()
    if declared not in ZIP_TYPES:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"content type {declared!r} is not a zip")
    filename = clean_filename(file.filename, "lot.zip")
    data = read_limited(file, svc.max_upload_bytes)
    if not data:
        raise FabsightError(filename, "empty file")
    result = ingest_adc_archive(
        svc.store, data, filename, files_dir=svc.files_dir, die_model=svc.die_model,
        model_name=svc.die_model_name or "die model", classifier=svc.classifier, wafer_model_name=svc.model_name,
        kb=svc.kb, review_code=review_code, read=svc.wafer_reader(),
        zip_limits=ZipLimits(max_bytes=ZIP_INFLATE_FACTOR * svc.max_upload_bytes))
    if result.duplicate:
        response.status_code = status.HTTP_200_OK
    return _lot_out(get_adc_lot(session, result.upload_id), result.duplicate)


@router.get("/api/adc/uploads/{upload_id}")
def adc_lot(upload_id: int, session: SessionDep) -> AdcLotOut:
    """An ADC lot with its counts per class in force, per wafer and for the lot."""
    return _lot_out(get_adc_lot(session, upload_id))


@router.get("/api/adc/uploads/{upload_id}/classified", response_class=FileResponse)
def classified_klarf(upload_id: int, svc: ServiceDep, session: SessionDep) -> FileResponse:
    """The KLARF as uploaded with the model's class numbers and class lookup (``fabsight adc``'s output)."""
    lot = get_adc_lot(session, upload_id)
    return FileResponse(svc.files_dir / lot.classified, media_type="text/plain",
                        filename=f"{Path(lot.klarf).stem}-classified{Path(lot.klarf).suffix}")


@router.get("/api/adc/defects")
def queue(
    session: SessionDep,
    state: Annotated[str, Query(description="pending, auto, accepted, corrected or no_image")] = "pending",
    upload: Annotated[int | None, Query(description="only this upload's defects")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[AdcDefectOut]:
    """Defects in ``state``, those the model was least sure of first."""
    return [_defect_out(r) for r in adc_queue(session, state=state, upload=upload, limit=limit)]


@router.post("/api/adc/defects/{defect_pk}/accept", responses={409: {"description": "already decided"}})
def accept(defect_pk: int, svc: ServiceDep, body: ReviewDecision | None = None) -> AdcDefectOut:
    """The model's class is right."""
    return _defect_out(decide_defect(svc.store, defect_pk, reviewer=body.reviewer if body else None))


@router.post("/api/adc/defects/{defect_pk}/correct", responses={409: {"description": "already decided"}})
def correct(defect_pk: int, body: ReviewCorrection, svc: ServiceDep) -> AdcDefectOut:
    """The right class is ``label`` (``accepted`` if it is the model's class, else ``corrected``)."""
    return _defect_out(decide_defect(svc.store, defect_pk, label=body.label, reviewer=body.reviewer))


def _stored_defect(session: SessionDep, defect_pk: int) -> AdcDefect:
    row = session.get(AdcDefect, defect_pk)
    if row is None:
        from fabsight.store.queries import NotFound

        raise NotFound(None, f"no ADC defect {defect_pk}")
    return row


@router.get("/api/adc/defects/{defect_pk}/image", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def defect_png(defect_pk: int, svc: ServiceDep, session: SessionDep) -> Response:
    """The defect's first review image as PNG (the page of a multi-page TIFF)."""
    import cv2

    from fabsight.adc.images import ImageReader

    row = _stored_defect(session, defect_pk)
    image = ImageReader().read(*defect_image(svc.files_dir, row.adc_lot, row))
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)
    return Response(png.tobytes() if ok else b"", media_type="image/png")


@router.get("/api/adc/export.zip", response_class=Response, responses={200: {"content": {"application/zip": {}}}})
def export(
    svc: ServiceDep,
    upload: Annotated[int | None, Query(description="only this upload's defects")] = None,
    state: Annotated[list[str] | None, Query(description="states to take (default: accepted and corrected)")] = None,
) -> Response:
    """Training folders from the review decisions: a zip of ``CLASS/UPLOAD_WAFER_DEFECT.png``
    (unpack it and run ``fabsight die train FOLDER``)."""
    buf = io.BytesIO()
    export_training(svc.store, svc.files_dir, buf, states=tuple(state or DECIDED), upload=upload)
    return Response(buf.getvalue(), media_type="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="adc-training.zip"'})


# ----------------------------------------------------------------------------- pages


@router.get("/adc", include_in_schema=False, response_class=HTMLResponse)
def adc_index(request: Request, session: SessionDep, svc: ServiceDep) -> HTMLResponse:
    lots = [_lot_out(lot) for lot in session.scalars(select(AdcLot).order_by(AdcLot.id.desc()).limit(200))]
    return templates.TemplateResponse(request, "adc_index.html", {
        "lots": lots, "model": svc.die_model_name, "max_mb": svc.max_upload_bytes / 2**20})


def _pictures(svc: ServiceDep, lot: AdcLot) -> dict[str, Any]:
    """Pareto and wafer maps of the classified KLARF with the decisions laid over it."""
    from fabsight.adc.report import lot_pictures, relabel
    from fabsight.io.klarf import read_klarf

    maps = read_klarf(svc.files_dir / lot.classified)
    decided = {(r.wafer_id, r.defect_id): str(r.label) for r in lot.defects if r.state in DECIDED and r.label}
    relabel(maps, decided, lot.class_numbers)
    return lot_pictures(maps)


def _gallery(svc: ServiceDep, lot: AdcLot) -> list[dict[str, Any]]:
    """Thumbnails per class in force (those waiting for review are in the queue instead)."""
    from fabsight.adc.report import Thumb, gallery

    thumbs = [Thumb(r.wafer_id, r.defect_id, str(r.label), r.confidence, False, svc.files_dir / lot.folder / r.image,
                    r.page) for r in lot.defects if r.image is not None and r.state in KNOWN and r.label]
    return gallery(thumbs)


@router.get("/adc/{upload_id}", include_in_schema=False, response_class=HTMLResponse)
def adc_page(upload_id: int, request: Request, session: SessionDep, svc: ServiceDep,
             state: Annotated[str, Query()] = "pending") -> HTMLResponse:
    from fabsight.adc.report import thumbnail

    lot = get_adc_lot(session, upload_id)
    rows = adc_queue(session, state=state, upload=upload_id, limit=200)
    queue_rows = [(r, thumbnail(*defect_image(svc.files_dir, lot, r), size=120) if r.image else "") for r in rows]
    classes = [str(c) for c in svc.die_model.classes] if svc.die_model is not None else sorted(lot.class_numbers)
    return templates.TemplateResponse(request, "adc_lot.html", {
        "lot": _lot_out(lot), "rows": queue_rows, "state": state, "classes": classes,
        "states": ("pending", "auto", "accepted", "corrected", "no_image"), "gallery": _gallery(svc, lot),
        **_pictures(svc, lot)})
