"""Fab-scale batch inference and embedding extraction, in-process or on Ray (MISSION M6).

Public API::

    from fabsight.scale import run_batch
    summary = run_batch(["lots/", "sort/*.stdf"], "results.parquet", model="models/wafer",
                        ray="local", workers=2, explain=False, embed=False, runtime="torch")
    summary = run_batch(["die_images/"], "emb.parquet", backbone="efficientnet_lite0")

Modules: ``plan`` (inputs → work units, resume manifest), ``work`` (the per-batch
:class:`~fabsight.scale.work.BatchWorker` both executors run), ``job`` (executors and the
Parquet sink). The output is a directory of Parquet part files any Parquet reader opens
(``pandas.read_parquet("results.parquet")``).
"""

from fabsight.scale.job import run_batch

__all__ = ["run_batch"]
