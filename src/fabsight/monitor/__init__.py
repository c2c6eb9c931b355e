"""Lot monitoring: wafer features, drift tests, control charts and alarms (MISSION W10)."""

from fabsight.monitor.charts import ControlChart, p_chart, western_electric
from fabsight.monitor.drift import DriftResult, drift_test
from fabsight.monitor.features import GEOMETRIC_FEATURES, FeatureTable, extract_features, geometric_features
from fabsight.monitor.lots import MonitorResult, group_lots, monitor_lots

__all__ = [
    "GEOMETRIC_FEATURES",
    "ControlChart",
    "DriftResult",
    "FeatureTable",
    "MonitorResult",
    "drift_test",
    "extract_features",
    "geometric_features",
    "group_lots",
    "monitor_lots",
    "p_chart",
    "western_electric",
]
