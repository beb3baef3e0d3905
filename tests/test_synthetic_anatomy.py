"""Tests of the analytic chest phantom in priors.synthetic.anatomy."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from priors.synthetic.anatomy import (
    Anatomy,
    Lesion,
    Tissue,
    lesion_index,
    random_anatomy,
    random_lung_lesion,
    sample_hu,
    tissue_labels,
)

# Generous bound for a 128 x 128 x 100 grid on a shared, loaded CPU.
GRID_SECONDS_MAX = 4.0


def _grid(shape: tuple[int, int, int], half_extent_mm: tuple[float, float, float]) -> np.ndarray:
    axes = [np.linspace(-h, h, n) for n, h in zip(shape, half_extent_mm, strict=True)]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def test_sample_hu_tissue_ranges() -> None:
    anatomy = Anatomy()
    points = np.array(
        [
            [0.0, -200.0, 0.0],  # in front of the chest
            [250.0, 0.0, 0.0],  # lateral to the body
            [anatomy.lung_offset_x_mm, anatomy.lung_center_y_mm, anatomy.lung_center_z_mm],
            [-anatomy.lung_offset_x_mm, anatomy.lung_center_y_mm, anatomy.lung_center_z_mm],
            [0.0, anatomy.spine_center_y_mm, 10.0],  # vertebral body, not a disc
            [0.0, anatomy.body_radii_mm[1] - 3.0, 0.0],  # posterior subcutaneous fat
            list(anatomy.heart_center_mm),
        ]
    )
    hu = sample_hu(anatomy, points)

    assert hu.dtype == np.float32
    assert hu.shape == (len(points),)
    assert hu[0] == -1000.0
    assert hu[1] == -1000.0
    assert -900.0 <= hu[2] <= -800.0
    assert -900.0 <= hu[3] <= -800.0
    assert 400.0 <= hu[4] <= 1000.0
    assert -120.0 <= hu[5] <= -80.0
    assert hu[6] == anatomy.heart_hu


def test_lesion_replaces_lung_hu() -> None:
    base = Anatomy()
    center = (base.lung_offset_x_mm, base.lung_center_y_mm, base.lung_center_z_mm)
    lesion = Lesion(center_mm=center, radii_mm=(10.0, 8.0, 6.0), hu=45.0)
    anatomy = dataclasses.replace(base, lesions=(lesion,))
    inside = np.array([center, [center[0] + 9.0, center[1], center[2]]])
    outside = np.array([[center[0] + 11.0, center[1], center[2]]])

    assert np.all(sample_hu(anatomy, inside) == 45.0)
    assert sample_hu(anatomy, outside)[0] == base.lung_hu
    assert lesion_index(anatomy, inside).tolist() == [1, 1]
    assert lesion_index(anatomy, outside).tolist() == [0]


def test_lesion_index_later_lesion_wins() -> None:
    base = Anatomy()
    center = (base.lung_offset_x_mm, base.lung_center_y_mm, base.lung_center_z_mm)
    big = Lesion(center_mm=center, radii_mm=(12.0, 12.0, 12.0), hu=30.0)
    small = Lesion(center_mm=center, radii_mm=(4.0, 4.0, 4.0), hu=70.0)
    anatomy = dataclasses.replace(base, lesions=(big, small))
    points = np.array([center, [center[0] + 8.0, center[1], center[2]]])

    index = lesion_index(anatomy, points)

    assert index.dtype == np.int16
    assert index.tolist() == [2, 1]


def test_lobulated_outline_depends_on_seed() -> None:
    base = Anatomy()
    center = (base.lung_offset_x_mm, base.lung_center_y_mm, base.lung_center_z_mm)
    points = _grid((41, 41, 41), (20.0, 20.0, 20.0)) + np.asarray(center)

    def mask(lobulation: float, seed: int) -> np.ndarray:
        lesion = Lesion(center, (12.0, 12.0, 12.0), 40.0, lobulation=lobulation, seed=seed)
        return lesion_index(dataclasses.replace(base, lesions=(lesion,)), points) > 0

    plain = mask(0.0, 0)
    lobed_a = mask(0.3, 1)
    lobed_a_again = mask(0.3, 1)
    lobed_b = mask(0.3, 2)

    assert np.array_equal(lobed_a, lobed_a_again)
    assert np.count_nonzero(lobed_a ^ plain) > 0.05 * np.count_nonzero(plain)
    assert np.count_nonzero(lobed_a ^ lobed_b) > 0.05 * np.count_nonzero(plain)


def test_random_anatomy_repeats_with_seed() -> None:
    first = random_anatomy(np.random.default_rng(7))
    again = random_anatomy(np.random.default_rng(7))
    other = random_anatomy(np.random.default_rng(8))

    assert first == again
    assert first != other
    assert first.lesions == ()


@pytest.mark.parametrize("seed", range(5))
def test_random_lung_lesion_lies_in_lung(seed: int) -> None:
    rng = np.random.default_rng(seed)
    anatomy = random_anatomy(rng)
    lesion = random_lung_lesion(anatomy, rng)
    with_lesion = dataclasses.replace(anatomy, lesions=(lesion,))
    offsets = _grid((21, 21, 21), tuple(1.4 * r for r in lesion.radii_mm))
    points = offsets + np.asarray(lesion.center_mm)

    inside = lesion_index(with_lesion, points) == 1
    labels = tissue_labels(anatomy, points[inside])

    assert np.count_nonzero(inside) > 0
    assert np.all(labels == Tissue.LUNG)
    assert 8.0 <= lesion.diameter_mm <= 30.0


def test_random_lung_lesion_too_large_raises() -> None:
    anatomy = Anatomy()
    with pytest.raises(ValueError, match="no lung lesion with diameter"):
        random_lung_lesion(
            anatomy, np.random.default_rng(0), diameter_mm=(400.0, 500.0), max_tries=5
        )


def test_sample_hu_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"shape \(4,\), expected \(N, 3\)"):
        sample_hu(Anatomy(), np.zeros(4))


def test_sample_hu_grid_is_fast() -> None:
    anatomy = random_anatomy(np.random.default_rng(3))
    points = _grid((128, 128, 100), (200.0, 200.0, 150.0))

    start = time.perf_counter()
    hu = sample_hu(anatomy, points)
    elapsed = time.perf_counter() - start

    assert hu.shape == (128 * 128 * 100,)
    assert elapsed < GRID_SECONDS_MAX
