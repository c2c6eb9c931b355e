"""Upload → parse → classify → explain → store, all or nothing.

The expensive steps (parsing, the classifier, explanations) run before the database is
touched; then one write transaction inserts the upload, its lots, wafers, predictions,
explanations and review rows, and writes the uploaded bytes to the files folder. If anything
fails in that transaction the rows are rolled back and the file is removed, so a client
never finds an upload with half its wafers, a wafer without its explanation, or an orphan
file. Each attempt writes its own file name, so two clients uploading the same bytes at
once can never delete each other's file; the content hash is unique in the table, and the
loser of such a race gets the winner's upload back as a duplicate.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fabsight.errors import FabsightError, FormatError
from fabsight.io._common import safe_name
from fabsight.store.db import Store
from fabsight.store.models import (
    DieResult,
    Explanation,
    Lot,
    LotWafer,
    Prediction,
    Review,
    Upload,
    Wafer,
    pack_grid,
    utcnow,
)
from fabsight.store.queries import NotFound
from fabsight.types import WaferMap, source_kind, wafer_key
from fabsight.utils.atomic import write_bytes

#: Most wafers one upload may carry (a whole WM-811K pickle belongs in batch jobs, not a web form).
MAX_WAFERS = 5000


@dataclass
class AnalysedWafer:
    """One wafer with what the models said about it, ready to be stored."""

    wmap: WaferMap
    prediction: dict[str, Any] | None
    explanation: dict[str, Any]
    priority: float


@dataclass
class IngestResult:
    upload_id: int
    duplicate: bool
    wafer_ids: list[int]


def analyse_maps(maps: Sequence[WaferMap], classifier: Any = None, kb: Any = None) -> list[AnalysedWafer]:
    """Classify (when a wafer classifier is given) and explain every map.

    ``priority`` orders the review queue: the larger of the model's doubt (1 - confidence)
    and its out-of-distribution score relative to the OOD threshold, capped at 1.
    """
    from fabsight.assist.explain import explain_maps
    from fabsight.assist.knowledge import load_kb

    kb = kb if kb is not None else load_kb()
    preds: list[dict[str, Any]] | None = None
    if classifier is not None:
        preds = classifier.predict_details(list(maps))
    explanations = explain_maps(maps, kb, preds)
    out = []
    for i, (m, e) in enumerate(zip(maps, explanations, strict=True)):
        p = None if preds is None else preds[i]
        if p is None:
            priority = 1.0
        else:
            ood = p["ood_score"] / classifier.ood_.threshold if classifier.ood_.threshold > 0 else 0.0
            priority = min(1.0, max(1.0 - p["probability"], ood))
        out.append(AnalysedWafer(m, p, e.to_dict(), float(priority)))
    return out


def _get_or_insert(session: Session, model: type[Any], **key: Any) -> Any:
    """The row of ``model`` with these unique ``key`` values, inserted when new; safe against a
    concurrent inserter (the loser's INSERT does nothing and it reads the winner's row)."""
    where = [getattr(model, k) == v for k, v in key.items()]
    row = session.scalar(select(model).where(*where))
    if row is not None:
        return row
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(insert(model).values(**key, created_at=utcnow()).on_conflict_do_nothing(index_elements=list(key)))
    return session.scalars(select(model).where(*where)).one()


def lot_row(session: Session, name: str) -> Lot:
    """The lot called ``name``, created when new."""
    return _get_or_insert(session, Lot, name=name)


def lot_wafer_row(session: Session, lot: Lot, wafer_id: str) -> LotWafer:
    """The physical wafer of ``lot`` that a result with ``wafer_id`` belongs to (:func:`wafer_key`)."""
    return _get_or_insert(session, LotWafer, lot_pk=lot.id, wafer_id=wafer_key(wafer_id, lot.name))


def add_wafer(session: Session, upload: Upload, item: AnalysedWafer, lot: Lot, model: str | None) -> Wafer:
    """Insert one analysed wafer as a result of its physical wafer in ``lot`` (found or created), with its
    source, prediction, explanation and review row."""
    m = item.wmap
    now = utcnow()
    ts = m.timestamp.replace(tzinfo=None) if m.timestamp is not None else None
    fmt = m.format or upload.format
    wafer = Wafer(
        upload=upload,
        lot=lot,
        lot_wafer=lot_wafer_row(session, lot, str(m.wafer_id)),
        wafer_id=str(m.wafer_id),
        source=Path(m.source).name if m.source else upload.filename,
        format=fmt,
        kind=source_kind(fmt),
        step=str(m.extras.get("step_id") or "")[:100] if source_kind(fmt) == "inspection" else "",
        timestamp=ts,
        measured_at=ts or now,
        rows=m.shape[0],
        cols=m.shape[1],
        grid_blob=pack_grid(m.grid),
        notch=m.notch,
        n_good=m.n_good,
        n_fail=m.n_fail,
        yield_=None if m.n_dies == 0 else float(m.yield_),
        labels=[str(x) for x in m.labels],
        created_at=now,
    )
    p = item.prediction
    if p is not None:
        wafer.prediction = Prediction(
            model=model or "",
            label=p["label"],
            probability=float(p["probability"]),
            top3=p["top3"],
            needs_review=bool(p["needs_review"]),
            review_reason=p["review_reason"],
            ood_score=p["ood_score"],
        )
    e = item.explanation
    wafer.explanation = Explanation(text=e["explanation"], facts=e["facts"], root_causes=e["root_causes"])
    pending = p is None or p["needs_review"]
    wafer.review = Review(
        state="pending" if pending else "auto",
        predicted=None if p is None else p["label"],
        label=None if pending else p["label"],
        reason="no wafer model loaded" if p is None else p["review_reason"],
        priority=item.priority,
    )
    session.add(wafer)
    return wafer


def stored_name(sha: str, filename: str) -> str:
    """A file name of its own for each attempt (so racing uploads never share one), keeping a tidy suffix."""
    suffix = Path(filename).suffix.lower()
    suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,9}", suffix) else ""
    return f"{sha[:16]}-{uuid.uuid4().hex[:8]}{suffix}"


def _existing(store: Store, sha: str) -> IngestResult | None:
    with store.session() as s:
        up = s.scalar(select(Upload).where(Upload.sha256 == sha))
        if up is None:
            return None
        return IngestResult(up.id, True, [w.id for w in up.wafers])


#: Reads an upload saved at a path → ``(format, maps)``; the service passes one that runs in a capped child.
UploadReader = Callable[[Path, Sequence[str] | None], tuple[str, list[WaferMap]]]


def read_upload(
    path: Path, formats: Sequence[str] | None = None, *, allow_pickle: bool = True
) -> tuple[str, list[WaferMap]]:
    """The format of ``path`` from its content and its maps; ``formats`` restricts what the content
    may be; ``allow_pickle=False`` refuses LSWMD pickles (see :func:`fabsight.io.read_maps`)."""
    from fabsight.io import detect_format, read_maps

    fmt = detect_format(path)
    if formats is not None and fmt not in formats:
        raise FormatError(path, f"the content is {fmt}, not the declared kind ({' or '.join(formats)})")
    return fmt, read_maps(path, fmt, allow_pickle=allow_pickle)


def parse_upload(
    data: bytes, filename: str, scratch: Path, formats: Sequence[str] | None, read: UploadReader
) -> tuple[str, list[WaferMap]]:
    name = safe_name(Path(filename).name, "upload")
    path = scratch / name
    path.write_bytes(data)
    try:
        fmt, maps = read(path, formats)
    except FabsightError as exc:
        raise type(exc)(filename, exc.message) from None
    if not maps:
        raise FormatError(filename, f"the {fmt} file holds no wafer maps")
    if len(maps) > MAX_WAFERS:
        raise FabsightError(filename, f"{len(maps)} wafers in one upload; the limit is {MAX_WAFERS}")
    empty = [m.wafer_id or str(i) for i, m in enumerate(maps) if m.grid.size == 0]
    if empty:
        raise FormatError(filename, f"wafer {empty[0]} has no dies")
    for m in maps:
        m.source = filename
        if fmt in ("png", "npy"):  # these readers take the lot from the folder: here our scratch folder
            m.lot_id = ""
    return fmt, maps


def ingest_bytes(
    store: Store,
    data: bytes,
    filename: str,
    *,
    files_dir: str | Path,
    content_type: str = "application/octet-stream",
    classifier: Any = None,
    model_name: str | None = None,
    kb: Any = None,
    lot: str | None = None,
    formats: Sequence[str] | None = None,
    read: UploadReader = read_upload,
) -> IngestResult:
    """Store one uploaded file and everything derived from it, or nothing (see module docstring).

    ``lot`` names the lot of maps whose file carries no lot id (default: the file's stem);
    ``formats`` restricts the formats the content may have (e.g. to what the client declared);
    ``read`` turns the saved file into maps (the service reads in a capped child process).
    Raises :class:`~fabsight.errors.FabsightError` for anything wrong with the file.
    """
    sha = hashlib.sha256(data).hexdigest()
    found = _existing(store, sha)
    if found is not None:
        return found
    files = Path(files_dir)
    files.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=files, prefix=".parse-") as scratch:
        fmt, maps = parse_upload(data, filename, Path(scratch), formats, read)
    analysed = analyse_maps(maps, classifier, kb)
    target = files / stored_name(sha, filename)
    lot_name = lot or safe_name(Path(filename).stem, "upload")
    try:
        with store.write() as s:
            upload = Upload(
                filename=filename[:300],
                sha256=sha,
                size=len(data),
                content_type=content_type[:120],
                format=fmt,
                status="classified" if classifier is not None else "stored",
                path=target.name,
                model=model_name,
                created_at=utcnow(),
            )
            s.add(upload)
            lots = {name: lot_row(s, name) for name in {a.wmap.lot_id or lot_name for a in analysed}}
            wafers = [add_wafer(s, upload, a, lots[a.wmap.lot_id or lot_name], model_name) for a in analysed]
            s.flush()
            write_bytes(target, data)  # last step before COMMIT; removed again if COMMIT fails
            result = IngestResult(upload.id, False, [w.id for w in wafers])
    except IntegrityError:
        target.unlink(missing_ok=True)
        found = _existing(store, sha)
        if found is None:
            raise
        return found
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return result


@dataclass
class DieIngestResult:
    upload_id: int
    duplicate: bool
    result_ids: list[int]


#: Anomalous regions smaller than this many pixels are not boxed (single hot pixels of the map).
MIN_BOX_PIXELS = 4


def anomaly_boxes(amap: np.ndarray, threshold: float) -> list[list[Any]]:
    """``[x0, y0, x1, y1, "anomaly", peak]`` around each connected region of the map at or above
    ``threshold`` (the regions ``fabsight anomaly predict`` counts), strongest first."""
    from fabsight.anomaly.regions import defect_regions

    return [[*r["bbox"], "anomaly", round(r["peak_score"], 4)]
            for r in defect_regions(amap, threshold, min_area=MIN_BOX_PIXELS)]


def ingest_die_image(
    store: Store,
    data: bytes,
    filename: str,
    *,
    files_dir: str | Path,
    anomaly_model: Any,
    wafer: int | None = None,
    content_type: str = "application/octet-stream",
    read: Callable[[Path], np.ndarray] | None = None,
) -> DieIngestResult:
    """Score one die image with an anomaly model and store image, heat-map and result, or nothing.

    The label is ``anomalous`` when the image's score (the maximum of its anomaly map) is above
    the model's calibrated threshold, else ``good``; every region above the threshold is boxed.
    ``read`` decodes the saved image (default :func:`fabsight.anomaly.read_image`).
    """
    from fabsight.anomaly import read_image
    from fabsight.anomaly.render import write_heatmap

    sha = hashlib.sha256(data).hexdigest()
    with store.session() as s:
        up = s.scalar(select(Upload).where(Upload.sha256 == sha))
        if up is not None:
            done = s.scalars(select(DieResult.id).where(DieResult.upload_id == up.id))
            return DieIngestResult(up.id, True, list(done))
        if wafer is not None and s.get(Wafer, wafer) is None:
            raise NotFound(None, f"no wafer {wafer}")
    files = Path(files_dir)
    files.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=files, prefix=".parse-") as scratch:
        path = Path(scratch) / safe_name(Path(filename).name, "image")
        path.write_bytes(data)
        try:
            image = (read or read_image)(path)
        except FabsightError as exc:
            raise type(exc)(filename, exc.message) from None
    threshold = anomaly_model.resolve_threshold()
    amap = anomaly_model.anomaly_maps([image])[0]
    score = float(amap.max())
    target = files / stored_name(sha, filename)
    heatmap = target.with_name(f"{target.name.split('.')[0]}-heatmap.png")
    try:
        with store.write() as s:
            upload = Upload(filename=filename[:300], sha256=sha, size=len(data), content_type=content_type[:120],
                            format="image", status="analysed", path=target.name, model=anomaly_model.method,
                            created_at=utcnow())
            row = DieResult(upload=upload, wafer_pk=wafer, image=filename[:300],
                            label="anomalous" if score > threshold else "good", score=score,
                            boxes=anomaly_boxes(amap, threshold), heatmap_path=heatmap.name, created_at=utcnow())
            s.add_all([upload, row])
            s.flush()
            write_bytes(target, data)
            write_heatmap(heatmap, amap, threshold, image)
            result = DieIngestResult(upload.id, False, [row.id])
    except IntegrityError:
        target.unlink(missing_ok=True)
        heatmap.unlink(missing_ok=True)
        return ingest_die_image(store, data, filename, files_dir=files, anomaly_model=anomaly_model, wafer=wafer,
                                read=read)
    except BaseException:
        target.unlink(missing_ok=True)
        heatmap.unlink(missing_ok=True)
        raise
    return result
