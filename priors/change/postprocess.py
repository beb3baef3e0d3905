"""From class probabilities to a labelled change map, and the search for its settings."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from priors.change.evaluation import evaluate_pairs
from priors.change.lesions import CHANGE_CLASSES, component_labels
from priors.change.output import NEW_OR_GROWN, RESOLVED_OR_SHRUNK

__all__ = ["SEARCH_GRID", "choose_postprocessing", "label_changes"]

logger = logging.getLogger(__name__)

# Settings tried by ``choose_postprocessing``.
SEARCH_GRID = {
    "change_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "min_peak": (0.0, 0.9),
    "min_volume_mm3": (14.0, 30.0, 60.0, 100.0),
    "border_margin_mm": (0.0, 3.0, 6.0, 9.0),
}

# The target is under 0.5 false-positive changes per pair without change. The search
# keeps a margin below it, because the held-out figure varies around the validation one.
MAX_FP_PER_NO_CHANGE_PAIR = 0.35


def label_changes(
    probabilities: np.ndarray,
    *,
    spacing: Sequence[float],
    change_threshold: float,
    min_volume_mm3: float,
    min_peak: float = 0.0,
    border_margin_mm: float = 0.0,
) -> np.ndarray:
    """Turn (3, z, y, x) class probabilities into a (z, y, x) uint8 change map.

    A voxel is change where ``1 - p(no change) >= change_threshold``; its class is the
    larger of ``p(new or grown)`` and ``p(resolved or shrunk)``. A component of one
    class is kept when it contains ``min_volume_mm3`` or more and its highest change
    probability reaches ``min_peak``. In this two-threshold rule the lower threshold
    draws the outline, and the higher one decides whether there is a change at all.

    A component with more than half of its voxels within ``border_margin_mm`` of the
    volume's faces is dropped. There the neighbourhood ranges and the network's
    view are cut off, so a structure that misregistration moved in from outside the
    field of view has nothing to be matched against and looks new.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 4 or probabilities.shape[0] != 3:
        raise ValueError(f"probabilities have shape {probabilities.shape}, expected (3, z, y, x)")
    change = 1.0 - probabilities[0]
    grown = probabilities[1] >= probabilities[2]
    is_change = change >= change_threshold
    labels = np.zeros(change.shape, dtype=np.uint8)
    labels[is_change & grown] = NEW_OR_GROWN
    labels[is_change & ~grown] = RESOLVED_OR_SHRUNK

    voxel_mm3 = float(np.prod(spacing))
    for value in CHANGE_CLASSES:
        labelled, count = component_labels(labels == value)
        if count == 0:
            continue
        index = np.arange(1, count + 1)
        sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
        peaks = _component_maxima(change, labelled, count)
        drop = (sizes * voxel_mm3 < min_volume_mm3) | (peaks < min_peak)
        if border_margin_mm > 0:
            near_border = _border_mask(labels.shape, spacing, border_margin_mm)
            in_margin = np.bincount(labelled[near_border], minlength=count + 1)[1:]
            drop |= in_margin * 2 > sizes
        if drop.any():
            remove = np.zeros(count + 1, dtype=bool)
            remove[index[drop]] = True
            labels[remove[labelled]] = 0
    return labels


def _border_mask(shape: Sequence[int], spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """Return a (z, y, x) mask of the voxels within ``margin_mm`` of the volume's faces."""
    mask = np.ones(shape, dtype=bool)
    # spacing is (sx, sy, sz) and the array (z, y, x).
    widths = [int(np.ceil(margin_mm / float(s) - 1e-9)) for s in reversed(spacing)]
    inner = tuple(slice(w, max(w, n - w)) for w, n in zip(widths, shape, strict=True))
    mask[inner] = False
    return mask


def _component_maxima(values: np.ndarray, labelled: np.ndarray, count: int) -> np.ndarray:
    inside = labelled > 0
    peaks = np.full(count + 1, -np.inf)
    np.maximum.at(peaks, labelled[inside], values[inside])
    return peaks[1:]


def choose_postprocessing(
    probabilities: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    *,
    spacing: Sequence[float],
    grid: Mapping[str, Sequence[float]] = SEARCH_GRID,
    max_fp_per_no_change_pair: float = MAX_FP_PER_NO_CHANGE_PAIR,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Pick the post-processing settings with the best lesion F1 (>= 5 mm) on labelled pairs.

    Only settings whose false positives per no-change pair stay at or under
    ``max_fp_per_no_change_pair`` compete; when none does, the one with the fewest
    false positives wins. Run it on validation pairs, never on the held-out set.

    Returns
    -------
    tuple
        The chosen settings and one row per setting tried, with its figures.
    """
    names = list(grid)
    rows = []
    for values in itertools.product(*(grid[name] for name in names)):
        settings = dict(zip(names, (float(v) for v in values), strict=True))
        predictions = [label_changes(p, spacing=spacing, **settings) for p in probabilities]
        report = evaluate_pairs(predictions, truths, spacing=spacing)
        rows.append(
            {
                **settings,
                "lesion_f1_5mm": report["lesion_f1_5mm"],
                "fp_per_no_change_pair": report["fp_per_no_change_pair"],
            }
        )
    allowed = [r for r in rows if r["fp_per_no_change_pair"] <= max_fp_per_no_change_pair]
    if allowed:
        best = max(allowed, key=lambda r: (r["lesion_f1_5mm"], -r["fp_per_no_change_pair"]))
    else:
        best = min(rows, key=lambda r: (r["fp_per_no_change_pair"], -r["lesion_f1_5mm"]))
    chosen = {name: best[name] for name in names}
    logger.info(
        "chose post-processing %s: lesion F1 %.3f, %.2f false positives per no-change pair",
        chosen,
        best["lesion_f1_5mm"],
        best["fp_per_no_change_pair"],
    )
    return chosen, rows
