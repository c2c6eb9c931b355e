"""Knowledge distillation: small, fast students trained from a teacher on unlabelled data.

Public API::

    from fabsight.distill import WaferDistiller

    d = WaferDistiller("models/teacher", size="tiny").fit(unlabelled_maps)
    d.student_.save("models/student")      # an ordinary wafer-pattern model directory
    d.compression_                          # parameters / FLOPs of teacher and student
"""

from fabsight.distill.wafer import STUDENT_SIZES, WaferDistiller, synthetic_classes

__all__ = ["STUDENT_SIZES", "WaferDistiller", "synthetic_classes"]
