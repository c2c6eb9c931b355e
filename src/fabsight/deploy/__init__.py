"""Deployment: ONNX export checked against PyTorch, and predictors that run without PyTorch.

Public API::

    from fabsight.deploy import export_onnx, load_predictor, load_anomaly_model

    export_onnx(model_dir, int8=True)                 # wafer, die or anomaly model: graph(s) + card.json
    clf = load_predictor(model_dir, runtime="onnx")   # wafer: "torch" | "onnx" | "onnx-int8"
    clf.predict(maps); clf.predict_proba(maps); clf.predict_details(maps); clf.embed(maps)
    DieModel(model_dir, runtime="onnx").predict(images)          # die (fabsight.die.model)
    load_anomaly_model(model_dir, "onnx").score_samples(images)  # anomaly

Neither module imports torch at import time; ``runtime`` never imports it at all, so a
deployment needs only ONNX Runtime (the tests check this in a subprocess).
"""

from fabsight.deploy.anomaly import load_anomaly_model
from fabsight.deploy.export import export_onnx
from fabsight.deploy.runtime import load_predictor
from fabsight.runtimes import RUNTIMES

__all__ = ["RUNTIMES", "export_onnx", "load_anomaly_model", "load_predictor"]
