"""A side-by-side PNG of one pair: current, prior, registered prior and change map."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_preview_png"]

# Display window as percentiles of the current image, so CT and MR both show contrast.
WINDOW_PERCENTILES = (1.0, 99.0)
# Colours of change classes 1 (new or grown) and 2 (resolved or shrunk), RGBA.
CHANGE_COLOURS = {1: (1.0, 0.2, 0.1, 0.8), 2: (0.1, 0.6, 1.0, 0.8)}


def write_preview_png(
    current: Any,
    prior: Any,
    registered_prior: Any,
    labels: np.ndarray | None,
    path: str | Path,
    *,
    titles: Sequence[str] = ("current", "prior", "registered prior", "change"),
) -> str:
    """Write the middle slice of each image side by side, with the change labels.

    Parameters
    ----------
    current, prior, registered_prior
        ``SimpleITK.Image`` volumes; the prior in its own grid, the other two in the
        current grid.
    labels
        Change classes in the current grid, ``(z, y, x)``, or None when no change map
        was made (the fourth panel then shows the current image alone).
    path
        PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    current_array = sitk.GetArrayFromImage(current)
    middle = current_array.shape[0] // 2
    low, high = np.percentile(current_array, WINDOW_PERCENTILES)
    panels = [
        current_array[middle],
        _middle_slice(sitk.GetArrayFromImage(prior)),
        sitk.GetArrayFromImage(registered_prior)[middle],
        current_array[middle],
    ]
    aspect = _aspect(current)

    figure, axes = plt.subplots(1, 4, figsize=(12, 3.4), dpi=80)
    for index, (axis, panel, title) in enumerate(zip(axes, panels, titles, strict=True)):
        axis.imshow(panel, cmap="gray", vmin=low, vmax=high,
                    aspect=_aspect(prior) if index == 1 else aspect)
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    if labels is not None:
        overlay = np.zeros(labels.shape[1:] + (4,), dtype=np.float32)
        for value, colour in CHANGE_COLOURS.items():
            overlay[labels[middle] == value] = colour
        axes[3].imshow(overlay, aspect=aspect)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return str(path)


def _middle_slice(array: np.ndarray) -> np.ndarray:
    return array[array.shape[0] // 2]


def _aspect(image: Any) -> float:
    """Return the row/column pixel ratio so that slices show in true proportion."""
    spacing_x, spacing_y = image.GetSpacing()[:2]
    return float(spacing_y / spacing_x)
