"""Constants and helpers shared by the service tests (imported by name; fixtures are in conftest)."""

from __future__ import annotations

from pathlib import Path

#: Classes of the tiny session model: four patterns the generator keeps well apart.
CLASSES = ("Center", "Edge-Ring", "Scratch", "none")
FAST = {"input_size": 32, "epochs": 4, "batch_size": 32, "n_threads": 1}


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder`` (what an upload may have left behind)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
