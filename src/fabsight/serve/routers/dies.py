"""``/api/die-images`` and ``/api/die-results``: die images scored by the anomaly model, their heat-maps.

An uploaded image is scored with the anomaly model of the models folder (:mod:`fabsight.anomaly`)
and stored with its heat-map and the boxes of its anomalous regions, in one transaction
(:func:`fabsight.store.ingest.ingest_die_image`). Results made elsewhere (golden-template
inspection, die classification) are attached with ``POST /api/uploads/{id}/die-results``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status
from fastapi.responses import FileResponse
from sqlalchemy import select

from fabsight.errors import ModelError
from fabsight.serve.deps import ServiceDep, SessionDep
from fabsight.serve.routers.uploads import clean_filename, read_limited
from fabsight.serve.schemas import DieImageOut, DieResultOut
from fabsight.store.ingest import ingest_die_image
from fabsight.store.models import DieResult
from fabsight.store.queries import NotFound

router = APIRouter(tags=["die images"])

IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "application/octet-stream", "")


@router.post("/api/die-images", status_code=status.HTTP_201_CREATED,
             responses={400: {"description": "no anomaly model loaded"}, 422: {"description": "not an image"}})
def upload_die_image(
    response: Response,
    svc: ServiceDep,
    session: SessionDep,
    file: Annotated[UploadFile, File(description="a die / inspection image (PNG, JPEG, BMP, TIFF)")],
    wafer: Annotated[int | None, Form(description="store id of the wafer the die belongs to")] = None,
) -> DieImageOut:
    """Score one die image: label (good / anomalous), score, boxes of anomalous regions, heat-map."""
    if svc.anomaly_model is None:
        raise ModelError(None, "no anomaly model loaded: put one (fabsight anomaly fit) in the --models folder")
    declared = (file.content_type or "").split(";")[0].strip().lower()
    if declared not in IMAGE_TYPES:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"content type {declared!r} is not an image")
    data = read_limited(file, svc.max_upload_bytes)
    result = ingest_die_image(
        svc.store,
        data,
        clean_filename(file.filename, "image"),
        files_dir=svc.files_dir,
        anomaly_model=svc.anomaly_model,
        wafer=wafer,
        content_type=declared or "application/octet-stream",
        read=svc.image_reader(),
    )
    if result.duplicate:
        response.status_code = status.HTTP_200_OK
    rows = session.scalars(select(DieResult).where(DieResult.id.in_(result.result_ids))).all()
    return DieImageOut(upload=result.upload_id, duplicate=result.duplicate,
                       results=[DieResultOut.model_validate(r) for r in rows])


def _file(svc: ServiceDep, session: SessionDep, result_id: int, which: str) -> FileResponse:
    row = session.get(DieResult, result_id)
    if row is None:
        raise NotFound(None, f"no die result {result_id}")
    name = row.heatmap_path if which == "heatmap" else row.upload.path
    path = svc.files_dir / Path(name or "").name
    if not name or not path.is_file():
        raise NotFound(None, f"die result {result_id} has no stored {which}")
    return FileResponse(path)


@router.get("/api/die-results/{result_id}/heatmap.png", response_class=FileResponse)
def heatmap(result_id: int, svc: ServiceDep, session: SessionDep) -> FileResponse:
    """The anomaly heat-map blended over the image (the threshold is the middle of the colour scale)."""
    return _file(svc, session, result_id, "heatmap")


@router.get("/api/die-results/{result_id}/image", response_class=FileResponse)
def image(result_id: int, svc: ServiceDep, session: SessionDep) -> FileResponse:
    """The die image as uploaded."""
    return _file(svc, session, result_id, "image")
