"""fabsight: automatic defect classification for semiconductor fabs.

``fabsight.load(model_dir, runtime="torch")`` loads any model directory fabsight wrote.
"""

from typing import Any

__version__ = "0.1.0"


def load(model_dir: Any, runtime: str = "torch", **options: Any) -> Any:
    """The predictor for any fabsight model directory (see :func:`fabsight.artifacts.load`)."""
    from fabsight.artifacts import load as load_model

    return load_model(model_dir, runtime, **options)
