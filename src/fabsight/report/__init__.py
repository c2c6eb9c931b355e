"""Pictures and reports of wafer maps and results."""
