"""Progress bars on stderr, so ``--json`` output on stdout stays clean."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")

_console = Console(stderr=True)


def enabled() -> bool:
    """Bars only for a person at a terminal; ``FABSIGHT_PROGRESS=1`` forces them on."""
    forced = os.environ.get("FABSIGHT_PROGRESS")
    if forced is not None:
        return forced not in ("0", "", "false")
    return _console.is_terminal


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (a no-op wrapper when bars are off)."""
    if not enabled():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
