"""Pretrained feature extractors shared by die classification, anomaly detection, inspection and curation.

    from fabsight.backbones import create_backbone
    bb = create_backbone("dinov2_vits14")          # or "efficientnet_lite0", "timm:<model>", a directory
    x = bb.preprocess(images)                      # uint8 grey/RGB arrays of any size
    bb.embed(x)                                    # B×D pooled embedding (cfg.default_layers)
    bb.features(x, ["blocks.6"])                   # B×C×h×w maps for patch methods
"""

from fabsight.backbones import zoo as _zoo  # noqa: F401  (registers the named backbones)
from fabsight.backbones.base import Backbone, BackboneConfig
from fabsight.backbones.registry import (
    create_backbone,
    list_backbones,
    load_backbone_dir,
    register_backbone,
    save_backbone_dir,
)

__all__ = [
    "Backbone",
    "BackboneConfig",
    "create_backbone",
    "list_backbones",
    "load_backbone_dir",
    "register_backbone",
    "save_backbone_dir",
]
