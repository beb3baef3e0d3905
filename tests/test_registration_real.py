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


def read_series_number(study: Path, series_number: int) -> sitk.Image:
    """Read the files of one series, chosen by (0020,0011) Series Number, from a folder."""
    files = [
        path
        for path in sorted(study.iterdir())
        if int(pydicom.dcmread(path, stop_before_pixels=True).SeriesNumber) == series_number
    ]
    return read_volume(files)


@pytest.mark.slow
def test_spine_pair_runs_within_a_minute(shared_data: Path) -> None:
    # Sagittal T2 of one patient from two sites six days apart: 448 x 498 x 15 at
    # 1.5 T (current) and 512 x 512 x 11 at 0.3 T (prior), no shared frame of reference.
    patient = shared_data / "spine-cd-a" / "DICOM" / "04600" / "P0000001"
    current = read_series_number(patient / "S0000006", 4001)
    prior = read_series_number(patient / "S0000008", 6)
    result = register(current, prior, modality_pair="MR-MR")
    assert result.timings["total"] < 60.0
    assert result.verdict in {"pass", "fail"}
    assert (result.verdict == "fail") == bool(result.reason)
    assert np.isfinite(result.metrics["overlap_fraction"])
    assert np.isfinite(result.metrics["metric_after"])
