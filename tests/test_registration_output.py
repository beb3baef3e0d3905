"""Transform files, overlay PNGs, resampling and presets of the registration layer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from priors.config import RegistrationSettings
from priors.registration import (
    preset,
    read_transform,
    resample_onto,
    write_overlay_png,
    write_transform,
)


def rigid_transform() -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter((5.0, -3.0, 12.0))
    transform.SetRotation(math.radians(4.0), math.radians(-2.0), math.radians(7.0))
    transform.SetTranslation((1.5, -20.0, 33.0))
    return transform


def ramp_volume(size: tuple[int, int, int] = (20, 18, 12)) -> sitk.Image:
    """Return a float volume whose values rise along every axis, 2 x 2 x 3 mm voxels."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    image = sitk.GetImageFromArray((x + 2 * y + 3 * z).astype(np.float32))
    image.SetSpacing((2.0, 2.0, 3.0))
    return image


@pytest.mark.parametrize("suffix", [".tfm", ".h5"])
def test_transform_round_trip(tmp_path: Path, suffix: str) -> None:
    transform = rigid_transform()
    path = write_transform(transform, tmp_path / "sub" / f"prior_to_current{suffix}")
    loaded = read_transform(path)
    assert loaded.GetName() == "Euler3DTransform"
    np.testing.assert_allclose(loaded.GetParameters(), transform.GetParameters(), atol=1e-12)
    np.testing.assert_allclose(loaded.GetFixedParameters(), transform.GetFixedParameters())


def test_transform_suffix_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"suffix '\.json' is not supported"):
        write_transform(rigid_transform(), tmp_path / "transform.json")


def test_overlay_png_written(tmp_path: Path) -> None:
    current = ramp_volume()
    prior = resample_onto(current, current, rigid_transform(), modality="MR")
    path = write_overlay_png(current, prior, tmp_path / "qa" / "overlay.png", title="pair 1")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert reader.GetSize()[0] == 720


def test_overlay_rejects_other_grid(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resample it onto the current grid first"):
        write_overlay_png(ramp_volume(), ramp_volume((8, 8, 8)), tmp_path / "overlay.png")


def test_resample_label_nearest_keeps_values() -> None:
    labels = sitk.Image((10, 10, 10), sitk.sitkUInt8)
    labels[2:6, 2:6, 2:6] = 3
    shifted = sitk.TranslationTransform(3, (0.5, 0.0, 0.0))
    result = resample_onto(labels, labels, shifted, kind="label")
    assert result.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(result))) == {0, 3}


def test_resample_background_per_modality() -> None:
    current = ramp_volume()
    away = sitk.TranslationTransform(3, (1000.0, 0.0, 0.0))
    ct = sitk.GetArrayFromImage(resample_onto(current, current, away, modality="CT"))
    mr = sitk.GetArrayFromImage(resample_onto(current, current - 50.0, away, modality="MR"))
    assert np.all(ct == -1024.0)
    # An MR prior with negative values is filled with its minimum, not 0.
    assert np.all(mr == -50.0)


def test_resample_bspline_on_current_grid() -> None:
    current = ramp_volume()
    result = resample_onto(current, current, sitk.Transform(), interpolator="bspline")
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(
        sitk.GetArrayViewFromImage(result)[inner],
        sitk.GetArrayViewFromImage(current)[inner],
        atol=1e-3,
    )


def test_resample_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="resample kind 'mask' is not supported"):
        resample_onto(ramp_volume(), ramp_volume(), sitk.Transform(), kind="mask")


@pytest.mark.parametrize(
    ("pair", "metric", "min_ncc", "min_nmi"),
    [
        ("CT-CT", "correlation", 0.5, None),
        ("MR-MR", "mattes", 0.3, None),
        ("MR-CT", "mattes", None, 1.05),
    ],
)
def test_preset_defaults(
    pair: str, metric: str, min_ncc: float | None, min_nmi: float | None
) -> None:
    options = preset(pair)
    assert options.metric == metric
    assert options.min_ncc == min_ncc
    assert options.min_nmi == min_nmi


def test_preset_takes_settings() -> None:
    settings = RegistrationSettings(seed=7, threads=2, si_start_offsets_mm=(0.0, -40.0, 40.0))
    options = preset("CT-CT", settings)
    assert options.seed == 7
    assert options.threads == 2
    assert options.si_start_offsets_mm == (0.0, -40.0, 40.0)


def test_preset_ct_mr_masks_follow_current_modality() -> None:
    options = preset("CT-MR", current_modality="MR")
    assert options.body_mask == "mr"
    assert options.prior_body_mask == "ct"


def test_preset_rejects_unknown_pair() -> None:
    with pytest.raises(ValueError, match="modality pair 'PT-CT' is not supported"):
        preset("PT-CT")


def test_preset_rejects_mismatched_levels() -> None:
    settings = RegistrationSettings(shrink_factors=(4, 2, 1), smoothing_sigmas_mm=(1.0, 0.0))
    with pytest.raises(ValueError, match="shrink_factors has 3 levels"):
        preset("CT-CT", settings)
