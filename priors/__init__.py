"""Longitudinal context for imaging AI.

``priors`` finds a patient's earlier studies across sources, builds comparable
volumes, registers each prior onto the current scan, runs change detection on the
pairs and records every input with its provenance.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
