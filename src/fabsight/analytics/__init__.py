"""Yield analytics over wafer results: what a yield engineer asks once patterns are classified.

Paretos, stacked maps and repeaters describe one data source; ``align`` pairs inline
inspection with sort results of the same wafers, ``killratio`` measures which defects kill
dies, and ``commonality`` finds the tools, chambers, slots and time windows that flagged
wafers share. Each module works on :class:`fabsight.types.WaferMap` and plain records, so the
CLI, REST API and ``ask`` call the same functions.
"""
