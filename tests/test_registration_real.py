"""Registration of real MR series from the shared test data.

The volumes are read here with SimpleITK's ``ImageSeriesReader``, so these tests do
not depend on the project's own DICOM layer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from priors.dicom.volume import build_volumes
from priors.registration import preset, register

pytestmark = pytest.mark.shared_data

# Allowed distance of the recovered transform from the identity, mm.
MAX_TRANSLATION_MM = 0.5

# Allowed inverse consistency of the supine/prone pair, 95th percentile, mm.
MAX_INVERSE_CONSISTENCY_MM = 0.5


def read_volume(files: list[Path]) -> sitk.Image:
    """Read DICOM files of one volume, ordered along the slice normal."""
    keyed = []
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        keyed.append((float(normal @ np.asarray(header.ImagePositionPatient, dtype=float)), path))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for _, path in sorted(keyed)])
    return reader.Execute()


def echo1_magnitude(folder: Path) -> sitk.Image:
    """Read the echo-1 magnitude volume of a series that mixes echoes and phase."""
    files = []
    for path in sorted(folder.glob("*.dcm")):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        # (0008,0008) Image Type value 4 is "M" for magnitude, "P" for phase (Philips).
        if header.ImageType[3] == "M" and int(header.EchoNumbers) == 1:
            files.append(path)
    assert len(files) == 30, f"{folder}: found {len(files)} echo-1 magnitude files, expected 30"
    return read_volume(files)


@pytest.fixture(scope="module")
def table_moved(shared_data: Path) -> tuple[sitk.Image, sitk.Image]:
    """Return the magnitude volumes of a phantom scanned before and after a 60 mm table move.

    The phantom moved with the table, so in patient coordinates the true transform
    is the identity.
    """
    root = shared_data / "table-moved" / "In" / "Ph"
    current = echo1_magnitude(root / "1301_Dual-echo_iso")
    prior = echo1_magnitude(root / "2201_Dual-echo_FH-60_table_moved")
    return current, prior


@pytest.fixture(scope="module")
def supine_prone(shared_data: Path) -> tuple[sitk.Image, sitk.Image]:
    """Return the head T1 volumes of one volunteer, supine (current) and prone (prior)."""
    root = shared_data / "same-subject-mr" / "In"
    current = read_volume(sorted((root / "HFS" / "3_t1_fl2d_sag").glob("*.dcm")))
    prior = read_volume(sorted((root / "HFP" / "2_t1_fl2d_sag").glob("*.dcm")))
    return current, prior


def body_displacement_mm(transform: sitk.Transform, image: sitk.Image) -> np.ndarray:
    """Return |T(p) - p| at the corners of the volume's bounding box, mm."""
    size = np.asarray(image.GetSize()) - 1
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in size * np.array(bits)])
        for bits in np.ndindex(2, 2, 2)
    ]
    return np.array([np.linalg.norm(np.subtract(transform.TransformPoint(p), p)) for p in corners])


@pytest.mark.parametrize("metric", ["mattes", "correlation"])
@pytest.mark.parametrize("perturbation_mm", [(0.0, 0.0, 20.0), (0.0, 0.0, -20.0), (20.0, 0.0, 0.0)])
def test_table_moved_recovers_identity(
    table_moved: tuple, metric: str, perturbation_mm: tuple
) -> None:
    current, prior = table_moved
    options = dataclasses.replace(preset("MR-MR"), metric=metric)
    start = sitk.TranslationTransform(3, perturbation_mm)
    result = register(current, prior, options=options, initial_transform=start)
    center = result.transform.GetFixedParameters()[:3]
    shift = np.subtract(result.transform.TransformPoint(center), center)
    assert np.linalg.norm(shift) <= MAX_TRANSLATION_MM, shift
    assert result.metrics["ncc_in_overlap"] > 0.95
    assert result.verdict == "pass", result.reason


def test_table_moved_corners_near_identity(table_moved: tuple) -> None:
    current, prior = table_moved
    start = sitk.TranslationTransform(3, (0.0, 0.0, 20.0))
    result = register(current, prior, modality_pair="MR-MR", initial_transform=start)
    # The phantom is nearly a sphere, so small rotations about its centre cost little.
    # The corners of the 270 x 270 x 116 mm box bound what such rotations do.
    assert body_displacement_mm(result.transform, current).max() <= 2.0


