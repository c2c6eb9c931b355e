"""``/api/uploads``: send a wafer-data file, get back the stored upload with its wafers.

The format is recognised from the content (:func:`fabsight.io.detect_format`); the declared
content type must be one a browser or HTTP client would send for such a file, and when it
names a specific kind (PNG, XML, text) the content must be that kind. The size limit is
checked on the ``Content-Length`` header and on the bytes as they arrive
(:mod:`fabsight.serve.guard`), and again while reading the file. The client's file name is
cleaned (:func:`clean_filename`), and the file is read in the capped worker process
(:mod:`fabsight.serve.worker`).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from fabsight.errors import FabsightError
from fabsight.serve.deps import ServiceDep, SessionDep, wafer_summary
from fabsight.serve.schemas import DieResultIn, UploadOut
from fabsight.store.ingest import ingest_bytes
from fabsight.store.models import Upload, Wafer
from fabsight.store.queries import add_die_results, get_upload

router = APIRouter(prefix="/api/uploads", tags=["uploads"])

#: Declared content type → formats its content may have (``None``: any wafer format).
CONTENT_TYPES: dict[str, tuple[str, ...] | None] = {
    "application/octet-stream": None,
    "": None,
    "text/plain": ("klarf",),
    "application/xml": ("g85",),
    "text/xml": ("g85",),
    "image/png": ("png",),
    "application/zip": ("mixedwm38",),
    "application/x-zip-compressed": ("mixedwm38",),
    "application/x-npz": ("mixedwm38",),
    "application/x-npy": ("npy",),
    "application/x-pickle": ("lswmd",),
    "application/x-python-pickle": ("lswmd",),
    "application/vnd.stdf": ("stdf",),
}
_CHUNK = 1 << 20
#: Longest file name kept (the lot of a file without one is named after its stem).
MAX_FILENAME = 150


def clean_filename(name: str | None, default: str) -> str:
    """A client's file name made safe to store and show: its last path component (``/`` or ``\\``),
    without control or format characters, at most :data:`MAX_FILENAME` characters (suffix kept)."""
    base = re.split(r"[/\\]", name or "")[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    if base in ("", ".", ".."):
        return default
    if len(base) > MAX_FILENAME:
        stem, dot, suffix = base.rpartition(".")
        keep = dot and 0 < len(suffix) <= 10
        base = f"{stem[: MAX_FILENAME - len(suffix) - 1]}.{suffix}" if keep else base[:MAX_FILENAME]
    return base


def _upload_out(up: Upload, duplicate: bool) -> UploadOut:
    return UploadOut(
        id=up.id,
        filename=up.filename,
        sha256=up.sha256,
        size=up.size,
        format=up.format,
        status=up.status,
        model=up.model,
        created_at=up.created_at,
        duplicate=duplicate,
        wafers=[wafer_summary(w) for w in up.wafers],
    )


def _load(session: SessionDep, upload_id: int) -> Upload:
    get_upload(session, upload_id)  # 404 when missing
    q = (
        select(Upload)
        .where(Upload.id == upload_id)
        .options(
            joinedload(Upload.wafers).options(
                joinedload(Wafer.lot), joinedload(Wafer.prediction), joinedload(Wafer.review)
            )
        )
    )
    return session.scalars(q).unique().one()


def read_limited(file: UploadFile, limit: int) -> bytes:
    """The uploaded bytes, or 413 as soon as they pass ``limit``."""
    parts, size = [], 0
    while chunk := file.file.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"upload larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "the same file was uploaded before (``duplicate`` is true)"},
        413: {"description": "the file is larger than the limit"},
        415: {"description": "content type not accepted for wafer data"},
        422: {"description": "the file is not readable wafer data (the reason says why)"},
    },
)
def upload(
    response: Response,
    svc: ServiceDep,
    session: SessionDep,
    file: Annotated[UploadFile, File(description="KLARF, STDF, G85 XML, LSWMD pickle, MixedWM38 .npz, .npy or .png")],
    lot: Annotated[str | None, Form(max_length=200, description="lot name for maps whose file has none")] = None,
) -> UploadOut:
    """Parse, classify, explain and store one file: all of it or, on any error, nothing."""
    declared = (file.content_type or "").split(";")[0].strip().lower()
    if declared not in CONTENT_TYPES:
        accepted = ", ".join(sorted(t for t in CONTENT_TYPES if t))
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"content type {declared!r} is not wafer data; accepted: {accepted}"
        )
    filename = clean_filename(file.filename, "upload")
    data = read_limited(file, svc.max_upload_bytes)
    if not data:
        raise FabsightError(filename, "empty file")
    result = ingest_bytes(
        svc.store,
        data,
        filename,
        files_dir=svc.files_dir,
        content_type=declared or "application/octet-stream",
        classifier=svc.classifier,
        model_name=svc.model_name,
        kb=svc.kb,
        lot=lot,
        formats=CONTENT_TYPES[declared],
        read=svc.wafer_reader(),
    )
    up = _upload_out(_load(session, result.upload_id), result.duplicate)
    if result.duplicate:
        response.status_code = status.HTTP_200_OK
    return up


@router.get("/{upload_id}")
def get(upload_id: int, session: SessionDep) -> UploadOut:
    """An upload with its wafers."""
    return _upload_out(_load(session, upload_id), False)


@router.post("/{upload_id}/die-results", status_code=status.HTTP_201_CREATED)
def die_results(upload_id: int, results: list[DieResultIn], svc: ServiceDep) -> list[int]:
    """Attach die-image results (class, boxes, heat-map) produced for this upload's images."""
    return add_die_results(svc.store, upload_id, [r.model_dump() for r in results])
