"""``fabsight serve``: the REST API and web dashboard over a results store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fabsight.cli.common import JsonOpt, emit, err
from fabsight.cli.deploy import RuntimeOpt

DEFAULT_DB = "fabsight-store/store.sqlite"


def serve(
    db: Annotated[str, typer.Option("--db", help="SQLite file, or a postgresql://… URL.")] = DEFAULT_DB,
    models: Annotated[
        Path | None, typer.Option("--models", help="Wafer-pattern and/or anomaly model folder(s).")
    ] = None,
    files: Annotated[
        Path | None, typer.Option("--files", help="Where uploaded files are kept (default: beside the SQLite file).")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Upload size limit.")] = 64.0,
    runtime: RuntimeOpt = "torch",
    as_json: JsonOpt = False,
) -> None:
    """Serve the dashboard (/) and REST API (/api, docs at /docs) until Ctrl-C.

    The store and models are opened before the server starts, so a wrong --db or --models
    ends here with one error line instead of a failing server.
    """
    from fabsight.serve import create_app, run
    from fabsight.serve.state import load_service

    limit = int(max_upload_mb * 1024 * 1024)
    service = load_service(db, models, files_dir=files, max_upload_bytes=limit, runtime=runtime)  # fail fast
    info = {
        "url": f"http://{host}:{port}/",
        "store": service.store.engine.url.render_as_string(hide_password=True),
        "files": str(service.files_dir),
        "wafer_model": service.model_name,
    }
    service.store.close()
    emit(info, as_json, lambda i: err.print(f"fabsight dashboard on {i['url']} (API: {i['url']}docs)", markup=False))
    run(create_app(db, models, files_dir=files, max_upload_bytes=limit, runtime=runtime), host, port)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Service")(serve)
