"""Run a batch job: plan the units, run :class:`~fabsight.scale.work.BatchWorker` in-process or on
Ray Data, and write the results as a Parquet directory dataset as they arrive.

``OUT/`` holds ``part-<unit>.parquet`` files (each written to a temporary name and moved
into place, so a reader never sees half a part), ``_manifest.jsonl`` (finished inputs,
appended only after their part exists), ``_errors.jsonl`` (inputs that failed in the
latest run, one ``{"file", "error"}`` per line) and ``_job.json`` (what the results
mean: model, runtime, options). A rerun skips finished inputs whose size and mtime are
unchanged; an input that changed is redone together with the rest of its part.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fabsight.errors import FabsightError
from fabsight.scale.plan import Manifest, collect_inputs, make_units, read_list_file, stamp
from fabsight.scale.work import BatchWorker, JobSpec, WorkUnit
from fabsight.utils.atomic import atomic_path, write_json, write_text
from fabsight.utils.progress import track
from fabsight.wafer.pretrained import resolve_model

JOB_FILE = "_job.json"
ERRORS_FILE = "_errors.jsonl"
#: CPUs Ray reserves per actor: fractional so that on a small machine the read tasks that
#: feed the actors still get a CPU (a pool of 1-CPU actors on 2 cores starves them and hangs).
ACTOR_CPUS = 0.5


def _part_name(uid: str) -> str:
    return f"part-{uid}.parquet"


def _fingerprint(spec: JobSpec) -> dict[str, Any]:
    """What makes two runs' rows comparable: the model files' content, the runtime and the options."""
    ident: dict[str, Any] = {"mode": spec.mode, "runtime": spec.runtime, "backbone": spec.backbone,
                             "explain": spec.explain, "embed": spec.embed}
    if spec.model_dir is not None:
        h = hashlib.sha256()
        for f in sorted(Path(spec.model_dir).iterdir()):
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
        ident["model"] = os.path.abspath(spec.model_dir)
        ident["model_sha256"] = h.hexdigest()
    return ident


def _prepare_out(out: Path, ident: dict[str, Any], overwrite: bool) -> None:
    """Create ``out`` or check that it holds this job's earlier results; ``overwrite`` starts over."""
    job_file = out / JOB_FILE
    if out.exists() and not out.is_dir():
        raise FabsightError(out, "exists and is not a folder (the output is a Parquet directory dataset)")
    if out.is_dir() and any(out.iterdir()) and not job_file.is_file():
        raise FabsightError(out, "is a non-empty folder that fabsight batch did not write; choose another --out")
    if overwrite and out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if job_file.is_file():
        earlier = json.loads(job_file.read_text(encoding="utf-8"))
        if earlier != ident:
            changed = sorted(k for k in set(earlier) | set(ident) if earlier.get(k) != ident.get(k))
            raise FabsightError(out, f"holds results of a different job ({', '.join(changed)} differ); "
                                     "use --overwrite or another --out")
    else:
        write_json(job_file, ident)


def _torn_parts(out: Path, manifest: Manifest) -> set[str]:
    """Parts whose manifest lines are not all there: a crash cut the commit short (or the part is gone).

    Each entry says how many rows its input has in its part; a part holding more rows than its
    entries add up to also holds inputs the manifest lost, which would otherwise be redone
    into a second part.
    """
    torn = set()
    for part, rows in manifest.claimed_rows().items():
        path = out / part
        if not path.is_file() or (rows is not None and pq.read_metadata(path).num_rows != rows):
            torn.add(part)
    return torn


def _resume(out: Path, manifest: Manifest, files: Sequence[str]) -> set[str]:
    """Inputs already done. Parts holding a changed input, parts a crash left half-committed and
    parts no manifest line names are removed, so their inputs are redone exactly once."""
    stale = {manifest.entries[f]["part"] for f in files if f in manifest.entries and not manifest.is_done(f)}
    stale.discard(None)
    stale |= _torn_parts(out, manifest)
    if stale or manifest.damaged:
        manifest.forget_parts(stale)
    keep = manifest.parts()
    for part in out.glob("part-*.parquet"):
        if part.name not in keep:  # written but never committed (a crash between the two) or stale
            part.unlink()
    return {f for f in files if manifest.is_done(f)}


# ----------------------------------------------------------------- executors
def _in_process(units: Sequence[WorkUnit], worker: BatchWorker) -> Iterator[pa.Table]:
    for unit in units:
        yield worker.run_unit(unit)


def _source_dir() -> str:
    """The folder this fabsight is imported from, so Ray workers import the same code."""
    import fabsight

    return str(Path(fabsight.__file__).resolve().parents[1])


