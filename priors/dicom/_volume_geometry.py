"""Slice positions along the stack normal: spacing, gaps, shear and resampling."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from priors.dicom._volume_frames import Frame
from priors.dicom._volume_stacks import slice_normal

__all__ = [
    "SHEAR_TOLERANCE_PIXELS",
    "SPACING_TOLERANCE_FRACTION",
    "SPACING_TOLERANCE_MM",
    "SliceLayout",
    "measure_layout",
    "resample_along_normal",
    "spacing_tolerance",
    "uniform_blocks",
]

# Steps between slice positions that differ by less than the larger of these are equal.
# Image Position (Patient) is typically written to 1e-3..1e-2 mm, so 0.02 mm absorbs rounding,
# while 2 % of the step still flags a 5.0 mm step among 5.2 mm ones.
SPACING_TOLERANCE_MM = 0.02
SPACING_TOLERANCE_FRACTION = 0.02

# In-plane offsets between slices below this fraction of a pixel are rounding, not shear.
SHEAR_TOLERANCE_PIXELS = 0.05


@dataclass
class SliceLayout:
    """Layout of the slices of one stack, measured from their Image Position (Patient)."""

    row_cosine: np.ndarray  # (3,) direction of increasing column index
    column_cosine: np.ndarray  # (3,) direction of increasing row index
    normal: np.ndarray  # (3,) row cosine × column cosine
    positions_mm: np.ndarray  # (N,) projection of each position on the normal, ascending
    offsets_mm: np.ndarray  # (N, 2) in-plane offset from the first slice, (row, column) cosine
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm

    @property
    def is_sheared(self) -> bool:
        """Whether slices are offset in plane from each other, as with gantry tilt."""
        pixels = self.offsets_mm / np.array([self.pixel_spacing[1], self.pixel_spacing[0]])
        return bool(np.max(np.abs(pixels)) > SHEAR_TOLERANCE_PIXELS)

    @property
    def tilt_deg(self) -> float:
        """Angle between the slice normal and the line through the slice positions."""
        extent = self.positions_mm[-1] - self.positions_mm[0]
        if extent <= 0:
            return 0.0
        shift = float(np.linalg.norm(self.offsets_mm[-1]))
        return math.degrees(math.atan2(shift, extent))


def measure_layout(frames: Sequence[Frame]) -> SliceLayout:
    """Measure the layout of frames that are already in ascending order along the normal."""
    orientation = frames[0].image_orientation_patient
    row_cosine = orientation[:3] / np.linalg.norm(orientation[:3])
    column_cosine = orientation[3:] / np.linalg.norm(orientation[3:])
    normal = slice_normal(orientation)
    positions = np.array([f.image_position_patient for f in frames])
    relative = positions - positions[0]
    return SliceLayout(
        row_cosine=row_cosine,
        column_cosine=column_cosine,
        normal=normal,
        positions_mm=positions @ normal,
        offsets_mm=np.stack([relative @ row_cosine, relative @ column_cosine], axis=1),
        pixel_spacing=frames[0].pixel_spacing,
    )


def spacing_tolerance(step_mm: float) -> float:
    """Return how far a step may differ from step_mm and still count as equal."""
    return max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION * abs(step_mm))


def uniform_blocks(positions_mm: np.ndarray) -> list[tuple[int, int]]:
    """Split ascending positions into runs of equal steps, as (start, stop) index pairs.

    A run grows while each step matches the mean step of the run so far. The slice after
    a differing step starts a new run.
    """
    blocks = []
    start = 0
    while start < len(positions_mm):
        stop = start + 1
        while stop < len(positions_mm):
            step = positions_mm[stop] - positions_mm[stop - 1]
            if stop - start >= 2:
                mean_step = (positions_mm[stop - 1] - positions_mm[start]) / (stop - 1 - start)
                if abs(step - mean_step) > spacing_tolerance(mean_step):
                    break
            stop += 1
        blocks.append((start, stop))
        start = stop
    return blocks


def resample_along_normal(
    slices: np.ndarray, positions_mm: np.ndarray, step_mm: float
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Interpolate slices linearly onto uniform positions from the first to the last.

    Parameters
    ----------
    slices : (N, rows, columns) array
    positions_mm : (N,) ascending positions along the normal
    step_mm : target spacing

    Returns
    -------
    array : (M, rows, columns) float64 array
    targets : (M,) target positions, mm
    interpolated : positions of output slices that no input slice lies on, mm
    """
    count = int(round((positions_mm[-1] - positions_mm[0]) / step_mm)) + 1
    targets = positions_mm[0] + step_mm * np.arange(count)
    output = np.empty((count,) + slices.shape[1:], dtype=np.float64)
    interpolated = []
    for index, target in enumerate(targets):
        upper = int(np.searchsorted(positions_mm, target - spacing_tolerance(step_mm)))
        upper = min(upper, len(positions_mm) - 1)
        if abs(positions_mm[upper] - target) <= spacing_tolerance(step_mm):
            output[index] = slices[upper]
            continue
        lower = max(upper - 1, 0)
        weight = (target - positions_mm[lower]) / (positions_mm[upper] - positions_mm[lower])
        output[index] = (1 - weight) * slices[lower] + weight * slices[upper]
        interpolated.append(float(target))
    return output, targets, interpolated
