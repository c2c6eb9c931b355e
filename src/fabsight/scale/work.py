"""The per-batch work of a batch job: one callable class, run in-process or as a Ray actor.

:class:`BatchWorker` loads its model once (``__init__``) and turns a batch of work units
(each a few input files) into one Arrow table of result rows. The in-process executor calls
it directly and Ray Data runs it through ``map_batches``, so the two executors cannot give
different results: there is only one implementation of reading, classifying, explaining
and embedding.

Every unit's rows carry ``unit`` and ``unit_rows`` (how many rows the unit produced in
all), so the driver can tell when a unit is complete however Ray re-blocks the output.
A file that cannot be read becomes one row with ``error`` set and no results.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from fabsight.errors import FabsightError
from fabsight.types import WaferMap

#: Job kinds: wafer-pattern classification of wafer data, or die-image embedding.
MODES = ("wafer", "image")

TOP3 = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))


def result_schema(*, explain: bool, embed: bool) -> pa.Schema:
    """Columns of every part file (plus ``unit``, ``unit_rows``, ``error`` between worker and driver)."""
    fields = [
        ("source", pa.string()),
        ("format", pa.string()),
        ("index", pa.int64()),
        ("lot_id", pa.string()),
        ("wafer_id", pa.string()),
        ("rows", pa.int32()),
        ("cols", pa.int32()),
        ("truth", pa.string()),
        ("label", pa.string()),
        ("confidence", pa.float64()),
        ("needs_review", pa.bool_()),
        ("review_reason", pa.string()),
        ("top3", TOP3),
        ("ood_score", pa.float64()),
        ("read_ms", pa.float64()),
        ("model_ms", pa.float64()),
        ("worker", pa.string()),
    ]
    if explain:
        fields.append(("explanation", pa.string()))
    if embed:
        fields.append(("embedding", pa.list_(pa.float32())))
    return pa.schema(fields)


#: Bookkeeping columns the driver strips before a part is written.
UNIT_FIELDS = [("unit", pa.string()), ("unit_rows", pa.int64()), ("error", pa.string())]


@dataclass(frozen=True)
class JobSpec:
    """What every worker needs to build itself: small and picklable (sent to each Ray actor)."""

    mode: str
    model_dir: str | None = None
    runtime: str = "torch"
    backbone: str | None = None
    explain: bool = False
    embed: bool = False
    batch_size: int = 256
    n_threads: int = 1


@dataclass(frozen=True)
class WorkUnit:
    """Input files processed together and written to one part file.

    ``labels`` are the class-folder names of ``ROOT/CLASS/file`` inputs (``None`` for others):
    the ground truth the folder layout states.
    """

    uid: str
    files: tuple[str, ...]
    labels: tuple[str | None, ...]

    def encode(self) -> str:
        return json.dumps({"uid": self.uid, "files": self.files, "labels": self.labels})

    @classmethod
    def decode(cls, text: str) -> WorkUnit:
        d = json.loads(text)
        return cls(d["uid"], tuple(d["files"]), tuple(d["labels"]))


def _error_line(exc: Exception) -> str:
    """One line for ``_errors.jsonl``: the user's problem, or the type of an unexpected failure."""
    if isinstance(exc, FabsightError):
        return exc.message
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class BatchWorker:
    """Stateful batch function: ``BatchWorker(spec)(table_of_units) -> table_of_rows``.

    The model (or backbone) is loaded once per worker; Ray keeps the actor alive across
    batches, so loading costs once per worker, not once per file.
    """

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.schema = result_schema(explain=spec.explain, embed=spec.embed or spec.mode == "image")
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.kb = None
        if spec.mode == "wafer":
            from fabsight.artifacts import load
            from fabsight.wafer.pretrained import resolve_model

            if spec.model_dir is None:
                raise FabsightError(None, "a wafer batch job needs --model")
            self.model = load(resolve_model(spec.model_dir), spec.runtime, task="wafer-pattern",
                              n_threads=spec.n_threads)
            if spec.explain:
                from fabsight.assist.knowledge import load_kb

                self.kb = load_kb()
        elif spec.mode == "image":
            import torch

            from fabsight.backbones import create_backbone

            if spec.backbone is None:
                raise FabsightError(None, "an image batch job needs --backbone")
            torch.set_num_threads(spec.n_threads)
            self.backbone = create_backbone(spec.backbone)
        else:
            raise FabsightError(None, f"mode must be one of {', '.join(MODES)}, got {spec.mode!r}")

    def __call__(self, batch: pa.Table) -> pa.Table:
        units = [WorkUnit.decode(t) for t in batch.column("unit").to_pylist()]
        tables = [self.run_unit(u) for u in units]
        return pa.concat_tables(tables)

    # ------------------------------------------------------------------ units
    def run_unit(self, unit: WorkUnit) -> pa.Table:
        """All rows of one unit: result rows of every readable file, one error row per failed file."""
        if self.spec.mode == "image":
            rows = self._image_rows(unit)
        else:
            rows = []
            for path, label in zip(unit.files, unit.labels, strict=True):
                try:  # all or nothing per file: a failure part-way through drops the file's rows
                    rows += list(self._wafer_rows(path, label))
                except Exception as exc:  # one bad file must not stop a fab-scale job; it is logged
                    rows.append({"source": path, "error": _error_line(exc)})
        full = self.schema
        for name, typ in UNIT_FIELDS:
            full = full.append(pa.field(name, typ))
        for r in rows:
            r["unit"] = unit.uid
            r["unit_rows"] = len(rows)
        return pa.Table.from_pylist(rows, schema=full)

    def _wafer_rows(self, path: str, label: str | None) -> Iterator[dict[str, Any]]:
        """Stream one file's maps through the model ``batch_size`` maps at a time (bounded memory)."""
        from fabsight.io import iter_maps

        maps: list[WaferMap] = []
        t0 = time.perf_counter()
        index = 0
        for m in iter_maps([path]):
            maps.append(m)
            if len(maps) == self.spec.batch_size:
                yield from self._classify(maps, index, label, time.perf_counter() - t0)
                index += len(maps)
                maps = []
                t0 = time.perf_counter()
        if maps:
            yield from self._classify(maps, index, label, time.perf_counter() - t0)

    def _classify(self, maps: list[WaferMap], start: int, label: str | None, read_s: float) -> list[dict[str, Any]]:
        """Predict one chunk of maps; read and model time are shared out evenly over its rows."""
        from fabsight.assist.explain import explain_facts
        from fabsight.assist.facts import wafer_facts

        t0 = time.perf_counter()
        details = self.model.predict_details(maps)
        vectors = self.model.embed(maps) if self.spec.embed else None
        model_s = time.perf_counter() - t0
        n = len(maps)
        rows = []
        for i, (m, d) in enumerate(zip(maps, details, strict=True)):
            row = {
                "source": m.source,
                "format": m.format,
                "index": start + i,
                "lot_id": m.lot_id,
                "wafer_id": m.wafer_id,
                "rows": m.shape[0],
                "cols": m.shape[1],
                "truth": "+".join(m.labels) if m.labels else label,
                "label": d["label"],
                "confidence": d["probability"],
                "needs_review": d["needs_review"],
                "review_reason": d["review_reason"],
                "top3": [{"label": c, "probability": p} for c, p in d["top3"]],
                "ood_score": d["ood_score"],
                "read_ms": 1000 * read_s / n,
                "model_ms": 1000 * model_s / n,
                "worker": self.worker,
            }
            if self.kb is not None:
                row["explanation"] = explain_facts(wafer_facts(m, d), self.kb).text
            if vectors is not None:
                row["embedding"] = np.asarray(vectors[i], dtype=np.float32)
            rows.append(row)
        return rows

    def _image_rows(self, unit: WorkUnit) -> list[dict[str, Any]]:
        """Embed a unit's die images in batches of ``batch_size`` (unreadable images become error rows)."""
        from fabsight.die.data import read_image
        from fabsight.die.embeddings import extract

        rows: list[dict[str, Any]] = []
        images: list[np.ndarray] = []
        t0 = time.perf_counter()
        for path, label in zip(unit.files, unit.labels, strict=True):
            try:
                image = read_image(path)
            except Exception as exc:  # logged and skipped like a bad wafer file
                rows.append({"source": path, "error": _error_line(exc)})
                continue
            images.append(image)
            rows.append({"source": path, "format": "image", "index": 0, "rows": int(image.shape[0]),
                         "cols": int(image.shape[1]), "truth": label, "worker": self.worker})
        read_s = time.perf_counter() - t0
        if not images:
            return rows
        t0 = time.perf_counter()
        vectors = extract(self.backbone, images, batch_size=self.spec.batch_size, cache_dir=None)
        model_s = time.perf_counter() - t0
        good = [r for r in rows if "error" not in r]
        for r, v in zip(good, vectors, strict=True):
            r.update(read_ms=1000 * read_s / len(good), model_ms=1000 * model_s / len(good),
                     embedding=v.astype(np.float32))
        return rows
