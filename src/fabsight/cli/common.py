"""Options and output helpers every command group shares."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from fabsight.utils.atomic import to_jsonable

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda (or cuda:N) or auto (a GPU when present).")]

out = Console()
err = Console(stderr=True)


def emit(result: Any, as_json: bool, human: Callable[[Any], None] | None = None) -> None:
    """Print ``result`` as JSON (``--json``) or through ``human`` for a person."""
    if as_json or human is None:
        sys.stdout.write(json.dumps(result, indent=2, default=to_jsonable) + "\n")
        sys.stdout.flush()
    else:
        human(result)


def warn(message: str) -> None:
    err.print(f"warning: {message}", markup=False, highlight=False)
