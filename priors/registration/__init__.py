"""Registration of a prior volume onto the current volume with SimpleITK.

Works on ``SimpleITK.Image`` volumes in LPS mm; it reads no DICOM and calls no MLflow.
``register`` returns a ``RegistrationResult`` whose transform maps current points to
prior points; ``resample_onto`` puts the prior on the current grid with it.
"""

from __future__ import annotations

from priors.registration._fields import has_bspline, sampled_transform
from priors.registration.output import read_transform, write_overlay_png, write_transform
from priors.registration.presets import MODALITY_PAIRS, RegistrationOptions, preset
from priors.registration.resample import resample_onto
from priors.registration.result import RegistrationResult, transform_matrix_lps
from priors.registration.rigid import RegistrationError, inverse_consistency_mm, register

__all__ = [
    "MODALITY_PAIRS",
    "RegistrationError",
    "RegistrationOptions",
    "RegistrationResult",
    "has_bspline",
    "inverse_consistency_mm",
    "preset",
    "read_transform",
    "register",
    "resample_onto",
    "sampled_transform",
    "transform_matrix_lps",
    "write_overlay_png",
    "write_transform",
]
