"""Gantry tilt: moving sheared slices onto a rectilinear grid."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["align_sheared_slices"]


def align_sheared_slices(
    slices: np.ndarray,
    offsets_mm: np.ndarray,
    pixel_spacing: tuple[float, float],
    *,
    fill_value: float,
) -> np.ndarray:
    """Shift each slice in its plane so that the stack becomes rectilinear.

    The grid is anchored at the first slice: voxel (i, j) of slice k then lies at
    ``position[0] + i * column_spacing * row_cosine + j * row_spacing * column_cosine``
    plus slice k's distance along the normal, which is where the stored pixel at
    ``(i, j) - offset[k] / spacing`` of slice k lies. Values are interpolated linearly.

    Parameters
    ----------
    slices : (N, rows, columns) array
    offsets_mm : (N, 2) array
        In-plane offset of each slice's Image Position (Patient) from the first slice's,
        along the row cosine and along the column cosine.
    pixel_spacing : (between rows, between columns), mm
    fill_value : value for grid voxels that no stored pixel covers

    Returns
    -------
    (N, rows, columns) float64 array
    """
    output = np.empty(slices.shape, dtype=np.float64)
    for index, (along_row, along_column) in enumerate(offsets_mm):
        # Array axis 0 runs along the column cosine, axis 1 along the row cosine.
        shift = (along_column / pixel_spacing[0], along_row / pixel_spacing[1])
        output[index] = ndimage.shift(
            slices[index].astype(np.float64), shift, order=1, mode="constant", cval=fill_value
        )
    return output
