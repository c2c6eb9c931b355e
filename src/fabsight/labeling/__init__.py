"""Auto-labelling with a human review queue (MISSION W9)."""

from fabsight.labeling.autolabel import AutoLabelSummary, autolabel, review_scores
from fabsight.labeling.review import (
    QueueItem,
    accept,
    classes,
    correct,
    export_accepted,
    get_item,
    list_queue,
    load_map,
)

__all__ = [
    "AutoLabelSummary",
    "QueueItem",
    "accept",
    "autolabel",
    "classes",
    "correct",
    "export_accepted",
    "get_item",
    "list_queue",
    "load_map",
    "review_scores",
]
