"""Shortcuts of the registration that save time: each must give what the long way gives."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import SimpleITK as sitk
from test_registration_synthetic import body_points, known_rigid, make_volume, tre_mm

from priors.registration import _levels, preset, register
from priors.registration.masks import _opening


@pytest.fixture(scope="module")
def small_pair() -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    truth = known_rigid()
    current = make_volume((64, 64, 50), (5.0, 5.0, 6.0), seed=11)
    prior = make_volume(
        (60, 55, 40),
        (5.2, 4.8, 7.0),
        origin=(-150.0, -120.0, -110.0),
        to_phantom=truth.GetInverse(),
        seed=12,
    )
    return current, prior, truth


def test_opening_matches_itk_ball() -> None:
    # Blobs, thin plates and noise that touch the volume's faces, where ITK's erosion
    # treats the outside as foreground.
    rng = np.random.default_rng(3)
    smooth = sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.normal(size=(30, 40, 50)).astype(np.float32)), 1.5
    )
    mask = sitk.Cast(smooth > 0.0, sitk.sitkUInt8)
    array = sitk.GetArrayFromImage(mask)
    array[:, 20, :] = 1  # a plate one voxel thick, which the opening removes
    array[rng.random(array.shape) < 0.02] = 1
    mask = sitk.GetImageFromArray(array)
    mask.SetSpacing((2.0, 2.0, 3.0))

    expected = sitk.BinaryMorphologicalOpening(mask, [1, 1, 1])
    opened = _opening(mask)
    assert opened.GetSpacing() == mask.GetSpacing()
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(opened), sitk.GetArrayViewFromImage(expected)
    )


def test_large_pyramid_shrinks_from_finer_level(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    image = sitk.GetImageFromArray(rng.normal(0, 100, (40, 64, 64)).astype(np.float32))
    image.SetSpacing((0.75, 0.75, 1.5))
    monkeypatch.setattr(_levels, "LARGE_IMAGE_VOXELS", 1000)
    levels = _levels.build_pyramid(image, preset("CT-CT"))
    assert [level.shrink_factors for level in levels] == [(8, 8, 4), (4, 4, 2), (2, 2, 1)]
    assert all(level.large for level in levels)
    # The unsmoothed finest level is the 2 x 2 x 1 average of the image; a coarser
    # level shrunk from it equals one shrunk from the image directly. The images
    # stay bound to names while their array views are compared.
    finest = sitk.BinShrink(image, [2, 2, 1])
    np.testing.assert_allclose(
        sitk.GetArrayViewFromImage(levels[-1].image), sitk.GetArrayViewFromImage(finest), atol=1e-4
    )
    chained = _levels._shrink_finest_first(image, [(4, 4, 2), (2, 2, 1)])[0]
    direct = sitk.BinShrink(image, [4, 4, 2])
    np.testing.assert_allclose(
        sitk.GetArrayViewFromImage(chained), sitk.GetArrayViewFromImage(direct), atol=1e-4
    )


def test_redundant_start_joins_first(small_pair: tuple) -> None:
    current, prior, truth = small_pair
    options = dataclasses.replace(preset("CT-CT"), initialisations=("moments", "geometry"))
    result = register(current, prior, options=options)
    first, second = result.candidates
    assert first["status"] == "converged"
    assert second["status"] == "redundant"
    assert second["joined"] == 0
    assert len(second["iterations_per_level"]) == 1
    assert list(result.transform.GetParameters()) == first["parameters"]
    assert np.percentile(tre_mm(result.transform, truth, body_points(current)), 95) <= 0.5


def test_redundant_start_off_runs_every_start(small_pair: tuple) -> None:
    current, prior, _ = small_pair
    options = dataclasses.replace(
        preset("CT-CT"), initialisations=("moments", "geometry"), redundant_start_voxels=0.0
    )
    result = register(current, prior, options=options)
    assert [c["status"] for c in result.candidates] == ["converged", "converged"]
    assert all(len(c["iterations_per_level"]) == 3 for c in result.candidates)


def _minimum_steps(current: sitk.Image, options) -> list[float]:
    """Return the minimum step (mm) of each level, read from ITK's stop conditions."""
    pyramid = _levels.build_pyramid(current, options)
    mask = sitk.Cast(current > -500, sitk.sitkUInt8)
    start = sitk.Euler3DTransform()
    start.SetTranslation((3.0, 2.0, 1.0))
    _, info = _levels.optimise(pyramid, pyramid, start, options, fixed_mask=mask, moving_mask=None)
    steps = [re.search(r"minimum step \(([\d.e-]+)\)", text) for text in info["stop_conditions"]]
    assert all(steps), info["stop_conditions"]
    return [float(step.group(1)) for step in steps]


@pytest.mark.parametrize("large", [False, True])
def test_minimum_step_per_level(
    small_pair: tuple, monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    current, _, _ = small_pair
    options = preset("CT-CT")
    if large:
        monkeypatch.setattr(_levels, "LARGE_IMAGE_VOXELS", 1000)
    # Smallest voxel sides of the levels: 18 mm (20 x 20 x 18), 10 and 5 mm. The
    # finest stops at 0.02 voxel (0.1 mm), the coarser ones of a large volume at
    # 0.1 voxel, those of a small one at options.min_step (0.001 mm).
    coarse = [1.8, 1.0] if large else [options.min_step] * 2
    assert _minimum_steps(current, options) == pytest.approx([*coarse, 0.1])
