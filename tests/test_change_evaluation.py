"""Lesion-level evaluation on hand-made label maps with known results."""

from __future__ import annotations

import numpy as np
import pytest

from priors.change import ChangeOutput, evaluate_pairs
from priors.change.evaluation import match_components

SPACING = (1.0, 1.0, 1.0)
SHAPE = (30, 40, 40)


def _cube(labels: np.ndarray, corner: tuple[int, int, int], side: int, value: int) -> None:
    z, y, x = corner
    labels[z : z + side, y : y + side, x : x + side] = value


def _known_case() -> tuple[np.ndarray, np.ndarray]:
    """Truth: a new lesion (8 mm cube) and a resolved one (6 mm cube).

    The prediction finds the new lesion shifted by 2 voxels (IoU 0.5), misses the
    resolved one, and adds an 8 mm false positive elsewhere.
    """
    truth = np.zeros(SHAPE, dtype=np.uint8)
    prediction = np.zeros(SHAPE, dtype=np.uint8)
    _cube(truth, (2, 2, 2), 8, 1)
    _cube(prediction, (2, 2, 4), 8, 1)
    _cube(truth, (15, 25, 25), 6, 2)
    _cube(prediction, (20, 2, 25), 8, 1)
    return prediction, truth


def test_evaluation_counts_known_case():
    prediction, truth = _known_case()
    report = evaluate_pairs([prediction], [truth], spacing=SPACING)

    # Cubes of 8 and 6 mm have equivalent diameters of 9.9 and 7.4 mm: both count.
    assert report["changes_5mm"] == 2
    assert report["lesion_recall_5mm"] == pytest.approx(0.5)
    assert report["lesion_precision_5mm"] == pytest.approx(0.5)
    assert report["lesion_f1_5mm"] == pytest.approx(0.5)
    new = report["per_class"]["new_or_grown"]
    assert (new["detected"], new["true_positive_components"], new["false_positive_components"]) == (
        1,
        1,
        1,
    )
    resolved = report["per_class"]["resolved_or_shrunk"]
    assert (resolved["changes"], resolved["detected"], resolved["recall"]) == (1, 0, 0.0)
    assert report["fp_per_no_change_pair"] == 0.0
    assert report["no_change_pairs"] == 0


def test_evaluation_voxel_dice():
    prediction, truth = _known_case()
    report = evaluate_pairs([prediction], [truth], spacing=SPACING)

    # Class 1: 384 shared voxels, 1024 predicted, 512 true.
    assert report["per_class"]["new_or_grown"]["voxel_dice"] == pytest.approx(2 * 384 / 1536)
    assert report["per_class"]["resolved_or_shrunk"]["voxel_dice"] == 0.0
    assert report["voxel_dice"] == pytest.approx(2 * 384 / (1024 + 512 + 216))


def test_evaluation_false_positives_per_no_change_pair():
    prediction, truth = _known_case()
    quiet_truth = np.zeros(SHAPE, dtype=np.uint8)
    noisy_prediction = np.zeros(SHAPE, dtype=np.uint8)
    _cube(noisy_prediction, (5, 5, 5), 3, 2)
    _cube(noisy_prediction, (20, 20, 20), 3, 1)
    clean_prediction = np.zeros(SHAPE, dtype=np.uint8)

    report = evaluate_pairs(
        [prediction, noisy_prediction, ChangeOutput(clean_prediction, clean_prediction, "model")],
        [truth, quiet_truth, quiet_truth],
        spacing=SPACING,
    )

    assert report["no_change_pairs"] == 2
    assert report["fp_per_no_change_pair"] == pytest.approx(1.0)
    # The 3 mm false positives are under 5 mm, so the headline precision ignores them.
    assert report["lesion_precision_5mm"] == pytest.approx(0.5)
    assert report["lesion_precision_all"] == pytest.approx(1 / 4)


def test_evaluation_iou_below_threshold_misses():
    truth = np.zeros(SHAPE, dtype=np.uint8)
    prediction = np.zeros(SHAPE, dtype=np.uint8)
    _cube(truth, (2, 2, 2), 10, 1)
    # One corner voxel column of overlap: IoU far below 0.1.
    _cube(prediction, (2, 11, 11), 10, 1)

    report = evaluate_pairs([prediction], [truth], spacing=SPACING)

    assert report["lesion_recall_5mm"] == 0.0
    assert report["per_class"]["new_or_grown"]["false_positive_components"] == 1


def test_evaluation_wrong_class_misses():
    truth = np.zeros(SHAPE, dtype=np.uint8)
    _cube(truth, (2, 2, 2), 8, 1)
    prediction = np.where(truth > 0, 2, 0).astype(np.uint8)

    report = evaluate_pairs([prediction], [truth], spacing=SPACING)

    assert report["lesion_recall_5mm"] == 0.0
    assert report["lesion_precision_5mm"] == 0.0


def test_evaluation_size_and_misregistration_strata():
    prediction, truth = _known_case()
    _cube(truth, (25, 30, 2), 2, 1)

    report = evaluate_pairs(
        [prediction, prediction],
        [truth, truth],
        spacing=[SPACING, SPACING],
        misregistration_mm=[0.5, 2.5],
    )

    assert report["by_size"]["0-5 mm"] == {"changes": 2, "detected": 0, "recall": 0.0}
    assert report["by_size"]["5-10 mm"]["changes"] == 4
    assert report["by_size"][">=20 mm"]["recall"] is None
    assert set(report["by_misregistration"]) == {"0-1 mm", ">=2 mm"}
    assert report["by_misregistration"][">=2 mm"]["lesion_f1_5mm"] == pytest.approx(0.5)


def test_match_components_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="differs from truth shape"):
        match_components(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), spacing=SPACING)


def test_evaluation_rejects_count_mismatch():
    with pytest.raises(ValueError, match="1 predictions for 2 truths"):
        evaluate_pairs([np.zeros(SHAPE)], [np.zeros(SHAPE)] * 2, spacing=SPACING)
