"""Lesion lists of change label maps: geometry in LPS, sizes and intensities."""

from __future__ import annotations

import numpy as np
import pytest

from priors.change import summarize_lesions
from priors.change.lesions import remove_small_components

SPACING = (0.5, 1.0, 2.0)


def test_summary_geometry_in_lps():
    labels = np.zeros((10, 20, 30), dtype=np.uint8)
    # A box of 3 slices x 4 rows x 5 columns, voxel index (z, y, x) from (2, 6, 10).
    labels[2:5, 6:10, 10:15] = 1
    # Axial image seen from the feet with rows flipped: y index runs towards anterior.
    direction = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    origin = (-100.0, 50.0, 20.0)

    [lesion] = summarize_lesions(
        labels, spacing=SPACING, origin_lps=origin, direction_lps=direction
    )

    # Centroid index (x, y, z) = (12, 7.5, 3) -> mm (6, 7.5, 6), y flipped by the direction.
    assert lesion["centroid_lps"] == pytest.approx([-94.0, 42.5, 26.0])
    assert lesion["class"] == 1
    assert lesion["class_name"] == "new_or_grown"
    assert lesion["voxel_count"] == 60
    assert lesion["volume_ml"] == pytest.approx(60 * 1.0 / 1000)
    # Opposite corners: (4 * 0.5, 3 * 1.0, 2 * 2.0) mm apart.
    assert lesion["longest_diameter_mm"] == pytest.approx(np.sqrt(2.0**2 + 3.0**2 + 4.0**2))


def test_summary_classes_and_intensities():
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 2
    labels[5:8, 5:8, 5:8] = 1
    current = np.full(labels.shape, 10.0)
    prior = np.full(labels.shape, -5.0)

    lesions = summarize_lesions(
        labels,
        spacing=(1.0, 1.0, 1.0),
        origin_lps=(0.0, 0.0, 0.0),
        direction_lps=np.eye(3).ravel(),
        current=current,
        prior=prior,
    )

    assert [entry["class"] for entry in lesions] == [1, 2]
    assert [entry["voxel_count"] for entry in lesions] == [27, 8]
    assert lesions[0]["mean_current"] == pytest.approx(10.0)
    assert lesions[0]["mean_prior"] == pytest.approx(-5.0)


def test_summary_rejects_mismatched_intensities():
    with pytest.raises(ValueError, match=r"current volume has shape \(2, 2, 2\)"):
        summarize_lesions(
            np.zeros((3, 3, 3), dtype=np.uint8),
            spacing=(1.0, 1.0, 1.0),
            origin_lps=(0.0, 0.0, 0.0),
            direction_lps=np.eye(3).ravel(),
            current=np.zeros((2, 2, 2)),
        )


def test_remove_small_components_keeps_large():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[0:3, 0:3, 0:3] = 1
    labels[8, 8, 8] = 2

    cleaned = remove_small_components(labels, spacing=(1.0, 1.0, 1.0), min_volume_mm3=5.0)

    assert np.count_nonzero(cleaned == 1) == 27
    assert not np.any(cleaned == 2)
