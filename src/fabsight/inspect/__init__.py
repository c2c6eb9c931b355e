"""Golden-template inspection (MISSION D4): register a test image to its defect-free
template, find every defect, box it, classify it and count it.

Modules: :mod:`.register` (phase correlation + ECC), :mod:`.detect` (tolerant
difference, candidates, features), :mod:`.model` (the learned inspector),
:mod:`.dataset` (DeepPCB layout), :mod:`.evaluate` (DeepPCB protocol), :mod:`.render`.
"""

from fabsight.inspect.dataset import DEFECT_TYPES, Box, Pair, load_pair, read_annotations, read_list
from fabsight.inspect.evaluate import evaluate
from fabsight.inspect.model import Detection, InspectionResult, TemplateInspector, inspect_pair, load_inspector
from fabsight.inspect.register import Alignment, align, warp_template

__all__ = [
    "DEFECT_TYPES",
    "Alignment",
    "Box",
    "Detection",
    "InspectionResult",
    "Pair",
    "TemplateInspector",
    "align",
    "evaluate",
    "inspect_pair",
    "load_inspector",
    "load_pair",
    "read_annotations",
    "read_list",
    "warp_template",
]
