"""Intensity preprocessing shared by training and inference (numpy and scipy only).

The network input has up to seven channels, named in the bundle's ``channels`` list:

``current`` and ``prior``
    Each volume through ``normalise_ct``.
``current - prior``
    Their voxel-wise difference.
``current outside prior range`` and ``prior outside current range``
    Neighbourhood-matched differences. For each voxel of the current volume, the
    prior's lowest and highest values within a small box around the same position
    form a range. The channel is how far the current value lies outside that range:
    positive above it, negative below it, zero inside. The second channel swaps the
    roles. An edge that a residual misregistration of a few millimetres moved is
    inside the range, because the prior has both of its sides nearby, and gives
    zero. Tissue that one time point has and the other lacks anywhere nearby stays.
    Radiology's temporal subtraction uses this idea (voxel matching) to suppress
    misregistration artefacts.
``current outside prior wide range`` and ``prior outside current wide range``
    The same over a larger box. A small box keeps the rim of a lesion that grew by
    a millimetre or two. A large one also absorbs ribs and vessels that breathing
    or a rotation moved further. The network weighs the two.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["CHANNELS", "matched_difference", "normalise_ct", "stack_inputs"]

# asinh(x) / 4 keeps the HU range of CT (-1024 to 3071) within about [-1, 1.2].
ASINH_DIVISOR = 4.0

CHANNELS = (
    "current",
    "prior",
    "current - prior",
    "current outside prior range",
    "prior outside current range",
    "current outside prior wide range",
    "prior outside current wide range",
)

# The first bundle had these three channels and no neighbourhood settings.
LEGACY_CHANNELS = ("current", "prior", "current - prior")


def normalise_ct(volume: np.ndarray, *, center_hu: float, scale_hu: float) -> np.ndarray:
    """Map CT values in HU through ``asinh((hu - center_hu) / scale_hu) / 4``.

    The curve is linear within about ``scale_hu`` of ``center_hu`` and logarithmic
    beyond. Centred on soft tissue, it gives a 50 HU soft-tissue contrast about as
    much range as a 600 HU lung-nodule contrast, where a linear window from lung to
    bone would shrink the former twelvefold.
    """
    if not scale_hu > 0:
        raise ValueError(f"scale_hu is {scale_hu}, expected a positive number of HU")
    shifted = (np.asarray(volume, dtype=np.float32) - np.float32(center_hu)) / np.float32(scale_hu)
    return np.arcsinh(shifted) / np.float32(ASINH_DIVISOR)


def matched_difference(
    moving: np.ndarray, reference: np.ndarray, *, footprint: Sequence[int]
) -> np.ndarray:
    """Return how far each ``moving`` value lies outside ``reference``'s local range.

    The range at a voxel is the minimum and maximum of ``reference`` over a box of
    ``footprint`` voxels (z, y, x) centred there. Values inside the range give 0,
    values above it a positive distance, values below a negative one.
    """
    size = tuple(int(s) for s in footprint)
    if len(size) != 3 or any(s < 1 for s in size):
        raise ValueError(
            f"footprint is {footprint}, expected three positive voxel counts (z, y, x)"
        )
    low = ndimage.minimum_filter(reference, size=size, mode="nearest")
    high = ndimage.maximum_filter(reference, size=size, mode="nearest")
    return (moving - np.clip(moving, low, high)).astype(np.float32, copy=False)


def stack_inputs(
    current: np.ndarray, prior: np.ndarray, preprocessing: Mapping[str, Any]
) -> np.ndarray:
    """Build the (channels, z, y, x) float32 network input of a registered pair.

    ``preprocessing`` holds ``center_hu`` and ``scale_hu`` of ``normalise_ct`` and
    optionally ``channels`` (a list drawn from ``CHANNELS``, in network order;
    default the first bundle's three). The neighbourhood channels also need
    ``match_footprint_voxels`` (z, y, x), the wide ones ``match_wide_footprint_voxels``,
    and both ``match_smoothing_voxels``, the sigma of a Gaussian applied to both
    mapped volumes first so that noise does not widen the ranges. Differences are
    taken after the mapping.
    """
    center_hu = float(preprocessing["center_hu"])
    scale_hu = float(preprocessing["scale_hu"])
    names = tuple(preprocessing.get("channels", LEGACY_CHANNELS))
    unknown = [name for name in names if name not in CHANNELS]
    if unknown:
        raise ValueError(f"unknown input channels {unknown}; known: {list(CHANNELS)}")
    current_normalised = normalise_ct(current, center_hu=center_hu, scale_hu=scale_hu)
    prior_normalised = normalise_ct(prior, center_hu=center_hu, scale_hu=scale_hu)
    channels: dict[str, Callable[[], np.ndarray]] = {
        "current": lambda: current_normalised,
        "prior": lambda: prior_normalised,
        "current - prior": lambda: current_normalised - prior_normalised,
    }
    if any(name.endswith("range") for name in names):
        sigma = float(preprocessing.get("match_smoothing_voxels", 0.0))
        if sigma > 0:
            current_smooth = ndimage.gaussian_filter(current_normalised, sigma, mode="nearest")
            prior_smooth = ndimage.gaussian_filter(prior_normalised, sigma, mode="nearest")
        else:
            current_smooth, prior_smooth = current_normalised, prior_normalised
        for suffix, key in (
            ("range", "match_footprint_voxels"),
            ("wide range", "match_wide_footprint_voxels"),
        ):
            if (
                f"current outside prior {suffix}" not in names
                and f"prior outside current {suffix}" not in names
            ):
                continue
            if key not in preprocessing:
                raise ValueError(f"the {suffix} channels need {key} in the preprocessing settings")
            footprint = preprocessing[key]
            channels[f"current outside prior {suffix}"] = functools.partial(
                matched_difference, current_smooth, prior_smooth, footprint=footprint
            )
            channels[f"prior outside current {suffix}"] = functools.partial(
                matched_difference, prior_smooth, current_smooth, footprint=footprint
            )
    return np.stack([channels[name]() for name in names]).astype(np.float32, copy=False)
