"""Intensity preprocessing shared by training and inference (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["normalise_hu", "stack_inputs"]


def normalise_hu(volume: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Clip a CT volume to ``window`` (HU) and map it linearly onto [-1, 1]."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(
            f"HU window {tuple(window)} is invalid, expected (low, high) with low < high"
        )
    clipped = np.clip(np.asarray(volume, dtype=np.float32), low, high)
    return (clipped - low) * np.float32(2.0 / (high - low)) - np.float32(1.0)


def stack_inputs(current: np.ndarray, prior: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Build the (3, z, y, x) network input: current, prior and their difference.

    The difference is taken after both volumes went through the same window, so it
    is bounded and a saturated region (air, bone) differs by 0.
    """
    current_normalised = normalise_hu(current, window)
    prior_normalised = normalise_hu(prior, window)
    return np.stack([current_normalised, prior_normalised, current_normalised - prior_normalised])
