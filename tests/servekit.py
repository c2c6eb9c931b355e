"""The tiny wafer model the service and demo tests share, and small helpers (fixtures are in conftest)."""

from __future__ import annotations

from pathlib import Path

#: Classes of the tiny session model: four patterns the generator keeps well apart.
CLASSES = ("Center", "Edge-Ring", "Scratch", "none")
FAST = {"input_size": 32, "epochs": 4, "batch_size": 32, "n_threads": 1}


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder`` (what an upload may have left behind)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def train_tiny_model(model_dir: Path) -> Path:
    """Train and save a small wafer-pattern model (a few seconds on 2 cores) on synthetic maps of
    four well-separated classes, so its predictions on new synthetic maps are mostly right."""
    from fabsight.synth import generate_dataset
    from fabsight.wafer import WaferClassifier

    train = generate_dataset(40, classes=CLASSES, shapes=((32, 32), (48, 48)), seed=0)
    return WaferClassifier(**FAST).fit(train).save(model_dir)
