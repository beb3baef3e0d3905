"""Intensity mapping and the three-channel network input."""

from __future__ import annotations

import numpy as np
import pytest

from priors.change.preprocessing import normalise_ct, stack_inputs

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
