"""Body masks that keep air, the table and empty field of view out of the metric.

Masks are built on a coarse grid (about ``MASK_SPACING_MM`` voxels), because ITK
evaluates a metric mask at physical points, so its grid need not match the image's.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from priors.registration.presets import CT_BODY_THRESHOLD_HU, MR_BODY_FRACTION_OF_P99

__all__ = ["MASK_SPACING_MM", "METRIC_MASK_MARGIN_MM", "body_mask", "coarse_grid", "metric_mask"]

logger = logging.getLogger(__name__)

# Voxel size of the mask grid: fine enough to follow the skin, coarse enough that the
# morphology below takes milliseconds on a 512 x 512 x 300 CT.
MASK_SPACING_MM = 2.0

# Margin added around the body for the metric mask, so the skin-air edge, which
# carries most of the signal in a uniform phantom or a smooth body outline, is
# sampled on both sides. Wider margins start to include a CT table under the patient.
METRIC_MASK_MARGIN_MM = 8.0

# Opening radius in mask voxels: removes a CT table and MR ghosting a few mm thick.
OPENING_RADIUS = 1

# ITK's ball of radius 1 (``BinaryMorphologicalOpening(mask, [1, 1, 1])``) is the
# 18-neighbourhood: faces and edges, not corners. SciPy opens with it in 0.1 s where
# ITK took 0.45 s on a 170 x 170 x 200 mask grid, with the same result when erosion
# treats the outside as body, as ITK's does (a test compares the two).
OPENING_STRUCTURE = ndimage.generate_binary_structure(3, 2)


def coarse_grid(image: sitk.Image, spacing_mm: float = MASK_SPACING_MM) -> sitk.Image:
    """Return ``image`` averaged down to voxels of about ``spacing_mm`` along each axis."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    if all(f == 1 for f in factors):
        return sitk.Cast(image, sitk.sitkFloat32)
    # Shrunk in the image's own type and cast afterwards, so a large CT is never
    # copied as float32 at full size; an integer image then averages to whole values.
    return sitk.Cast(sitk.BinShrink(image, factors), sitk.sitkFloat32)


def body_mask(image: sitk.Image, *, method: str) -> sitk.Image:
    """Segment the body (or phantom) of a volume as a uint8 mask on a coarse grid.

    Parameters
    ----------
    image
        3-D volume in HU (CT) or scanner units (MR).
    method
        "ct" thresholds at ``CT_BODY_THRESHOLD_HU``; "mr" at
        ``MR_BODY_FRACTION_OF_P99`` of the 99th percentile.

    Returns
    -------
    SimpleITK.Image
        1 inside the largest connected body component (holes filled), else 0. An
        image with nothing above the threshold gives an all-zero mask, which the
        caller reports as no overlap.
    """
    coarse = coarse_grid(image)
    values = sitk.GetArrayViewFromImage(coarse)
    if method == "ct":
        threshold = CT_BODY_THRESHOLD_HU
    elif method == "mr":
        threshold = MR_BODY_FRACTION_OF_P99 * float(np.percentile(values, 99))
    else:
        raise ValueError(f"body mask method {method!r} is not supported, expected 'ct' or 'mr'")

    mask = sitk.Cast(coarse > threshold, sitk.sitkUInt8)
    opened = _opening(mask)
    # An opening can erase a thin body (a few slices of a thick-slice series).
    if np.any(sitk.GetArrayViewFromImage(opened)):
        mask = opened
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    largest = sitk.Cast(components == 1, sitk.sitkUInt8)
    filled = sitk.BinaryFillhole(largest)
    logger.debug(
        "body mask (%s, threshold %.1f): %d of %d coarse voxels",
        method,
        threshold,
        int(np.count_nonzero(sitk.GetArrayViewFromImage(filled))),
        int(values.size),
    )
    return filled


def _opening(mask: sitk.Image) -> sitk.Image:
    inside = sitk.GetArrayViewFromImage(mask).astype(bool)
    eroded = ndimage.binary_erosion(
        inside, OPENING_STRUCTURE, iterations=OPENING_RADIUS, border_value=1
    )
    opened = ndimage.binary_dilation(eroded, OPENING_STRUCTURE, iterations=OPENING_RADIUS)
    image = sitk.GetImageFromArray(opened.astype(np.uint8))
    image.CopyInformation(mask)
    return image


def metric_mask(body: sitk.Image, margin_mm: float = METRIC_MASK_MARGIN_MM) -> sitk.Image:
    """Return ``body`` dilated by about ``margin_mm`` (at least one voxel per axis)."""
    radius = [max(1, int(round(margin_mm / s))) for s in body.GetSpacing()]
    return sitk.BinaryDilate(body, radius)