def local_ray_auth() -> None:
    """Ask explicitly for token authentication on a local Ray this process is about to start.

    Ray >= 2.59 turns token authentication on for a new local cluster and warns that it did so
    unless ``RAY_AUTH_MODE`` is set (docs.ray.io, ray-security/token-auth). Saying ``token``
    keeps that protection (Ray generates and reuses ``~/.ray/auth_token``) without the warning;
    a user's own setting wins. Ray reads the mode once, when it is imported, so nothing is set
    once Ray is loaded: set later, the cluster's processes would expect a token the driver does
    not send. Joining a cluster (``--ray ADDRESS``) follows the environment set up for it.
    """
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[Any]:
    """The ``ray`` module, connected: a local Ray started (and stopped after) for ``local``, else
    the cluster at ``address``; a Ray already initialised in this process is used as it is.
    Workers import this checkout of fabsight (its folder goes on their ``PYTHONPATH``)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address == "local":
        local_ray_auth()
    import ray

    started = False
    temp_dir = None
    if not ray.is_initialized():
        path = os.pathsep.join(p for p in (_source_dir(), os.environ.get("PYTHONPATH", "")) if p)
        kwargs: dict[str, Any] = {
            "runtime_env": {"env_vars": {"PYTHONPATH": path}},
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        if address == "local":
            temp_dir = kwargs["_temp_dir"] = tempfile.mkdtemp(prefix="fabsight-ray-")
        else:
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise FabsightError(None, f"--ray {address}: cannot connect ({exc})") from None
        started = True
    try:
        yield ray
    except BaseException:
        temp_dir = None  # a failed run keeps the local Ray's logs for a look
        raise
    finally:
        if started:
            ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(units: Sequence[WorkUnit], spec: JobSpec, address: str, workers: int) -> Iterator[pa.Table]:
    """Stream result blocks from a Ray Data pipeline; starts (and stops) a local Ray unless one is running."""
    with ray_session(address) as ray:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # fabsight shows its own bar on stderr
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # ... so Ray Data's "Progress bars disabled" warning is about our own choice: not shown
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        ds = ray.data.from_items([{"unit": u.encode()} for u in units])
        ds = ds.map_batches(
            BatchWorker,
            fn_constructor_kwargs={"spec": spec},
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=ACTOR_CPUS,
        )
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


# ---------------------------------------------------------------------- sink
class _Sink:
    """Collects result blocks per unit; writes a unit's part and commits its inputs once it is complete."""

    def __init__(self, out: Path, manifest: Manifest, stamps: dict[str, tuple[int, int]], strict: bool = False) -> None:
        self.out = out
        self.manifest = manifest
        self.stamps = stamps
        self.strict = strict
        self.pending: dict[str, list[pa.Table]] = {}
        self.errors: list[dict[str, str]] = []
        self.rows = 0
        self.parts = 0

    def add(self, block: pa.Table, units: dict[str, WorkUnit]) -> Iterator[str]:
        """Take one block; yield the id of each unit it completes."""
        if block.num_rows == 0:
            return
        ids = block.column("unit")
        for uid in ids.unique().to_pylist():
            piece = block.filter(pc.equal(ids, uid))
            have = self.pending.setdefault(uid, [])
            have.append(piece)
            expected = piece.column("unit_rows")[0].as_py()
            if sum(t.num_rows for t in have) == expected:
                self.finish(units[uid], pa.concat_tables(self.pending.pop(uid)))
                yield uid

    def finish(self, unit: WorkUnit, table: pa.Table | None) -> None:
        failed: set[str] = set()
        part = None
        if table is not None and table.num_rows:
            bad = table.filter(pc.is_valid(table.column("error")))
            for src, err in zip(bad.column("source").to_pylist(), bad.column("error").to_pylist(), strict=True):
                failed.add(src)
                self.errors.append({"file": src, "error": err})
            if bad.num_rows:
                write_text(self.out / ERRORS_FILE, "".join(json.dumps(e) + "\n" for e in self.errors))
                if self.strict:  # nothing of this unit is committed: a rerun starts from it
                    raise FabsightError(self.errors[-bad.num_rows]["file"], self.errors[-bad.num_rows]["error"])
            good = table.filter(pc.is_null(table.column("error"))).drop_columns(
                ["unit", "unit_rows", "error"])
            if good.num_rows:
                part = _part_name(unit.uid)
                with atomic_path(self.out / part) as tmp:
                    pq.write_table(good, tmp)
                self.rows += good.num_rows
                self.parts += 1
        rows_per_file: dict[str, int] = {}
        if part is not None:
            for src in good.column("source").to_pylist():
                rows_per_file[src] = rows_per_file.get(src, 0) + 1
        entries = []
        for f in unit.files:
            if f in failed:
                continue
            size, mtime = self.stamps[f]
            entries.append({"file": f, "size": size, "mtime_ns": mtime, "part": part,
                            "rows": rows_per_file.get(f, 0)})
        self.manifest.commit(entries)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (the driver) in MiB.

    Linux's ``VmHWM`` counts this program only; ``ru_maxrss`` (the fallback elsewhere) keeps
    the peak of the process that exec'ed it, e.g. a big benchmark parent.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_batch(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    backbone: str | None = None,
    list_file: str | os.PathLike[str] | None = None,
    ray: str | None = None,
    workers: int = 1,
    batch_size: int = 256,
    explain: bool = False,
    embed: bool = False,
    runtime: str = "torch",
    overwrite: bool = False,
    strict: bool = False,
) -> dict[str, Any]:
    """Classify (or embed) every input and write ``out`` as a Parquet dataset; returns a summary.

    ``ray=None`` runs in this process (``workers`` torch threads); ``ray="local"`` starts a
    local Ray, any other value is a Ray address (``auto``, ``ray://host:10001``); ``workers``
    is then the number of actors, each holding one model. An input that cannot be read is
    listed in the summary's ``errors`` (and ``OUT/_errors.jsonl``) and the job goes on;
    ``strict`` stops it there with that file's :class:`FabsightError` (what is done stays done).
    """
    if workers < 1 or batch_size < 1:
        raise FabsightError(None, "--workers and --batch-size must be at least 1")
    mode = "image" if backbone is not None else "wafer"
    if mode == "wafer":
        model = resolve_model(model)  # none named: the shipped WM-811K model
    elif explain or model is not None:
        raise FabsightError(None, "--backbone embeds die images; --model and --explain are for wafer maps")
    names = [*inputs, *(read_list_file(list_file) if list_file is not None else [])]
    if not names:
        raise FabsightError(None, "give INPUTS or --list FILE")
    spec = JobSpec(mode=mode, model_dir=None if model is None else str(model), runtime=runtime, backbone=backbone,
                   explain=explain, embed=embed, batch_size=batch_size,
                   n_threads=workers if ray is None else 1)
    # Build one worker here first: a wrong model, runtime or backbone fails in one line before
    # any output is touched or Ray is started (inside an actor it would end as a Ray traceback).
    local: BatchWorker | None = BatchWorker(spec)
    if ray is not None:
        local = None  # the actors load their own
    out = Path(out)
    files = collect_inputs(names, mode)
    _prepare_out(out, _fingerprint(spec), overwrite)
    (out / ERRORS_FILE).unlink(missing_ok=True)  # failed inputs are retried: the log is the latest run's
    manifest = Manifest(out)
    done = _resume(out, manifest, [f.path for f in files])
    todo = [f for f in files if f.path not in done]
    units = make_units(todo, group=batch_size)
    stamps = {f.path: stamp(f.path) for f in todo}
    by_id = {u.uid: u for u in units}
    sink = _Sink(out, manifest, stamps, strict)

    t0 = time.perf_counter()
    if local is not None:
        blocks = _in_process(units, local)
    else:  # nothing left to do (a finished job rerun) needs no Ray start-up
        blocks = _ray(units, spec, ray or "local", workers) if units else iter(())

    first: list[float] = []  # when the first results arrived: start-up (Ray, actors, model load) before it

    def completed() -> Iterator[str]:
        for block in blocks:
            if not first:
                first.append(time.perf_counter() - t0)
            yield from sink.add(block, by_id)

    finished = set(track(completed(), "classifying" if mode == "wafer" else "embedding", total=len(units)))
    for uid in by_id.keys() - finished:  # units whose files held no maps at all
        sink.finish(by_id[uid], None)
    seconds = time.perf_counter() - t0
    return {
        "out": str(out),
        "model": spec.model_dir,
        "executor": "in-process" if ray is None else f"ray ({ray})",
        "workers": workers,
        "inputs": len(files),
        "skipped_done": len(done),
        "processed": len(todo) - len({e["file"] for e in sink.errors}),
        "failed": len(sink.errors),
        "rows": sink.rows,
        "parts_written": sink.parts,
        "seconds": round(seconds, 3),
        "rows_per_s": round(sink.rows / seconds, 1) if seconds > 0 else None,
        "first_results_after_s": round(first[0], 3) if first else None,
        "driver_peak_rss_mb": round(_peak_rss_mb(), 1),
        "errors_file": str(out / ERRORS_FILE) if sink.errors else None,
        "errors": sink.errors,
    }
