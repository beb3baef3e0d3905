"""The catalog of sources, files, patient records, studies, series and instances."""

from __future__ import annotations

from priors.catalog.catalog import Catalog
from priors.catalog.rows import (
    OUTCOMES,
    ConflictRow,
    FileOutcome,
    IngestReport,
    InstanceRow,
    PatientRecordRow,
    SeriesRow,
    StudyRow,
)

__all__ = [
    "OUTCOMES",
    "Catalog",
    "ConflictRow",
    "FileOutcome",
    "IngestReport",
    "InstanceRow",
    "PatientRecordRow",
    "SeriesRow",
    "StudyRow",
]
