"""The FastAPI application: wiring only (routers, error handlers, lifespan, the front door).

``create_app(db_url, models_dir)`` returns an app whose lifespan opens the store (migrating
its schema to the newest version), loads the models once and resolves the access token;
every request then reads them from ``app.state.service``. Every request passes
:class:`~fabsight.serve.guard.Guard` first (authentication, same-origin writes, body size,
security headers, generic 500s). User mistakes (:class:`~fabsight.errors.FabsightError`)
become 4xx responses whose ``detail`` is the one-line reason: 404 for a missing item, 409
for a decision on a decided review, 422 for unreadable wafer data (or a parse past the
worker's limits), 400 for the rest.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Security, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles

from fabsight import __version__
from fabsight.errors import FabsightError, FormatError
from fabsight.serve.guard import Guard
from fabsight.serve.routers import adc, analysis, dashboard, dies, docs, lots, reviews, uploads, wafers, yields
from fabsight.serve.schemas import Health
from fabsight.serve.state import MAX_UPLOAD_BYTES, Policy, load_service
from fabsight.serve.worker import ParseLimitError
from fabsight.store.queries import Conflict, NotFound, counts

#: Declares the token in the OpenAPI schema (the "Authorize" button of /docs); the Guard checks it.
_BEARER = HTTPBearer(auto_error=False, description="the access token (see `fabsight serve --help`)")


def _status_of(exc: FabsightError) -> int:
    if isinstance(exc, NotFound):
        return status.HTTP_404_NOT_FOUND
    if isinstance(exc, Conflict):
        return status.HTTP_409_CONFLICT
    if isinstance(exc, FormatError | ParseLimitError):
        return status.HTTP_422_UNPROCESSABLE_CONTENT
    return status.HTTP_400_BAD_REQUEST


async def _user_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FabsightError)
    return JSONResponse({"detail": str(exc)}, status_code=_status_of(exc))


def create_app(
    db_url: str | os.PathLike[str],
    models_dir: str | os.PathLike[str] | None = None,
    *,
    files_dir: str | os.PathLike[str] | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    runtime: str = "torch",
    policy: Policy | None = None,
) -> FastAPI:
    """The service over the store at ``db_url`` (a SQLite file path or a database URL).

    ``models_dir`` holds the wafer-pattern model (the folder itself or a sub-folder; ``pretrained``:
    the shipped WM-811K model, what ``fabsight serve`` uses when none is named); without it
    wafers are stored and explained but not classified, and all go to the review queue.
    ``files_dir`` keeps the uploaded files (default: beside the SQLite file). ``runtime``
    ``onnx`` / ``onnx-int8`` runs exported models in ONNX Runtime (see :mod:`fabsight.deploy`).
    ``policy`` sets the access token, public reads, pickles and the parse worker's limits.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = load_service(db_url, models_dir, files_dir=files_dir, max_upload_bytes=max_upload_bytes,
                               runtime=runtime, policy=policy)
        app.state.service = service
        try:
            yield
        finally:
            service.store.close()

    app = FastAPI(
        title="fabsight",
        version=__version__,
        summary="Automatic defect classification: upload wafer data, browse results, review labels.",
        lifespan=lifespan,
        docs_url=None,  # served by routers.docs from local files
        redoc_url=None,
        dependencies=[Security(_BEARER)],
    )
    app.add_exception_handler(FabsightError, _user_error)
    app.add_middleware(Guard)

    for module in (uploads, dies, wafers, lots, yields, reviews, analysis, adc, dashboard, docs):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(packages=[("fabsight.serve", "static")]), name="static")
    assets = docs.assets()
    if assets is not None:
        app.mount(docs.ASSETS, assets, name="docs-assets")

    @app.get("/api/health", tags=["service"])
    def health(request: Request) -> Health:
        """Whether the store answers, which wafer model is loaded, and how much is stored."""
        svc = request.app.state.service
        with svc.store.session() as s:
            n = counts(s)
        shown = svc.store.engine.url.render_as_string(hide_password=True)
        anomaly = None if svc.anomaly_model is None else svc.anomaly_model.method
        return Health(status="ok", store=shown, wafer_model=svc.model_name, anomaly_model=anomaly,
                      classes=svc.classes, counts=n)

    return app


def run(app: FastAPI, host: str, port: int, *, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until Ctrl-C, every log line (access log included) on stderr,
    so stdout carries only what the CLI prints (its ``--json`` output)."""
    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=config)
