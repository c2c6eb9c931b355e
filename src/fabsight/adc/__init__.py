"""Automatic defect classification (ADC): KLARF defects → review images → class numbers → KLARF.

The library API the CLI (``fabsight adc``), batch jobs and the service build on:
:func:`classify_klarf` returns an :class:`AdcResult` (per-defect rows, counts per wafer and
class), :func:`write_classified` writes the classified KLARF atomically.
"""

from fabsight.adc.classify import (
    COMBINE_RULE,
    AdcResult,
    DefectRow,
    assign_numbers,
    classify_klarf,
    load_die_model,
    write_classified,
)

__all__ = ["COMBINE_RULE", "AdcResult", "DefectRow", "assign_numbers", "classify_klarf", "load_die_model",
           "write_classified"]
