"""Options and output helpers every command group shares."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from fabsight.utils.atomic import to_jsonable

if TYPE_CHECKING:
    from fabsight.io import ReadLog

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
StrictOpt = Annotated[
    bool,
    typer.Option("--strict", help="Stop at the first unreadable file (exit 2) instead of reporting it and going on."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda (or cuda:N) or auto (a GPU when present).")]
WaferModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="Wafer-pattern model directory (fabsight wafer train); default: the shipped WM-811K model "
        "('pretrained').",
    ),
]

out = Console()
err = Console(stderr=True)


def emit(result: Any, as_json: bool, human: Callable[[Any], None] | None = None, log: ReadLog | None = None) -> None:
    """Print ``result`` as JSON (``--json``) or through ``human`` for a person.

    With the ``log`` of the files a command read, ``result`` (a dict) gains ``errors``
    (``[{"file", "error"}]``, empty when every file was read) and each unreadable file is
    reported on stderr after the result.
    """
    if log is not None:
        result = {**result, "errors": log.to_json()}
    _print(result, as_json, human)
    if log is not None and log.errors:
        report_unreadable(log)


def _print(result: Any, as_json: bool, human: Callable[[Any], None] | None) -> None:
    if as_json or human is None:
        sys.stdout.write(json.dumps(result, indent=2, default=to_jsonable) + "\n")
        sys.stdout.flush()
    else:
        human(result)


def wafer_model(model: Path | None) -> tuple[Path, str]:
    """The wafer-pattern model a command loads (``--model``, else the shipped one) and how its
    output names it: the path given, or ``pretrained``."""
    from fabsight.wafer.pretrained import PRETRAINED_NAME, resolve_model

    return resolve_model(model), PRETRAINED_NAME if model is None else str(model)


def warn(message: str) -> None:
    err.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


def _error_lines(errors: list[dict[str, Any]], shown: int | None = None) -> None:
    for e in errors[:shown]:
        err.print(f"error: {e['file']}: {e['error']}" if e["file"] else f"error: {e['error']}",
                  markup=False, highlight=False, soft_wrap=True)
    if shown is not None and len(errors) > shown:
        err.print(f"… and {len(errors) - shown} more", markup=False, highlight=False)


def report_errors(errors: list[dict[str, Any]], files_read: int, shown: int | None = None) -> None:
    """On stderr: ``error: FILE: problem`` for each unreadable file (the first ``shown`` of them),
    then how many files were left out."""
    _error_lines(errors, shown)
    total = len(errors) + files_read
    warn(f"{len(errors)} of {total} files could not be read and were left out (--strict stops at the first)")


def report_unreadable(log: ReadLog) -> None:
    """The unreadable files of ``log`` on stderr (see :func:`report_errors`)."""
    report_errors(log.to_json(), log.files_read)


def require_read(found: bool, log: ReadLog, path: str | PathLike[str] | None, message: str) -> None:
    """Stop (exit 2) when the inputs gave nothing to work on.

    When unreadable files are why, they are the error: the one file's own line, or each
    file's line (printed by the CLI's error handler) and then a summary; otherwise ``path: message``.
    """
    if not found:
        raise log.nothing_read(path, message)
