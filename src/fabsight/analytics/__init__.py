"""Yield analytics a yield engineer runs every day, over wafer results of any format.

Paretos of defects (class, size, wafer, lot, rough bin, step) and of sort bins, stacked maps
(fail or bin frequency per die position over a lot) and repeating defects (die- and
reticle-relative) describe one data source; ``align`` pairs inline inspection with sort
results of the same wafers, ``killratio`` measures which defects kill dies, and
``commonality`` finds the tools, chambers, slots and time windows that flagged wafers share.
Each module works on :class:`fabsight.types.WaferMap` lists and plain records and returns
results with a ``to_json``; the CLI, REST API and ``ask`` stay thin layers over them.
"""
