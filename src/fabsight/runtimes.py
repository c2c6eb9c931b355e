"""Runtime names and ONNX Runtime sessions, shared by every task's predictors.

A model runs in ``torch`` or, once exported (``fabsight export --onnx``), in ``onnx`` /
``onnx-int8`` without PyTorch. The wafer, die and anomaly predictors all check the runtime
name, open sessions and find their graph through these few functions; they live below
every task package so a model package can offer its ONNX twin without importing
:mod:`fabsight.deploy` (which exports models and so imports them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fabsight.artifacts import ModelCard
from fabsight.errors import FabsightError, ModelError

#: ``torch``: the trained PyTorch model; ``onnx``: the fp32 graph; ``onnx-int8``: the quantized one.
RUNTIMES: tuple[str, ...] = ("torch", "onnx", "onnx-int8")


def check_runtime(runtime: str) -> None:
    """A one-line user error for a runtime that is not one of :data:`RUNTIMES`."""
    if runtime not in RUNTIMES:
        raise FabsightError(None, f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


def session(path: str | os.PathLike[str], n_threads: int) -> Any:
    """An ONNX Runtime CPU session using ``n_threads`` threads for each operator."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n_threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types for unreadable files
        raise ModelError(path, f"ONNX Runtime cannot load the graph ({str(exc).splitlines()[0]})") from None


def onnx_section(model_dir: str | os.PathLike[str], card: ModelCard, int8: bool) -> tuple[Path, dict[str, Any]]:
    """The graph file to run and the card's ``onnx`` section; a clear error when not exported."""
    info = card.extra.get("onnx")
    role = "onnx_int8" if int8 else "onnx"
    if not info or role not in card.files:
        flag = " --int8" if int8 else ""
        raise ModelError(
            model_dir, f"has no {'INT8 ' if int8 else ''}ONNX graph: run `fabsight export {model_dir} --onnx{flag}`"
        )
    return Path(model_dir) / card.files[role], info
