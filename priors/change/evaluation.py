"""Lesion-level evaluation of change maps against ground-truth label maps.

Definitions, used wherever these figures are reported:

- A ground-truth change is a 26-connected component of one class of the label map
  (1 new or grown, 2 resolved or shrunk). Its size is the diameter of the sphere of
  equal volume.
- A predicted component of the same class detects a change when their intersection
  over union (IoU) is at least ``DETECTION_IOU``. A predicted component that detects
  nothing is a false positive.
- ``lesion_f1_5mm`` is the F1 over changes of ``HEADLINE_MIN_DIAMETER_MM`` or more,
  both classes together. Recall counts ground-truth changes of that size. Precision
  counts predicted components that detect such a change as true, and those that
  detect nothing and are themselves of that size as false. Predicted components
  that only detect smaller changes are left out of it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from priors.change.lesions import CHANGE_CLASSES, component_labels, equivalent_diameter_mm
from priors.change.output import CLASS_NAMES, ChangeOutput

__all__ = [
    "DETECTION_IOU",
    "HEADLINE_MIN_DIAMETER_MM",
    "MISREGISTRATION_BINS_MM",
    "SIZE_BINS_MM",
    "evaluate_pairs",
    "match_components",
]

logger = logging.getLogger(__name__)

# A loose overlap: a detection must share a tenth of the union, so a rim-shaped
# prediction of a grown lesion counts while a neighbouring blob does not.
DETECTION_IOU = 0.1

# Changes under 5 mm are at the limit of what a 1.5-2 mm grid resolves; they are
# reported apart in the size breakdown.
HEADLINE_MIN_DIAMETER_MM = 5.0

# Lower edges of the size strata (equivalent diameter, mm).
SIZE_BINS_MM = (0.0, 5.0, 10.0, 20.0)

# Lower edges of the misregistration strata (translation magnitude of the prior, mm).
MISREGISTRATION_BINS_MM = (0.0, 1.0, 2.0)


@dataclass
class _Component:
    cls: int
    diameter_mm: float
    matched: bool = False
    matched_large: bool = False


@dataclass
class _PairResult:
    truths: list[_Component] = field(default_factory=list)
    predictions: list[_Component] = field(default_factory=list)
    intersection: dict[int, int] = field(default_factory=dict)
    predicted_voxels: dict[int, int] = field(default_factory=dict)
    true_voxels: dict[int, int] = field(default_factory=dict)


def match_components(
    prediction: np.ndarray, truth: np.ndarray, *, spacing: Sequence[float]
) -> _PairResult:
    """Match the change components of one predicted label map to the truth.

    Returns a record of every ground-truth and predicted component with its class,
    equivalent diameter and whether it was matched, plus per-class voxel counts.
    """
    if prediction.shape != truth.shape:
        raise ValueError(
            f"prediction shape {prediction.shape} differs from truth shape {truth.shape}"
        )
    result = _PairResult()
    for cls in CHANGE_CLASSES:
        true_mask = truth == cls
        predicted_mask = prediction == cls
        result.intersection[cls] = int(np.count_nonzero(true_mask & predicted_mask))
        result.predicted_voxels[cls] = int(np.count_nonzero(predicted_mask))
        result.true_voxels[cls] = int(np.count_nonzero(true_mask))

        true_labels, n_true = component_labels(true_mask)
        predicted_labels, n_predicted = component_labels(predicted_mask)
        true_sizes = np.bincount(true_labels.ravel(), minlength=n_true + 1)
        predicted_sizes = np.bincount(predicted_labels.ravel(), minlength=n_predicted + 1)
        true_components = [
            _Component(cls, float(equivalent_diameter_mm(true_sizes[i], spacing)))
            for i in range(1, n_true + 1)
        ]
        predicted_components = [
            _Component(cls, float(equivalent_diameter_mm(predicted_sizes[i], spacing)))
            for i in range(1, n_predicted + 1)
        ]

        # Overlap counts of every (truth, prediction) pair that shares a voxel.
        both = (true_labels > 0) & (predicted_labels > 0)
        pairs = true_labels[both].astype(np.int64) * (n_predicted + 1) + predicted_labels[both]
        codes, overlaps = np.unique(pairs, return_counts=True)
        for code, overlap in zip(codes, overlaps, strict=True):
            t, p = divmod(int(code), n_predicted + 1)
            union = true_sizes[t] + predicted_sizes[p] - overlap
            if overlap / union < DETECTION_IOU:
                continue
            truth_component = true_components[t - 1]
            truth_component.matched = True
            predicted_components[p - 1].matched = True
            if truth_component.diameter_mm >= HEADLINE_MIN_DIAMETER_MM:
                predicted_components[p - 1].matched_large = True
        result.truths.extend(true_components)
        result.predictions.extend(predicted_components)
    return result


def evaluate_pairs(
    predictions: Sequence[np.ndarray | ChangeOutput],
    truths: Sequence[np.ndarray],
    *,
    spacing: Sequence[float] | Sequence[Sequence[float]],
    misregistration_mm: Sequence[float] | None = None,
) -> dict:
    """Compute the lesion-level evaluation over a set of pairs.

    Parameters
    ----------
    predictions
        Predicted (z, y, x) label maps, or ``ChangeOutput`` objects, one per pair.
    truths
        Ground-truth (z, y, x) label maps on the same grids.
    spacing
        Voxel size ``(sx, sy, sz)`` in mm, one for all pairs or one per pair.
    misregistration_mm
        Optional translation magnitude of each pair's prior; adds a breakdown by it.

    Returns
    -------
    dict
        ``lesion_f1_5mm``, ``lesion_precision_5mm`` and ``lesion_recall_5mm``;
        ``lesion_f1_all`` and friends over every size; ``per_class`` with precision,
        recall and F1 at 5 mm or more and voxel Dice per class; ``voxel_dice`` over
        both classes. ``fp_per_no_change_pair`` counts false-positive components of
        any size per pair without change. ``by_size`` holds the recall per size
        stratum and, when ``misregistration_mm`` is given, ``by_misregistration``
        the figures per misregistration stratum. The module docstring defines them.
    """
    if len(predictions) != len(truths):
        raise ValueError(
            f"{len(predictions)} predictions for {len(truths)} truths; expected equal counts"
        )
    spacings = _per_pair_spacing(spacing, len(truths))
    results = []
    for prediction, truth, pair_spacing in zip(predictions, truths, spacings, strict=True):
        labels = prediction.labels if isinstance(prediction, ChangeOutput) else prediction
        results.append(
            match_components(np.asarray(labels), np.asarray(truth), spacing=pair_spacing)
        )

    report = _summarize(results)
    report["by_size"] = _by_size(results)
    if misregistration_mm is not None:
        report["by_misregistration"] = _by_misregistration(results, misregistration_mm)
    logger.info(
        "evaluated %d pairs: lesion F1 (>= %.0f mm) %.3f, %.2f false positives per no-change pair",
        len(results),
        HEADLINE_MIN_DIAMETER_MM,
        report["lesion_f1_5mm"],
        report["fp_per_no_change_pair"],
    )
    return report


def _per_pair_spacing(spacing, count: int) -> list[tuple[float, ...]]:
    array = np.asarray(spacing, dtype=np.float64)
    if array.shape == (3,):
        return [tuple(array)] * count
    if array.shape == (count, 3):
        return [tuple(row) for row in array]
    raise ValueError(f"spacing has shape {array.shape}, expected (3,) or ({count}, 3)")


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _ratio(numerator: float, denominator: float, *, empty: float) -> float:
    # An empty denominator means nothing to find or nothing claimed, which is perfect.
    return empty if denominator == 0 else numerator / denominator


def _detection_counts(results: list[_PairResult], cls: int | None, min_mm: float) -> dict:
    def keep(component: _Component) -> bool:
        return cls is None or component.cls == cls

    truths = [c for r in results for c in r.truths if keep(c) and c.diameter_mm >= min_mm]
    predictions = [c for r in results for c in r.predictions if keep(c)]
    if min_mm > 0:
        true_positive = sum(c.matched_large for c in predictions)
        false_positive = sum(not c.matched and c.diameter_mm >= min_mm for c in predictions)
    else:
        true_positive = sum(c.matched for c in predictions)
        false_positive = sum(not c.matched for c in predictions)
    detected = sum(c.matched for c in truths)
    precision = _ratio(true_positive, true_positive + false_positive, empty=1.0)
    recall = _ratio(detected, len(truths), empty=1.0)
    return {
        "changes": len(truths),
        "detected": detected,
        "true_positive_components": true_positive,
        "false_positive_components": false_positive,
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
    }


def _dice(results: list[_PairResult], classes: Sequence[int]) -> float:
    intersection = sum(r.intersection[c] for r in results for c in classes)
    total = sum(r.predicted_voxels[c] + r.true_voxels[c] for r in results for c in classes)
    return _ratio(2 * intersection, total, empty=1.0)


def _summarize(results: list[_PairResult]) -> dict:
    headline = _detection_counts(results, None, HEADLINE_MIN_DIAMETER_MM)
    every_size = _detection_counts(results, None, 0.0)
    per_class = {}
    for cls in CHANGE_CLASSES:
        counts = _detection_counts(results, cls, HEADLINE_MIN_DIAMETER_MM)
        counts["voxel_dice"] = _dice(results, [cls])
        per_class[CLASS_NAMES[cls]] = counts

    no_change = [r for r in results if not r.truths]
    false_positives = sum(len(r.predictions) for r in no_change)
    return {
        "pairs": len(results),
        "no_change_pairs": len(no_change),
        "changes_5mm": headline["changes"],
        "lesion_f1_5mm": headline["f1"],
        "lesion_precision_5mm": headline["precision"],
        "lesion_recall_5mm": headline["recall"],
        "lesion_f1_all": every_size["f1"],
        "lesion_precision_all": every_size["precision"],
        "lesion_recall_all": every_size["recall"],
        "per_class": per_class,
        "voxel_dice": _dice(results, CHANGE_CLASSES),
        "fp_per_no_change_pair": _ratio(false_positives, len(no_change), empty=0.0),
    }


def _bin_name(edges: Sequence[float], index: int, unit: str = "mm") -> str:
    if index + 1 < len(edges):
        return f"{edges[index]:g}-{edges[index + 1]:g} {unit}"
    return f">={edges[index]:g} {unit}"


def _by_size(results: list[_PairResult]) -> dict:
    truths = [c for r in results for c in r.truths]
    table = {}
    for index, low in enumerate(SIZE_BINS_MM):
        high = SIZE_BINS_MM[index + 1] if index + 1 < len(SIZE_BINS_MM) else np.inf
        stratum = [c for c in truths if low <= c.diameter_mm < high]
        detected = sum(c.matched for c in stratum)
        table[_bin_name(SIZE_BINS_MM, index)] = {
            "changes": len(stratum),
            "detected": detected,
            # None, not NaN, for an empty stratum, so the table stays valid JSON.
            "recall": detected / len(stratum) if stratum else None,
        }
    return table


def _by_misregistration(results: list[_PairResult], misregistration_mm: Sequence[float]) -> dict:
    if len(misregistration_mm) != len(results):
        raise ValueError(
            f"{len(misregistration_mm)} misregistration values for {len(results)} pairs; "
            "expected one per pair"
        )
    shifts = np.asarray(misregistration_mm, dtype=np.float64)
    table = {}
    for index, low in enumerate(MISREGISTRATION_BINS_MM):
        high = (
            MISREGISTRATION_BINS_MM[index + 1]
            if index + 1 < len(MISREGISTRATION_BINS_MM)
            else np.inf
        )
        chosen = [r for r, shift in zip(results, shifts, strict=True) if low <= shift < high]
        if not chosen:
            continue
        summary = _summarize(chosen)
        false_positives = sum(not c.matched for r in chosen for c in r.predictions)
        table[_bin_name(MISREGISTRATION_BINS_MM, index)] = {
            "pairs": len(chosen),
            "lesion_f1_5mm": summary["lesion_f1_5mm"],
            "false_positive_components_per_pair": false_positives / len(chosen),
            "fp_per_no_change_pair": summary["fp_per_no_change_pair"],
        }
    return table
