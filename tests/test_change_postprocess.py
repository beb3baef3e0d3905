"""Labelling change from class probabilities, and choosing the settings on validation pairs."""

from __future__ import annotations

import numpy as np
import pytest

from priors.change.postprocess import choose_postprocessing, label_changes

SPACING = (1.0, 1.0, 1.0)


def _probabilities(shape=(12, 12, 12)) -> np.ndarray:
    probabilities = np.zeros((3, *shape), dtype=np.float32)
    probabilities[0] = 1.0
    return probabilities


def _put(probabilities: np.ndarray, box, cls: int, value: float) -> None:
    probabilities[(0, *box)] = 1.0 - value
    probabilities[(cls, *box)] = value


def test_classes_and_threshold():
    probabilities = _probabilities()
    _put(probabilities, np.s_[1:4, 1:4, 1:4], 1, 0.9)
    _put(probabilities, np.s_[6:9, 6:9, 6:9], 2, 0.6)

    labels = label_changes(probabilities, spacing=SPACING, change_threshold=0.5, min_volume_mm3=1)
    stricter = label_changes(probabilities, spacing=SPACING, change_threshold=0.7, min_volume_mm3=1)

    assert np.all(labels[1:4, 1:4, 1:4] == 1)
    assert np.all(labels[6:9, 6:9, 6:9] == 2)
    assert np.count_nonzero(labels) == 54
    assert np.count_nonzero(stricter == 2) == 0


def test_min_peak_drops_weak_component():
    probabilities = _probabilities()
    _put(probabilities, np.s_[1:4, 1:4, 1:4], 1, 0.6)
    _put(probabilities, np.s_[6:9, 6:9, 6:9], 1, 0.6)
    probabilities[:, 7, 7, 7] = (0.05, 0.95, 0.0)

    labels = label_changes(
        probabilities, spacing=SPACING, change_threshold=0.5, min_volume_mm3=1, min_peak=0.9
    )

    # The weak blob goes, the one with a confident core keeps its whole outline.
    assert np.count_nonzero(labels[1:4, 1:4, 1:4]) == 0
    assert np.all(labels[6:9, 6:9, 6:9] == 1)


def test_min_volume_drops_small_components():
    probabilities = _probabilities()
    _put(probabilities, np.s_[1:3, 1:3, 1:3], 2, 0.9)  # 8 mm^3
    _put(probabilities, np.s_[6:9, 6:9, 6:9], 2, 0.9)  # 27 mm^3

    labels = label_changes(probabilities, spacing=SPACING, change_threshold=0.5, min_volume_mm3=10)

    assert np.count_nonzero(labels) == 27


def test_label_changes_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"expected \(3, z, y, x\)"):
        label_changes(
            np.zeros((2, 4, 4, 4)), spacing=SPACING, change_threshold=0.5, min_volume_mm3=1
        )


def test_choose_postprocessing_avoids_false_positives():
    truth = np.zeros((12, 12, 12), dtype=np.uint8)
    truth[1:6, 1:6, 1:6] = 1
    with_change = _probabilities()
    _put(with_change, np.s_[1:6, 1:6, 1:6], 1, 0.95)
    # A no-change pair with a weak false blob, which only min_peak >= 0.8 removes.
    without_change = _probabilities()
    _put(without_change, np.s_[6:11, 6:11, 6:11], 2, 0.7)
    grid = {"change_threshold": (0.5,), "min_peak": (0.0, 0.8), "min_volume_mm3": (1.0,)}

    chosen, rows = choose_postprocessing(
        [with_change, without_change],
        [truth, np.zeros_like(truth)],
        spacing=SPACING,
        grid=grid,
        max_fp_per_no_change_pair=0.5,
    )

    assert chosen == {"change_threshold": 0.5, "min_peak": 0.8, "min_volume_mm3": 1.0}
    assert [row["fp_per_no_change_pair"] for row in rows] == [1.0, 0.0]
    # The false blob is 6 mm across, so it also costs precision at 5 mm.
    assert [row["lesion_f1_5mm"] for row in rows] == [pytest.approx(2 / 3), 1.0]


def test_border_margin_drops_components_at_the_faces():
    probabilities = _probabilities((12, 12, 12))
    _put(probabilities, np.s_[0:2, 4:7, 4:7], 1, 0.9)  # on the first slices
    _put(probabilities, np.s_[5:8, 5:8, 5:8], 2, 0.9)  # in the middle
    _put(probabilities, np.s_[4:7, 8:11, 4:7], 1, 0.9)  # one third in the margin

    settings = {"change_threshold": 0.5, "min_volume_mm3": 1}
    uncut = label_changes(probabilities, spacing=SPACING, **settings)
    cut = label_changes(probabilities, spacing=SPACING, border_margin_mm=2.0, **settings)

    assert np.count_nonzero(uncut) == 18 + 27 + 27
    assert np.count_nonzero(cut[0:2]) == 0
    assert np.count_nonzero(cut == 2) == 27
    # 9 of its 27 voxels are within 2 mm of the face, so it stays.
    assert np.count_nonzero(cut[4:7, 8:11, 4:7]) == 27


def test_border_margin_follows_the_spacing():
    probabilities = _probabilities((12, 12, 12))
    _put(probabilities, np.s_[5:8, 0:3, 5:8], 1, 0.9)

    # 3 voxels of 0.5 mm are 1.5 mm, within a 2 mm margin along y only.
    cut = label_changes(
        probabilities,
        spacing=(1.0, 0.5, 1.0),
        change_threshold=0.5,
        min_volume_mm3=0.1,
        border_margin_mm=2.0,
    )
    assert np.count_nonzero(cut) == 0
