"""Intensity mapping and the network input channels."""

from __future__ import annotations

import numpy as np
import pytest

from priors.change.preprocessing import matched_difference, normalise_ct, stack_inputs

PREPROCESSING = {"center_hu": 40.0, "scale_hu": 50.0}


def test_normalise_ct_centre_and_order():
    hu = np.array([-1024.0, -850.0, -100.0, 40.0, 90.0, 900.0, 3071.0])

    mapped = normalise_ct(hu, **PREPROCESSING)

    assert mapped[3] == 0.0
    assert np.all(np.diff(mapped) > 0)
    assert mapped.min() > -1.0
    assert mapped.max() < 1.25


def test_normalise_ct_expands_soft_tissue():
    lung_step = np.diff(normalise_ct(np.array([-850.0, -250.0]), **PREPROCESSING))[0]
    soft_tissue_step = np.diff(normalise_ct(np.array([40.0, 90.0]), **PREPROCESSING))[0]

    # 50 HU in soft tissue spans at least half the range of a 600 HU lung nodule.
    assert soft_tissue_step > 0.5 * lung_step


def test_normalise_ct_rejects_bad_scale():
    with pytest.raises(ValueError, match="scale_hu is 0.0, expected a positive"):
        normalise_ct(np.zeros(3), center_hu=0.0, scale_hu=0.0)


def test_stack_inputs_channels():
    current = np.full((2, 3, 4), 90.0, dtype=np.float32)
    prior = np.full((2, 3, 4), 40.0, dtype=np.float32)

    inputs = stack_inputs(current, prior, PREPROCESSING)

    assert inputs.shape == (3, 2, 3, 4)
    assert inputs.dtype == np.float32
    assert np.allclose(inputs[1], 0.0)
    assert np.allclose(inputs[2], inputs[0] - inputs[1])
    assert np.all(inputs[2] > 0)


FIVE_CHANNELS = {
    **PREPROCESSING,
    "channels": [
        "current",
        "prior",
        "current - prior",
        "current outside prior range",
        "prior outside current range",
    ],
    "match_footprint_voxels": [3, 5, 5],
    "match_smoothing_voxels": 0.0,
}


def _soft_tissue_with_edge(shift: int) -> np.ndarray:
    volume = np.full((8, 24, 24), 40.0, dtype=np.float32)
    volume[:, :, 12 + shift :] = -850.0
    return volume


def test_matched_difference_ignores_a_shifted_edge():
    current = _soft_tissue_with_edge(0)
    prior = _soft_tissue_with_edge(2)

    inputs = stack_inputs(current, prior, FIVE_CHANNELS)

    # The plain difference shows the two-voxel shift of the edge, the matched ones do not.
    assert np.abs(inputs[2]).max() > 0.5
    assert np.allclose(inputs[3], 0.0)
    assert np.allclose(inputs[4], 0.0)


def test_matched_difference_keeps_new_and_resolved_tissue():
    current = _soft_tissue_with_edge(0)
    prior = current.copy()
    current[3:6, 4:8, 16:20] = 0.0  # a new nodule in the lung
    prior[3:6, 4:8, 2:6] = 200.0  # a lesion brighter than tissue that resolved

    inputs = stack_inputs(current, prior, FIVE_CHANNELS)

    new = inputs[3][3:6, 4:8, 16:20]
    resolved = inputs[4][3:6, 4:8, 2:6]
    assert new.min() > 0.3
    assert resolved.min() > 0.1
    # Each channel speaks of its own time point only.
    assert np.allclose(inputs[3][3:6, 4:8, 2:6], 0.0)
    assert np.allclose(inputs[4][3:6, 4:8, 16:20], 0.0)


def test_matched_difference_sign_follows_brightness():
    reference = np.zeros((5, 5, 5), dtype=np.float32)
    moving = reference.copy()
    moving[2, 2, 2] = 1.0
    moving[0, 0, 0] = -2.0

    difference = matched_difference(moving, reference, footprint=(3, 3, 3))

    assert difference[2, 2, 2] == 1.0
    assert difference[0, 0, 0] == -2.0
    assert np.count_nonzero(difference) == 2


def test_matched_difference_rejects_bad_footprint():
    with pytest.raises(ValueError, match="expected three positive voxel counts"):
        matched_difference(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), footprint=(3, 0, 3))


def test_stack_inputs_rejects_unknown_channel():
    settings = {**PREPROCESSING, "channels": ["current", "future"]}
    with pytest.raises(ValueError, match="unknown input channels"):
        stack_inputs(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), settings)


def test_stack_inputs_follows_channel_order():
    current = np.full((2, 3, 4), 90.0, dtype=np.float32)
    prior = np.full((2, 3, 4), 40.0, dtype=np.float32)
    settings = {**PREPROCESSING, "channels": ["current - prior", "current"]}

    inputs = stack_inputs(current, prior, settings)

    assert inputs.shape == (2, 2, 3, 4)
    assert np.allclose(inputs[0], inputs[1])
