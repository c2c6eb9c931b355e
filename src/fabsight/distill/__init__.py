"""Knowledge distillation: small, fast students trained from a teacher on unlabelled data.

Public API::

    from fabsight.distill import WaferDistiller

    d = WaferDistiller().fit(unlabelled_maps)   # the shipped model → a ≥10× smaller student
    d = WaferDistiller("models/teacher", size="tiny").fit(unlabelled_maps)
    d.student_.save("models/student")      # an ordinary wafer-pattern model directory
    d.compression_                          # parameters / FLOPs of teacher and student
"""

from fabsight.distill.wafer import MIN_COMPRESSION, STUDENT_SIZES, WaferDistiller, student_size, synthetic_classes

__all__ = ["MIN_COMPRESSION", "STUDENT_SIZES", "WaferDistiller", "student_size", "synthetic_classes"]
