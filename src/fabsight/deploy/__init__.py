"""Deployment: ONNX export checked against PyTorch, and predictors that run without PyTorch.

Public API::

    from fabsight.deploy import export_onnx, load_predictor

    export_onnx(model_dir, int8=True)                 # writes model.onnx (+ model.int8.onnx), updates card.json
    clf = load_predictor(model_dir, runtime="onnx")   # "torch" | "onnx" | "onnx-int8"
    clf.predict(maps); clf.predict_proba(maps); clf.predict_details(maps); clf.embed(maps)

Neither module imports torch at import time; ``runtime`` never imports it at all, so a
deployment needs only ONNX Runtime (the tests check this in a subprocess).
"""

from fabsight.deploy.export import export_onnx
from fabsight.deploy.runtime import RUNTIMES, load_predictor

__all__ = ["RUNTIMES", "export_onnx", "load_predictor"]