@pytest.mark.slow
def test_supine_prone_inverse_consistency(supine_prone: tuple) -> None:
    current, prior = supine_prone
    options = dataclasses.replace(preset("MR-MR"), inverse_consistency=True)
    result = register(current, prior, options=options)
    assert result.verdict == "pass", result.reason
    assert result.metrics["inverse_consistency_mm_p95"] <= MAX_INVERSE_CONSISTENCY_MM
    assert result.metrics["reverse_verdict"] == "pass"
    assert result.metrics["overlap_fraction"] > 0.9
    assert result.metrics["metric_after"] < result.metrics["metric_before"]
    # The head moved by several cm between the studies.
    assert np.linalg.norm(np.asarray(result.matrix_lps)[:3, 3]) > 20.0


def spine_series(folder: Path, series_number: int) -> sitk.Image:
    """Build the volume of one series, chosen by (0020,0011) Series Number, under ``folder``.

    Uses the project's DICOM layer and keeps the volume with the most slices.
    """
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        if "SeriesNumber" in header and int(header.SeriesNumber) == series_number:
            files.append(path)
    assert files, f"{folder}: no files of series {series_number}"
    volumes, _ = build_volumes(files)
    assert volumes, f"{folder}: series {series_number} gave no volume"
    return max(volumes, key=lambda v: v.image.GetSize()[2]).image


@pytest.fixture(scope="module")
def spine_t2(shared_data: Path) -> tuple[sitk.Image, sitk.Image]:
    """Return the sagittal lumbar T2 of one patient from two sites six days apart.

    Current: 448 x 498 x 15 at 1.5 T; prior: 512 x 512 x 11 at 0.3 T. The two have
    no shared frame of reference and their centres differ by about 63 mm S-I.
    """
    patient = shared_data / "spine-cd-a" / "DICOM" / "04600" / "P0000001"
    current = spine_series(patient / "S0000006", 4001)
    prior = spine_series(shared_data / "spine-cd-b", 6)
    return current, prior


@pytest.fixture(scope="module")
def spine_t2_result(spine_t2: tuple) -> object:
    current, prior = spine_t2
    return register(current, prior, modality_pair="MR-MR")


def mid_sagittal_ncc(current: sitk.Image, prior: sitk.Image, transform: sitk.Transform) -> float:
    """Return the NCC of the current's middle slice and the registered prior on it.

    Computed only where the registered prior has data, independently of the
    registration's own metric and masks.
    """
    middle = current.GetSize()[2] // 2
    plane = current[:, :, middle : middle + 1]
    moved = sitk.Resample(prior, plane, transform, sitk.sitkLinear, -1.0, sitk.sitkFloat32)
    a = sitk.GetArrayViewFromImage(plane).astype(float).ravel()
    b = sitk.GetArrayViewFromImage(moved).astype(float).ravel()
    inside = b >= 0
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


# One lumbar level: the registration is wrong if a shift by this much along S-I fits
# the mid-sagittal plane as well as the result.
VERTEBRAL_LEVEL_MM = 30.0


@pytest.mark.slow
def test_spine_t2_pair_registers(spine_t2: tuple, spine_t2_result) -> None:
    current, prior = spine_t2
    result = spine_t2_result
    assert result.verdict == "pass", result.reason
    assert result.parameters["slab_search"]["run"] is True
    plane = [c for c in result.candidates if c.get("stage") == "plane"]
    assert len({c["offset_mm"] for c in plane}) >= 5
    assert all("plane_metric" in c for c in plane if c["status"] == "converged")
    assert result.metrics["overlap_fraction"] >= 0.9
    assert np.isfinite(result.metrics["ncc_in_overlap"])
    assert result.timings["total"] < 60.0

    aligned = mid_sagittal_ncc(current, prior, result.transform)
    for shift in (VERTEBRAL_LEVEL_MM, -VERTEBRAL_LEVEL_MM):
        # The registered prior moved by d along S-I (LPS z) samples the prior at T(p - d).
        moved = sitk.CompositeTransform(
            [result.transform, sitk.TranslationTransform(3, (0.0, 0.0, -shift))]
        )
        assert aligned > mid_sagittal_ncc(current, prior, moved) + 0.05, shift


@pytest.mark.slow
def test_spine_t2_pair_without_slab_search_is_held_back(spine_t2: tuple) -> None:
    # The 3-D optimiser alone drifts off this pair; the checks must catch it.
    current, prior = spine_t2
    options = dataclasses.replace(preset("MR-MR"), slab_search="off")
    result = register(current, prior, options=options)
    assert result.verdict == "fail"
    assert result.parameters["slab_search"]["run"] is False
