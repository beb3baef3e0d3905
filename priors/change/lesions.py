"""Connected change components and the lesion list of one pair."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from priors.change.output import CLASS_NAMES, NEW_OR_GROWN, RESOLVED_OR_SHRUNK

__all__ = [
    "CHANGE_CLASSES",
    "component_labels",
    "equivalent_diameter_mm",
    "remove_small_components",
    "summarize_lesions",
]

logger = logging.getLogger(__name__)

CHANGE_CLASSES = (NEW_OR_GROWN, RESOLVED_OR_SHRUNK)

# Face, edge and corner neighbours all connect (26-connectivity), so a component that
# touches another only diagonally, as partial-volume rims often do, stays one change.
CONNECTIVITY = ndimage.generate_binary_structure(3, 3)

# Above this many boundary voxels the longest diameter is searched on the convex hull
# instead of all pairs, which keeps the pairwise distance matrix under ~20 MB.
MAX_PAIRWISE_POINTS = 2000


def component_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 26-connected components of a boolean (z, y, x) mask.

    Returns
    -------
    tuple
        int32 array with 0 outside and 1..n inside the components, and n.
    """
    labelled, count = ndimage.label(mask, structure=CONNECTIVITY)
    return labelled.astype(np.int32, copy=False), int(count)


def equivalent_diameter_mm(voxel_count: int | np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Return the diameter in mm of the sphere whose volume equals ``voxel_count`` voxels."""
    volume_mm3 = np.asarray(voxel_count, dtype=np.float64) * float(np.prod(spacing))
    return np.cbrt(6.0 * volume_mm3 / np.pi)


def remove_small_components(
    labels: np.ndarray, *, spacing: Sequence[float], min_volume_mm3: float
) -> np.ndarray:
    """Return a copy of a class label map without components under ``min_volume_mm3``.

    Each change class is labelled on its own, so a class-1 rim touching a class-2 rim
    forms two components.
    """
    voxel_mm3 = float(np.prod(spacing))
    cleaned = labels.copy()
    for value in CHANGE_CLASSES:
        labelled, count = component_labels(labels == value)
        if count == 0:
            continue
        sizes = np.bincount(labelled.ravel(), minlength=count + 1)
        small = sizes * voxel_mm3 < min_volume_mm3
        small[0] = False
        cleaned[small[labelled]] = 0
    return cleaned


def summarize_lesions(
    labels: np.ndarray,
    *,
    spacing: Sequence[float],
    origin_lps: Sequence[float],
    direction_lps: Sequence[float],
    current: np.ndarray | None = None,
    prior: np.ndarray | None = None,
) -> list[dict]:
    """List the connected change components of a label map.

    Parameters
    ----------
    labels
        (z, y, x) uint8 map: 0 no change, 1 new or grown, 2 resolved or shrunk.
    spacing
        Voxel size ``(sx, sy, sz)`` in mm.
    origin_lps
        LPS position in mm of voxel (0, 0, 0), as ``SimpleITK.Image.GetOrigin``.
    direction_lps
        Nine direction cosines, row-major, as ``SimpleITK.Image.GetDirection``.
    current, prior
        Optional (z, y, x) intensity volumes on the same grid; when given, each
        component gets its mean intensity at both time points.

    Returns
    -------
    list of dict
        One dict per component, ordered by class then by decreasing volume, with
        ``class``, ``class_name``, ``voxel_count``, ``volume_ml``,
        ``equivalent_diameter_mm``, ``longest_diameter_mm``, ``centroid_lps``
        (mm) and, with intensities, ``mean_current`` and ``mean_prior``.
    """
    spacing_xyz = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(origin_lps, dtype=np.float64)
    direction = np.asarray(direction_lps, dtype=np.float64).reshape(3, 3)
    for name, volume in (("current", current), ("prior", prior)):
        if volume is not None and volume.shape != labels.shape:
            raise ValueError(
                f"{name} volume has shape {volume.shape}, expected the label shape {labels.shape}"
            )

    lesions: list[dict] = []
    for value in CHANGE_CLASSES:
        labelled, count = component_labels(labels == value)
        found = ndimage.find_objects(labelled)
        class_lesions = []
        for index, box in enumerate(found, start=1):
            if box is None:
                continue
            inside = labelled[box] == index
            zyx = np.argwhere(inside) + np.array([s.start for s in box])
            ijk_mm = zyx[:, ::-1] * spacing_xyz
            centroid = origin + direction @ ijk_mm.mean(axis=0)
            entry = {
                "class": value,
                "class_name": CLASS_NAMES[value],
                "voxel_count": int(len(zyx)),
                "volume_ml": float(len(zyx) * spacing_xyz.prod() / 1000.0),
                "equivalent_diameter_mm": float(equivalent_diameter_mm(len(zyx), spacing_xyz)),
                "longest_diameter_mm": _longest_diameter_mm(inside, spacing_xyz),
                "centroid_lps": [float(c) for c in centroid],
            }
            if current is not None:
                entry["mean_current"] = float(current[box][inside].mean())
            if prior is not None:
                entry["mean_prior"] = float(prior[box][inside].mean())
            class_lesions.append(entry)
        class_lesions.sort(key=lambda item: -item["voxel_count"])
        lesions.extend(class_lesions)
    logger.debug("summarised %d change components", len(lesions))
    return lesions


def _longest_diameter_mm(inside: np.ndarray, spacing_xyz: np.ndarray) -> float:
    """Return the largest centre-to-centre distance in mm between voxels of a component."""
    boundary = inside & ~ndimage.binary_erosion(inside, structure=CONNECTIVITY)
    points = np.argwhere(boundary)[:, ::-1] * spacing_xyz
    if len(points) < 2:
        return 0.0
    if len(points) > MAX_PAIRWISE_POINTS:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:
            # A flat component (one slice thick) has no 3-D hull; a stride keeps its span.
            points = points[:: int(np.ceil(len(points) / MAX_PAIRWISE_POINTS))]
    return float(pdist(points).max())
