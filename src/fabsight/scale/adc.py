"""ADC over many KLARFs: one classified KLARF per input, in-process or on Ray, resumable.

``OUT/`` mirrors the inputs (each KLARF at its path relative to the inputs' common folder)
and holds ``_manifest.jsonl`` (finished inputs with size and mtime, appended only after
their output is in place: :class:`~fabsight.scale.plan.Manifest`), ``_errors.jsonl``
(inputs that failed in the latest run) and ``_adc_job.json`` (model and options). A rerun
skips finished inputs that did not change; the rest are redone.

Folders are walked for KLARF files only (a text file starting ``FileVersion`` or ``Record
FileRecord``), since review images usually sit beside the KLARF. On Ray each actor holds one
model; it returns the classified KLARF's bytes and the driver writes them, so a cluster needs
no shared output folder (the inputs and images must be readable by the actors).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fabsight.adc.classify import classify_klarf, load_die_model
from fabsight.errors import FabsightError
from fabsight.scale.job import ACTOR_CPUS, ERRORS_FILE, ray_session
from fabsight.scale.plan import Manifest, collect_inputs, read_list_file, stamp
from fabsight.utils.atomic import atomic_open, write_json, write_text
from fabsight.utils.progress import track

JOB_FILE = "_adc_job.json"


def is_klarf(path: str | os.PathLike[str]) -> bool:
    """Whether a file starts as a KLARF 1.x (``FileVersion``) or 1.8 (``Record FileRecord``) does."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256).lstrip()
    except OSError:
        return False
    return head.startswith((b"FileVersion", b"Record FileRecord"))


class AdcWorker:
    """Classifies one KLARF at a time with a model loaded once (in-process, or as a Ray actor)."""

    def __init__(self, model: str, runtime: str, images: Sequence[str], review_code: int, n_threads: int) -> None:
        self.model = load_die_model(model, runtime, "cpu", n_threads)
        self.images = list(images)
        self.review_code = review_code

    def run(self, klarf: str) -> dict[str, Any]:
        """``{"file", "data", "counts"}`` or, for a user mistake, ``{"file", "error"}``."""
        try:
            result = classify_klarf(klarf, self.model, images=self.images, review_code=self.review_code,
                                    progress=False)  # the job's bar counts KLARFs
        except FabsightError as exc:  # the message names the KLARF (and defect) already
            return {"file": klarf, "error": exc.message if exc.path == klarf else str(exc)}
        data = result.source.patched(result.output_numbers(), result.lookup_names())
        return {"file": klarf, "data": data, "counts": result.counts()["lot"]}


def _outputs(files: Sequence[str], out: Path) -> dict[str, Path]:
    """Each input's output path: its path relative to the inputs' common folder, under ``out``."""
    common = os.path.commonpath([os.path.dirname(f) for f in files])
    return {f: out / os.path.relpath(f, common) for f in files}


def _ray_results(files: Sequence[str], args: tuple[Any, ...], address: str, workers: int) -> Iterator[dict[str, Any]]:
    with ray_session(address) as ray:
        actor = ray.remote(num_cpus=ACTOR_CPUS)(AdcWorker)
        pool = [actor.remote(*args) for _ in range(workers)]
        pending = {pool[i % workers].run.remote(f): f for i, f in enumerate(files)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            pending.pop(ready[0])
            yield ray.get(ready[0])


def run_adc_batch(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]] = (),
    list_file: str | os.PathLike[str] | None = None,
    ray: str | None = None,
    workers: int = 1,
    runtime: str = "torch",
    review_code: int = 0,
    overwrite: bool = False,
    strict: bool = False,
) -> dict[str, Any]:
    """Classify every KLARF of ``inputs`` into ``out``; returns a summary (module docstring).

    ``ray`` as in :func:`fabsight.scale.run_batch` (``local`` or an address; ``workers`` actors),
    else in this process (``workers`` threads for the model). A KLARF that fails (a missing
    image, a bad file) is listed in ``errors`` and the job goes on; ``strict`` stops there.
    """
    names = [*inputs, *(read_list_file(list_file) if list_file is not None else [])]
    if not names:
        raise FabsightError(None, "give INPUTS or --list FILE")
    named = {os.path.abspath(n) for n in names if os.path.isfile(n)}  # named files are inputs whatever they hold
    files = [f.path for f in collect_inputs(names, "wafer") if f.path in named or is_klarf(f.path)]
    if not files:
        raise FabsightError(None, "the inputs hold no KLARF files")
    args = (str(model), runtime, [str(d) for d in images], review_code, workers if ray is None else 1)
    local = AdcWorker(*args) if ray is None else None  # a wrong model fails here, before any output
    if ray is not None:
        load_die_model(model, runtime)  # ... also before Ray starts
    out = Path(out)
    _prepare(out, {"model": str(Path(model).resolve()), "runtime": runtime, "review_code": review_code}, overwrite)
    manifest = Manifest(out)
    targets = _outputs(files, out)
    done = {f for f in files if manifest.is_done(f) and targets[f].is_file()}
    todo = [f for f in files if f not in done]
    t0 = time.perf_counter()
    results = (map(local.run, todo) if local is not None
               else _ray_results(todo, args, ray or "local", workers) if todo else iter(()))
    errors, defects = [], 0
    for r in track(results, "classifying KLARFs", total=len(todo)):
        if "error" in r:
            if strict:
                raise FabsightError(r["file"], r["error"])
            errors.append({"file": r["file"], "error": r["error"]})
            continue
        target = targets[r["file"]]
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(target, "wb") as fh:
            fh.write(r["data"])
        size, mtime = stamp(r["file"])
        manifest.commit([{"file": r["file"], "size": size, "mtime_ns": mtime, "output": str(target),
                          "defects": r["counts"]["defects"]}])
        defects += r["counts"]["defects"]
    write_text(out / ERRORS_FILE, "".join(json.dumps(e) + "\n" for e in errors))
    seconds = time.perf_counter() - t0
    return {"out": str(out), "model": str(model), "executor": "in-process" if ray is None else f"ray ({ray})",
            "workers": workers, "inputs": len(files), "skipped_done": len(done),
            "processed": len(todo) - len(errors), "failed": len(errors), "defects": defects,
            "seconds": round(seconds, 3), "defects_per_s": round(defects / seconds, 1) if seconds > 0 else None,
            "errors_file": str(out / ERRORS_FILE) if errors else None, "errors": errors}


def _prepare(out: Path, ident: dict[str, Any], overwrite: bool) -> None:
    """Create ``out``, or check a previous run used the same model and options (else start over only
    with ``overwrite``: outputs from two models must not mix)."""
    job = out / JOB_FILE
    if out.exists() and not out.is_dir():
        raise FabsightError(out, "--out exists and is not a folder")
    if overwrite and job.is_file():
        (out / "_manifest.jsonl").unlink(missing_ok=True)
    elif job.is_file():
        try:
            before = json.loads(job.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            before = None
        if before != ident:
            raise FabsightError(out, "holds results of another model or options; use --overwrite to start over")
    out.mkdir(parents=True, exist_ok=True)
    write_json(job, ident)
