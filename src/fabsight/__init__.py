"""fabsight: automatic defect classification for semiconductor fabs."""

__version__ = "0.1.0"
