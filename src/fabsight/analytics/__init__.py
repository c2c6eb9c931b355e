"""Yield analytics a yield engineer runs every day over wafer maps of any format.

Paretos of defects (class, size, wafer, lot, rough bin, step) and of sort bins, stacked maps
(fail or bin frequency per die position over a lot) and repeating defects (die- and
reticle-relative). Each module works on :class:`fabsight.types.WaferMap` lists and returns
plain results with a ``to_json``; the CLI, REST API and ``ask`` stay thin layers over them.
"""
