"""``fabsight serve``: the REST API and web dashboard over a results store."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, emit, err
from fabsight.cli.deploy import RuntimeOpt
from fabsight.errors import FabsightError

if TYPE_CHECKING:
    from fabsight.serve.state import Service

DEFAULT_DB = "fabsight-store/store.sqlite"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, *, token_given: bool, public_read: bool, allow_remote: bool) -> None:
    """Refuse to listen beyond loopback unless the operator said so: with an explicitly given token
    (``FABSIGHT_TOKEN`` / ``--token-file``), or with ``--allow-remote`` (always needed for ``--public-read``)."""
    if is_loopback(host) or allow_remote:
        return
    if public_read:
        raise FabsightError(f"--host {host}", "not a loopback address; --public-read there lets anyone on the "
                                              "network read the store: add --allow-remote to mean it")
    if not token_given:
        raise FabsightError(f"--host {host}", "not a loopback address; give the access token "
                                              "(FABSIGHT_TOKEN or --token-file) or add --allow-remote")


def announce(service: Service, url: str, as_json: bool, *, show_token: bool = False) -> None:
    """The start-up line(s): where the service listens and where its token is; a new token is shown
    once (``show_token``: always, as the demo does for its throw-away store)."""
    info: dict[str, Any] = {
        "url": url,
        "store": service.store.engine.url.render_as_string(hide_password=True),
        "files": str(service.files_dir),
        "wafer_model": service.model_name,
        "token_source": service.token_source,
        "public_read": service.public_read,
    }
    if service.token_new or show_token:
        info["token"] = service.token

    def human(i: dict[str, Any]) -> None:  # soft_wrap: a path or token cut across lines cannot be pasted
        err.print(f"fabsight dashboard on {i['url']} (API: {i['url']}docs)", markup=False, soft_wrap=True)
        if "token" in i:
            once = "shown once; " if service.token_new else ""
            err.print(f"access token ({once}kept in {i['token_source']}, mode 0600): {i['token']}",
                      markup=False, soft_wrap=True)
        else:
            err.print(f"access token: from {i['token_source']}", markup=False, soft_wrap=True)

    emit(info, as_json, human)


def serve(
    db: Annotated[str, typer.Option("--db", help="SQLite file, or a postgresql://… URL.")] = DEFAULT_DB,
    models: Annotated[
        Path | None, typer.Option("--models", help="Wafer-pattern, anomaly and/or die model folder(s) (a die "
                                                   "model turns on ADC of KLARF+images zips); default: the "
                                                   "shipped WM-811K wafer model ('pretrained').")
    ] = None,
    files: Annotated[
        Path | None, typer.Option("--files", help="Where uploaded files are kept (default: beside the SQLite file).")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on (beyond loopback: see --allow-remote).")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Upload size limit.")] = 64.0,
    runtime: RuntimeOpt = "torch",
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", help="File holding the access token (mode 0600). Default: $FABSIGHT_TOKEN, else "
                             "FILES/.fabsight-token, generated at first start.")] = None,
    public_read: Annotated[bool, typer.Option(
        "--public-read", help="Let anyone browse and read without the token (writes still need it).")] = False,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Listen on a non-loopback --host without an explicit token, or with --public-read.")
    ] = False,
    allow_pickle: Annotated[bool, typer.Option(
        "--allow-pickle", help="Accept WM-811K LSWMD pickles (a pickle can run code: trusted uploaders only).")
    ] = False,
    parse_memory_mb: Annotated[int, typer.Option(
        "--parse-memory-mb", min=64, help="Memory cap of the process that reads each upload.")] = 2048,
    parse_timeout: Annotated[float, typer.Option(
        "--parse-timeout", min=0.1, help="Seconds an upload may take to read.")] = 120.0,
    as_json: JsonOpt = False,
) -> None:
    """Serve the dashboard (/) and REST API (/api, docs at /docs) until Ctrl-C.

    Every request needs the access token (``Authorization: Bearer TOKEN``, or the dashboard's
    login form), reads too unless --public-read. The store and models are opened before the
    server starts, so a wrong --db or --models ends here with one error line instead of a
    failing server.
    """
    from fabsight.serve import create_app, run
    from fabsight.serve.state import Policy, load_service
    from fabsight.serve.worker import ParseLimits
    from fabsight.wafer.pretrained import resolve_model

    token_given = token_file is not None or bool(os.environ.get("FABSIGHT_TOKEN"))
    check_host(host, token_given=token_given, public_read=public_read, allow_remote=allow_remote)
    limit = int(max_upload_mb * 1024 * 1024)
    models = resolve_model(models)  # none named: the shipped WM-811K model
    policy = Policy(token_file=None if token_file is None else str(token_file), public_read=public_read,
                    allow_pickle=allow_pickle, parse=ParseLimits(parse_memory_mb << 20, parse_timeout))
    service = load_service(db, models, files_dir=files, max_upload_bytes=limit, runtime=runtime,
                           policy=policy)  # fail fast
    service.store.close()
    announce(service, f"http://{host}:{port}/", as_json)
    policy = dataclasses.replace(policy, token=service.token)
    run(create_app(db, models, files_dir=files, max_upload_bytes=limit, runtime=runtime, policy=policy), host, port)


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Service")(serve)
