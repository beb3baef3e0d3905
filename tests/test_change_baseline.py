"""Registered subtraction baseline on made-up volumes."""

from __future__ import annotations

import numpy as np
import pytest

from priors.change import subtraction_baseline
from priors.change.baseline import body_mask

SPACING = (1.5, 1.5, 2.0)
SHAPE = (24, 48, 48)


def _noisy_body(rng: np.random.Generator, noise_hu: float = 15.0) -> np.ndarray:
    volume = rng.normal(40.0, noise_hu, SHAPE).astype(np.float32)
    volume[:, :, :6] = -1000.0
    return volume


def _ball(center_zyx: tuple[float, float, float], diameter_mm: float) -> np.ndarray:
    z, y, x = np.indices(SHAPE)
    distance = np.sqrt(
        ((z - center_zyx[0]) * SPACING[2]) ** 2
        + ((y - center_zyx[1]) * SPACING[1]) ** 2
        + ((x - center_zyx[2]) * SPACING[0]) ** 2
    )
    return distance <= diameter_mm / 2


def test_baseline_finds_large_new_lesion():
    rng = np.random.default_rng(3)
    prior = _noisy_body(rng)
    current = _noisy_body(rng)
    lesion = _ball((12, 24, 28), 15.0)
    current[lesion] += 120.0

    output = subtraction_baseline(current, prior, spacing=SPACING)

    assert output.method == "baseline"
    assert output.labels.shape == SHAPE
    assert output.labels.dtype == np.uint8
    found = output.labels == 1
    assert found[12, 24, 28]
    assert np.count_nonzero(found & lesion) > 0.7 * np.count_nonzero(lesion)
    assert np.count_nonzero(found & ~lesion) < 0.3 * np.count_nonzero(lesion)
    assert not np.any(output.labels == 2)


def test_baseline_resolved_lesion_is_class_two():
    rng = np.random.default_rng(4)
    prior = _noisy_body(rng)
    current = _noisy_body(rng)
    prior[_ball((12, 24, 28), 12.0)] += 120.0

    output = subtraction_baseline(current, prior, spacing=SPACING)

    assert output.labels[12, 24, 28] == 2
    assert not np.any(output.labels == 1)


def test_baseline_quiet_on_identical_noisy_pair():
    rng = np.random.default_rng(5)
    anatomy = _noisy_body(rng, noise_hu=0.0)
    anatomy[_ball((12, 24, 28), 12.0)] = 300.0
    current = anatomy + rng.normal(0.0, 15.0, SHAPE).astype(np.float32)
    prior = anatomy + rng.normal(0.0, 15.0, SHAPE).astype(np.float32)

    output = subtraction_baseline(current, prior, spacing=SPACING)

    assert not output.labels.any()
    assert output.parameters["noise_sigma"] > 0


def test_baseline_normalises_mr():
    rng = np.random.default_rng(6)
    prior = np.abs(rng.normal(300.0, 20.0, SHAPE)).astype(np.float32)
    # Same anatomy, rescaled as an uncalibrated MR scanner might; no change.
    current = prior * 1.8 + 50.0

    output = subtraction_baseline(current, prior, spacing=SPACING, modality="MR")

    assert output.parameters["intensity_normalisation"] == "robust z-score inside the body"
    assert not output.labels.any()


def test_baseline_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"current shape \(2, 2, 2\) differs from prior shape"):
        subtraction_baseline(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), spacing=SPACING)


def test_body_mask_fills_lungs():
    volume = np.full(SHAPE, -1000.0, dtype=np.float32)
    volume[:, 8:40, 8:40] = 40.0
    volume[:, 16:32, 16:32] = -850.0

    mask = body_mask(volume)

    assert mask[10, 24, 24]
    assert not mask[10, 2, 2]
