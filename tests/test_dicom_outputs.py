"""DICOM Segmentation and Parametric Map of the change maps (priors.packaging.dicom_outputs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from priors.dicom.volume import build_volumes
from priors.packaging.dicom_outputs import DicomOutputError, write_change_dicom

# The probability map is stored as 32-bit floats.
FLOAT_TOLERANCE = 1e-6

ALGORITHM = {"name": "change-unet", "version": "1.2.0", "method": "model",
             "weights_sha256": "0123456789abcdef" * 4}
PSEUDONYM = "P-3f9a1c2b7d"


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    """Return the dciodvfy executable (Debian package dicom3tools), skipping when absent."""
    path = shutil.which("dciodvfy")
    if path is None:
        message = "dciodvfy not found: install the Debian package dicom3tools"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _validator_errors(dciodvfy: str, path: str) -> list[str]:
    result = subprocess.run([dciodvfy, path], capture_output=True, check=False)
    # Person names are written with ISO 2022 escapes, so the output is not UTF-8.
    text = (result.stdout + result.stderr).decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if line.startswith("Error")]


def _source_sop_of_frames(dataset: pydicom.Dataset) -> list[str]:
    return [
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for item in dataset.PerFrameFunctionalGroupsSequence
    ]


def _change_maps(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return a label map with one block per class and a random probability map."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    labels = np.zeros(shape, dtype=np.uint8)
    labels[z // 4: z // 2, y // 4: y // 2, x // 4: x // 2] = 1
    labels[z // 2 + 1: z // 2 + 3, y // 2: y // 2 + y // 8, x // 2: x // 2 + x // 8] = 2
    probability = rng.random(shape).astype(np.float32)
    probability[0, 0, :2] = (0.0, 1.0)
    return labels, probability


@pytest.fixture(scope="module")
def synthetic_volume(tmp_path_factory: pytest.TempPathFactory):
    from priors.synthetic import write_cohort

    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, seed=11, n_patients=1, n_timepoints=2, matrix=48, coverage_mm=100.0)
    series: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name == "DICOMDIR" or path.suffix in (".json", ".gz"):
            continue
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        if dataset.Modality == "CT" and float(dataset.get("SliceThickness") or 99) < 3:
            series.setdefault(dataset.SeriesInstanceUID, []).append(path)
    paths = max(series.values(), key=len)
    volumes, _ = build_volumes(paths)
    return max(volumes, key=lambda volume: len(volume.paths))


@pytest.fixture(scope="module")
def spine_volume(shared_data: Path):
    folder = shared_data / "spine-cd-a" / "DICOM" / "04600" / "P0000001" / "S0000006"
    paths = [path for path in sorted(folder.iterdir())
             if str(pydicom.dcmread(path, stop_before_pixels=True).SeriesNumber) == "4001"]
    assert len(paths) == 15
    volumes, _ = build_volumes(paths)
    return max(volumes, key=lambda volume: len(volume.paths))


@pytest.fixture(params=["synthetic", "spine"])
def volume(request: pytest.FixtureRequest):
    return request.getfixturevalue(f"{request.param}_volume")


@pytest.mark.parametrize("pseudonym", [None, PSEUDONYM])
def test_change_dicom_round_trip(volume, pseudonym, tmp_path: Path, dciodvfy: str) -> None:
    shape = tuple(int(size) for size in volume.image.GetSize()[::-1])
    labels, probability = _change_maps(shape, seed=3)

    written = write_change_dicom(source_paths=volume.paths, labels=labels,
                                 probability=probability, out_dir=tmp_path,
                                 algorithm=ALGORITHM, pseudonym=pseudonym)

    seg = hd.seg.segread(written["segmentation"])
    assert list(seg.segment_numbers) == [1, 2]
    assert [item.SegmentLabel for item in seg.SegmentSequence] == [
        "new or grown", "resolved or shrunk"]
    expected_frames = sum(int(np.any(labels[k] == number))
                          for k in range(shape[0]) for number in (1, 2))
    assert seg.NumberOfFrames == expected_frames
    referenced = [uid for _, _, uid in seg.get_source_image_uids()]
    assert sorted(referenced) == sorted(volume.sop_instance_uids)
    read_labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=volume.sop_instance_uids, segment_numbers=[1, 2],
        combine_segments=True, skip_overlap_checks=True)
    assert np.array_equal(read_labels, labels)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == ALGORITHM["name"]
    assert ALGORITHM["weights_sha256"] in algorithm.AlgorithmParameters

    pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(written["parametric_map"]))
    assert pm.NumberOfFrames == shape[0]
    frame_sources = _source_sop_of_frames(pm)
    assert sorted(frame_sources) == sorted(volume.sop_instance_uids)
    by_source = dict(zip(frame_sources, pm.pixel_array, strict=True))
    read_probability = np.stack([by_source[uid] for uid in volume.sop_instance_uids])
    assert np.allclose(read_probability, probability, atol=FLOAT_TOLERANCE)
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert "probability" in pm.SeriesDescription

    for path in written.values():
        assert _validator_errors(dciodvfy, path) == []

    source = pydicom.dcmread(volume.paths[0], stop_before_pixels=True)
    for path in written.values():
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        if pseudonym is None:
            assert str(dataset.PatientName) == str(source.PatientName)
            assert dataset.PatientID == source.PatientID
            assert dataset.PatientBirthDate == source.PatientBirthDate
        else:
            assert str(dataset.PatientName) == pseudonym
            assert dataset.PatientID == pseudonym
            assert not dataset.get("PatientBirthDate")
            assert not dataset.get("AccessionNumber")
            assert str(source.PatientName) not in str(dataset.PatientName)
            raw = Path(path).read_bytes()
            assert source.PatientID.encode() not in raw
            assert source.PatientBirthDate.encode() not in raw


def test_spine_character_set_normalised(spine_volume, tmp_path: Path) -> None:
    source = pydicom.dcmread(spine_volume.paths[0], stop_before_pixels=True)
    assert source.SpecificCharacterSet[0] == ""
    shape = tuple(int(size) for size in spine_volume.image.GetSize()[::-1])
    labels, probability = _change_maps(shape, seed=5)

    written = write_change_dicom(source_paths=spine_volume.paths, labels=labels,
                                 probability=probability, out_dir=tmp_path,
                                 algorithm=ALGORITHM)

    seg = pydicom.dcmread(written["segmentation"], stop_before_pixels=True)
    assert list(seg.SpecificCharacterSet) == ["ISO 2022 IR 6", *source.SpecificCharacterSet[1:]]
    assert seg.PatientName == source.PatientName


def test_change_dicom_rejects_wrong_order(synthetic_volume, tmp_path: Path) -> None:
    shape = tuple(int(size) for size in synthetic_volume.image.GetSize()[::-1])
    labels, probability = _change_maps(shape, seed=7)
    paths = list(synthetic_volume.paths)
    paths[1], paths[2] = paths[2], paths[1]

    with pytest.raises(DicomOutputError, match=r"slice 1\).*Image Position \(Patient\)"):
        write_change_dicom(source_paths=paths, labels=labels, probability=probability,
                           out_dir=tmp_path, algorithm=ALGORITHM)


def test_change_dicom_rejects_slice_count(synthetic_volume, tmp_path: Path) -> None:
    shape = tuple(int(size) for size in synthetic_volume.image.GetSize()[::-1])
    labels, probability = _change_maps(shape, seed=7)

    with pytest.raises(DicomOutputError, match="source images for"):
        write_change_dicom(source_paths=synthetic_volume.paths[1:], labels=labels,
                           probability=probability, out_dir=tmp_path, algorithm=ALGORITHM)


def test_change_dicom_rejects_probability_range(synthetic_volume, tmp_path: Path) -> None:
    shape = tuple(int(size) for size in synthetic_volume.image.GetSize()[::-1])
    labels, probability = _change_maps(shape, seed=7)
    probability[0, 0, 0] = 1.5

    with pytest.raises(DicomOutputError, match=r"expected finite values in \[0, 1\]"):
        write_change_dicom(source_paths=synthetic_volume.paths, labels=labels,
                           probability=probability, out_dir=tmp_path, algorithm=ALGORITHM)


def test_change_dicom_without_body_part(synthetic_volume, tmp_path: Path,
                                        dciodvfy: str) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    paths = []
    for index, path in enumerate(synthetic_volume.paths):
        dataset = pydicom.dcmread(path)
        del dataset.BodyPartExamined
        paths.append(sources / f"{index:03d}.dcm")
        dataset.save_as(paths[-1])
    shape = tuple(int(size) for size in synthetic_volume.image.GetSize()[::-1])
    labels, probability = _change_maps(shape, seed=9)

    written = write_change_dicom(source_paths=paths, labels=labels, probability=probability,
                                 out_dir=tmp_path / "out", algorithm=ALGORITHM)

    seg = pydicom.dcmread(written["segmentation"], stop_before_pixels=True)
    pm = pydicom.dcmread(written["parametric_map"], stop_before_pixels=True)
    assert "BodyPartExamined" not in seg
    assert "Laterality" not in seg
    assert "BodyPartExamined" not in pm
    assert pm.Laterality in (None, "")
    for path in written.values():
        assert _validator_errors(dciodvfy, path) == []
