"""A deterministic synthetic multi-site longitudinal chest-CT cohort.

`write_cohort` writes the cohort as DICOM (see `priors.synthetic.cohort` for what it
contains), and `priors.synthetic.anatomy` is the analytic phantom it samples.
"""

from __future__ import annotations

from priors.synthetic.anatomy import (
    Anatomy,
    Lesion,
    lesion_index,
    random_anatomy,
    random_lung_lesion,
    sample_hu,
)
from priors.synthetic.cohort import CohortInfo, write_cohort

__all__ = [
    "Anatomy",
    "CohortInfo",
    "Lesion",
    "lesion_index",
    "random_anatomy",
    "random_lung_lesion",
    "sample_hu",
    "write_cohort",
]
