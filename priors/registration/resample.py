"""Resampling of a registered prior onto the grid of the current volume."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from priors.registration._fields import sampled_transform

__all__ = ["CT_BACKGROUND_HU", "background_value", "resample_onto"]

# Air in HU: what a CT prior shows outside its own field of view.
CT_BACKGROUND_HU = -1024.0

_IMAGE_INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}


def background_value(prior: sitk.Image, modality: str) -> float:
    """Return the fill value outside the prior's field of view.

    -1024 HU for CT; 0 for MR, or the prior's minimum when that is negative (phase
    images, subtracted series), so the fill never lies inside the value range.
    """
    if modality.upper() == "CT":
        return CT_BACKGROUND_HU
    minimum = float(np.min(sitk.GetArrayViewFromImage(prior)))
    return min(0.0, minimum)


def resample_onto(
    current: sitk.Image,
    prior: sitk.Image,
    transform: sitk.Transform,
    *,
    kind: str = "image",
    modality: str = "CT",
    interpolator: str = "linear",
) -> sitk.Image:
    """Resample ``prior`` onto the grid of ``current`` through ``transform``.

    Parameters
    ----------
    current
        Defines the output grid (size, spacing, origin, direction).
    prior
        Volume or label map to resample.
    transform
        Maps current points to prior points (``RegistrationResult.transform``). A
        B-spline inside it is sampled as a displacement field first
        (``deformable.sampled_transform``).
    kind
        "image": interpolated with ``interpolator``, output float32. "label":
        nearest neighbour, output in the prior's pixel type, background 0.
    modality
        Modality of the prior; decides the background of images (``background_value``).
    interpolator
        "linear" or "bspline" (third order; may overshoot at edges), images only.

    Returns
    -------
    SimpleITK.Image
        On the current grid; voxels outside the prior's field of view hold the
        background value.
    """
    transform = sampled_transform(transform, current)
    if kind == "label":
        return sitk.Resample(
            prior, current, transform, sitk.sitkNearestNeighbor, 0, prior.GetPixelID()
        )
    if kind != "image":
        raise ValueError(f"resample kind {kind!r} is not supported, expected 'image' or 'label'")
    if interpolator not in _IMAGE_INTERPOLATORS:
        raise ValueError(
            f"interpolator {interpolator!r} is not supported, "
            f"expected one of {', '.join(sorted(_IMAGE_INTERPOLATORS))}"
        )
    return sitk.Resample(
        prior,
        current,
        transform,
        _IMAGE_INTERPOLATORS[interpolator],
        background_value(prior, modality),
        sitk.sitkFloat32,
    )
