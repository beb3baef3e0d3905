"""Synthetic training pairs: determinism, label meaning and the held-out stream."""

from __future__ import annotations

import numpy as np

from priors.synthetic.pairs import (
    TrainingPair,
    _grid_points,
    held_out_pairs,
    make_pair,
    training_pairs,
)

SHAPE = (16, 32, 32)
SPACING = (1.5, 1.5, 2.0)


def _pair(seed: int, **options) -> TrainingPair:
    return make_pair(np.random.default_rng(seed), shape=SHAPE, spacing=SPACING, **options)


def test_pair_is_deterministic():
    first = _pair(11)
    second = _pair(11)

    assert np.array_equal(first.current, second.current)
    assert np.array_equal(first.prior, second.prior)
    assert np.array_equal(first.labels, second.labels)
    assert first.nuisances == second.nuisances


def test_pair_arrays_and_nuisances():
    pair = _pair(12)

    assert pair.current.shape == SHAPE
    assert pair.prior.shape == SHAPE
    assert pair.labels.shape == SHAPE
    assert pair.current.dtype == np.float32
    assert pair.labels.dtype == np.uint8
    assert set(np.unique(pair.labels)) <= {0, 1, 2}
    assert pair.nuisances["misregistration_mm"] <= 2.0
    assert max(abs(a) for a in pair.nuisances["rotation_deg"]) <= 3.0
    for time_point in ("current", "prior"):
        assert {"kernel_sigma_mm", "slice_thickness_mm", "noise_sigma_hu"} <= set(
            pair.nuisances[time_point]
        )


def test_no_change_pair_has_no_labels():
    pair = _pair(13, no_change_fraction=1.0)

    assert pair.nuisances["no_change"]
    assert not pair.has_change
    assert all(change["kind"] == "stable" for change in pair.nuisances["changes"])


def test_labels_mark_where_images_differ():
    pair = _pair(21, no_change_fraction=0.0)
    assert pair.has_change
    difference = np.abs(pair.current - pair.prior)

    # Labels come from the lesions, not from the images. Where a lesion came or went,
    # the images differ by its contrast, well above the noise and edge background.
    for value in (1, 2):
        inside = pair.labels == value
        if inside.any():
            assert np.median(difference[inside]) > 3 * np.median(difference[pair.labels == 0])


def test_grid_points_geometry():
    pair = _pair(31)
    points = _grid_points(SHAPE, SPACING, np.asarray(pair.origin_lps))

    assert points.shape == (np.prod(SHAPE), 3)
    # Voxel (0, 0, 0) is at the origin, the last voxel at origin + (shape - 1) * spacing.
    assert np.allclose(points[0], pair.origin_lps)
    expected_last = np.asarray(pair.origin_lps) + (np.array(SHAPE[::-1]) - 1) * np.asarray(SPACING)
    assert np.allclose(points[-1], expected_last)
    # C order: x varies fastest.
    assert np.allclose(points[1] - points[0], (SPACING[0], 0.0, 0.0))


def test_held_out_stream_is_stable_and_separate():
    held_out = held_out_pairs(5, 2, shape=SHAPE, spacing=SPACING)
    again = held_out_pairs(5, 3, shape=SHAPE, spacing=SPACING)
    training = training_pairs(5, 2, shape=SHAPE, spacing=SPACING)

    assert np.array_equal(held_out[1].current, again[1].current)
    assert not np.array_equal(held_out[0].current, training[0].current)
