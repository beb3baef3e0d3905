"""Provenance: series digests, pair keys, the provenance record and MLflow tracking.

Only this package and the job entry points call MLflow. ``priors.provenance.tracking``
imports ``mlflow`` inside its methods, so importing this package stays fast.
"""

from __future__ import annotations

from priors.provenance.digests import mlflow_digest, pair_key, series_digest
from priors.provenance.record import ProvenanceRecord
from priors.provenance.tracking import DatasetRef, JobTracker, PairLog

__all__ = [
    "DatasetRef",
    "JobTracker",
    "PairLog",
    "ProvenanceRecord",
    "mlflow_digest",
    "pair_key",
    "series_digest",
]
