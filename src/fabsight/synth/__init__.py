"""Synthetic WM-811K / MixedWM38-like wafer maps with known truth (tests, demos, training data)."""

from fabsight.synth.generator import (
    DEFAULT_NOISE,
    MIXED_COMBINATIONS,
    PROFILES,
    generate_dataset,
    generate_map,
    labels_of,
    parse_pattern,
)
from fabsight.synth.geometry import polar_coords, rim_mask, wafer_mask
from fabsight.synth.patterns import PARAMS

__all__ = [
    "DEFAULT_NOISE",
    "MIXED_COMBINATIONS",
    "PARAMS",
    "PROFILES",
    "generate_dataset",
    "generate_map",
    "labels_of",
    "parse_pattern",
    "polar_coords",
    "rim_mask",
    "wafer_mask",
]
