"""What the running service holds: the store, the loaded models, the files folder, limits.

Built once in the app's lifespan (:func:`load_service`) and handed to every endpoint through
:func:`fabsight.serve.deps.service`, never imported as a global, so tests can run several
apps side by side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabsight.artifacts import load_card
from fabsight.errors import FabsightError, ModelError
from fabsight.store import Store, open_store

#: Default upload size limit (bytes): a 25-wafer KLARF lot is ~100 kB, a large one a few MB.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024


@dataclass
class Service:
    store: Store
    files_dir: Path
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    classifier: Any = None
    model_name: str | None = None
    kb: Any = None
    #: Die-image anomaly model (:mod:`fabsight.anomaly`), when the models folder has one.
    anomaly_model: Any = None

    @property
    def classes(self) -> list[str]:
        return [] if self.classifier is None else [str(c) for c in self.classifier.classes_]


def find_model(models_dir: str | os.PathLike[str], task: str) -> Path | None:
    """The model for ``task`` in ``models_dir``: the folder itself or one of its sub-folders."""
    root = Path(models_dir)
    if not root.is_dir():
        raise ModelError(root, "models folder does not exist")
    for candidate in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if not (candidate / "card.json").is_file():
            continue
        try:
            if load_card(candidate).task == task:
                return candidate
        except ModelError:
            continue
    return None


def default_files_dir(store: Store) -> Path:
    """Beside a SQLite file (``store.sqlite`` → ``store-files/``); ``./fabsight-files`` for PostgreSQL."""
    db = store.engine.url.database
    if store.is_sqlite and db and db != ":memory:":
        p = Path(db)
        return p.with_name(f"{p.stem}-files")
    return Path("fabsight-files").resolve()


def load_service(
    db: str | os.PathLike[str],
    models_dir: str | os.PathLike[str] | None,
    *,
    files_dir: str | os.PathLike[str] | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    runtime: str = "torch",
) -> Service:
    """Open the store (migrating it) and load the models on ``runtime``; user mistakes raise FabsightError."""
    from fabsight.assist.knowledge import load_kb

    if max_upload_bytes < 1:
        raise FabsightError(None, "the upload size limit must be positive")
    store = open_store(db)
    try:
        service = Service(store, Path(files_dir) if files_dir else default_files_dir(store), max_upload_bytes)
        service.kb = load_kb()
        if models_dir is not None:
            from fabsight.anomaly.persist import TASK as ANOMALY_TASK
            from fabsight.wafer.classifier import TASK as WAFER_TASK

            path = find_model(models_dir, WAFER_TASK)
            anomaly = find_model(models_dir, ANOMALY_TASK)
            if path is None and anomaly is None:
                raise ModelError(models_dir, "no wafer-pattern or anomaly model in this folder (fabsight wafer train)")
            if path is not None:
                from fabsight.deploy import load_predictor

                service.classifier = load_predictor(path, runtime)
                service.model_name = f"{path.name} ({load_card(path).created})"
            if anomaly is not None:
                from fabsight.deploy import load_anomaly_model

                service.anomaly_model = load_anomaly_model(anomaly, runtime, device="cpu")
                service.anomaly_model.resolve_threshold()  # a model without a threshold cannot label images
        service.files_dir.mkdir(parents=True, exist_ok=True)
    except BaseException:
        store.close()
        raise
    return service
