"""``fabsight demo``: the main job on the embedded example lot (what ``make demo`` runs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, StrictOpt, emit, err, out


def demo(
    files: Annotated[list[str] | None, typer.Argument(help="Wafer files to use instead of the example lot.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the report (replaced atomically).")] = Path(
        "demo_out"
    ),
    models: Annotated[
        Path | None,
        typer.Option("--models", help="Wafer-pattern model folder (default: the shipped WM-811K model, 'pretrained')."),
    ] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Then serve the dashboard over the demo's store.")] = False,
    host: Annotated[str, typer.Option("--host", help="With --serve: interface to listen on (loopback unless "
                                                     "FABSIGHT_TOKEN is set).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="With --serve: TCP port.")] = 8000,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Read the example lot (or FILES); classify, explain and store every wafer; write an HTML report."""
    from fabsight.demo import FILES_NAME, run_demo
    from fabsight.io import ReadLog
    from fabsight.wafer.pretrained import resolve_model

    if serve:  # before the work, so a refused --host costs nothing
        from fabsight.cli.serve import check_host

        check_host(host, token_given=bool(os.environ.get("FABSIGHT_TOKEN")), public_read=False, allow_remote=False)
    if models is None:
        err.print("wafer model: the shipped WM-811K model (pretrained)", markup=False)
    models = resolve_model(models)
    log = ReadLog(strict=strict)
    summary = run_demo(out_dir, files, models_dir=models, log=log)

    def human(s: dict[str, Any]) -> None:
        for lot in s["lots"]:
            y = "–" if lot["yield"] is None else f"{100 * lot['yield']:.1f} %"
            out.print(f"lot {lot['lot']} ({lot['format']}): {lot['wafers']} wafers, yield {y}", markup=False)
        out.print("patterns: " + ", ".join(f"{k} {v}" for k, v in s["patterns"].items()), markup=False)
        out.print(f"report: {s['report']}\nstore: {s['store']}", markup=False)

    emit(summary, as_json, human, log)
    if serve:
        from fabsight.cli.serve import announce
        from fabsight.serve import create_app, run
        from fabsight.serve.state import Policy, load_service

        files = Path(out_dir) / FILES_NAME
        service = load_service(summary["store"], models, files_dir=files)  # the demo store's own token
        service.store.close()
        announce(service, f"http://{host}:{port}/", False, show_token=True)
        err.print("log in with that token; Ctrl-C stops the server", markup=False)
        run(create_app(summary["store"], models, files_dir=files, policy=Policy(token=service.token)), host, port,
            log_level="warning")


def register(app: typer.Typer) -> None:
    app.command()(demo)
