"""Registered subtraction: the reference method any change model must beat."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from priors.change.lesions import remove_small_components
from priors.change.output import NEW_OR_GROWN, RESOLVED_OR_SHRUNK, ChangeOutput

__all__ = [
    "BASELINE_K_SIGMA",
    "BASELINE_MIN_VOLUME_MM3",
    "BASELINE_SMOOTHING_MM",
    "body_mask",
    "robust_sigma",
    "subtraction_baseline",
]

logger = logging.getLogger(__name__)

# Threshold in robust noise standard deviations of the smoothed difference: at 4 sigma
# a Gaussian field gives about 6e-5 false voxels per voxel before the size filter.
BASELINE_K_SIGMA = 4.0

# Components smaller than a 4 mm sphere (about 34 mm^3) are dropped as noise.
BASELINE_MIN_VOLUME_MM3 = 34.0

# Gaussian smoothing of the difference (sigma, mm) before thresholding. It lowers
# white noise about threefold on a 1.5 mm grid and keeps lesions of 4 mm and up.
BASELINE_SMOOTHING_MM = 1.0

# CT voxels above this are tissue; the lungs inside are added by filling holes.
CT_BODY_THRESHOLD_HU = -500.0

# MAD of a normal distribution times this is its standard deviation.
MAD_TO_SIGMA = 1.4826


def robust_sigma(values: np.ndarray) -> float:
    """Return the noise standard deviation estimated from the median absolute deviation."""
    median = np.median(values)
    return float(MAD_TO_SIGMA * np.median(np.abs(values - median)))


def body_mask(volume: np.ndarray, *, modality: str = "CT") -> np.ndarray:
    """Return a boolean (z, y, x) mask of the body, lungs included.

    CT uses a fixed HU threshold; other modalities use Otsu's threshold, since
    their intensities are not calibrated. Holes are filled slice by slice, so air
    spaces enclosed in an axial slice (lungs, bowel) count as body.
    """
    if modality.upper() == "CT":
        tissue = volume > CT_BODY_THRESHOLD_HU
    else:
        tissue = volume > _otsu_threshold(volume)
    filled = np.stack([ndimage.binary_fill_holes(axial) for axial in tissue])
    if not filled.any():
        # A patch wholly inside the lungs or wholly outside: use every voxel.
        return np.ones_like(tissue)
    return filled


def _otsu_threshold(volume: np.ndarray, bins: int = 256) -> float:
    histogram, edges = np.histogram(volume, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(histogram)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(histogram * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between))])


def _robust_z_score(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    inside = volume[mask]
    sigma = robust_sigma(inside) or 1.0
    return (volume - np.median(inside)) / sigma


def subtraction_baseline(
    current: np.ndarray,
    prior: np.ndarray,
    *,
    spacing: Sequence[float],
    modality: str = "CT",
    mask: np.ndarray | None = None,
    k_sigma: float = BASELINE_K_SIGMA,
    min_volume_mm3: float = BASELINE_MIN_VOLUME_MM3,
    smoothing_mm: float = BASELINE_SMOOTHING_MM,
) -> ChangeOutput:
    """Detect change by thresholding the difference of two registered volumes.

    The difference ``current - prior`` is smoothed, and its noise standard deviation
    is estimated from the median absolute deviation inside the body. Voxels beyond
    ``k_sigma`` of it are change, and the sign gives the class: positive is new or
    grown tissue (1), negative resolved or shrunk tissue (2). Components under
    ``min_volume_mm3`` are dropped.

    NOTE: a new lesion darker than its surroundings (a cyst in soft tissue) gets
    class 2, since the sign is the only cue this method has.

    Parameters
    ----------
    current, prior
        (z, y, x) volumes on the same grid, the prior already registered.
    spacing
        Voxel size ``(sx, sy, sz)`` in mm.
    modality
        ``"CT"`` works in HU. Any other modality is not intensity-calibrated, so
        each volume is first turned into a robust z-score inside its body mask.
    mask
        Optional boolean body mask; computed from ``current`` when omitted.

    Returns
    -------
    ChangeOutput
        ``probability`` is ``|d| / (|d| + k sigma)``, which is 0.5 at the threshold.

    Raises
    ------
    ValueError
        When the volumes or the mask differ in shape.
    """
    if current.shape != prior.shape:
        raise ValueError(f"current shape {current.shape} differs from prior shape {prior.shape}")
    if mask is not None and mask.shape != current.shape:
        raise ValueError(f"mask shape {mask.shape} differs from volume shape {current.shape}")
    current = np.asarray(current, dtype=np.float32)
    prior = np.asarray(prior, dtype=np.float32)
    if mask is None:
        mask = body_mask(current, modality=modality)

    normalised = modality.upper() != "CT"
    if normalised:
        current = _robust_z_score(current, body_mask(current, modality=modality))
        prior = _robust_z_score(prior, body_mask(prior, modality=modality))

    sigma_voxels = [smoothing_mm / s for s in spacing[::-1]]
    difference = ndimage.gaussian_filter(current - prior, sigma=sigma_voxels)
    sigma = robust_sigma(difference[mask])
    if sigma == 0.0:
        # Identical inputs have nothing to detect, and any threshold above 0 keeps it so.
        sigma = float(np.finfo(np.float32).eps)
    threshold = k_sigma * sigma

    labels = np.zeros(current.shape, dtype=np.uint8)
    labels[(difference > threshold) & mask] = NEW_OR_GROWN
    labels[(difference < -threshold) & mask] = RESOLVED_OR_SHRUNK
    labels = remove_small_components(labels, spacing=spacing, min_volume_mm3=min_volume_mm3)
    magnitude = np.abs(difference)
    probability = (magnitude / (magnitude + threshold)).astype(np.float32)

    parameters = {
        "modality": modality,
        "intensity_normalisation": "robust z-score inside the body" if normalised else "none (HU)",
        "k_sigma": k_sigma,
        "noise_sigma": sigma,
        "threshold": threshold,
        "smoothing_mm": smoothing_mm,
        "min_volume_mm3": min_volume_mm3,
    }
    logger.debug("subtraction baseline: noise sigma %.3g, threshold %.3g", sigma, threshold)
    return ChangeOutput(
        probability=probability, labels=labels, method="baseline", parameters=parameters
    )
