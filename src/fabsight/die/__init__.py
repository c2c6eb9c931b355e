"""Die-level defect classification: foundation-model features, probes, hybrid and hierarchical classifiers."""
