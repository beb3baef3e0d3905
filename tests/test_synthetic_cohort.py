"""Tests of the synthetic multi-site cohort written by priors.synthetic.write_cohort."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.fileset import FileSet
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, XRayRadiationDoseSRStorage

from priors.synthetic import write_cohort

# Small sizes keep a cohort write to a few seconds. 40 slices 4 mm apart cover
# 160 mm, which holds every lesion of seed 11 after patient motion.
SMALL = {"matrix": 64, "n_slices": 40, "slice_spacing_mm": 4.0}

# Attributes of the CT Image IOD that this cohort must always fill: Patient, General
# Study, General Series, Frame of Reference, General Equipment, General Image, Image
# Plane, Image Pixel, CT Image and SOP Common modules.
CT_MANDATORY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription", "Modality", "SeriesInstanceUID", "SeriesNumber",
    "PatientPosition", "BodyPartExamined", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "Manufacturer", "ManufacturerModelName", "InstitutionName", "StationName",
    "InstanceNumber", "ImageType", "PixelSpacing", "ImageOrientationPatient",
    "ImagePositionPatient", "SliceThickness", "SamplesPerPixel", "PhotometricInterpretation",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "RescaleIntercept", "RescaleSlope", "KVP", "AcquisitionNumber", "ConvolutionKernel",
    "SOPClassUID", "SOPInstanceUID", "PixelData",
)  # fmt: skip

# A lesion centroid measured on a mask of 5 to 6 mm pixels and 4 mm slices lies
# within a few mm of the true centre once the lesion spans two voxels or more.
# Smaller lesions can be off by half a voxel diagonal, so they are not scored.
CENTROID_TOLERANCE_MM = 4.0
CENTROID_MIN_DIAMETER_MM = 12.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, seed=11, **SMALL)
    return root


@pytest.fixture(scope="module")
def truth(cohort: Path) -> dict[str, Any]:
    return json.loads((cohort / "ground_truth.json").read_text())


@pytest.fixture(scope="module")
def headers(cohort: Path) -> dict[Path, pydicom.Dataset]:
    files = [p for p in cohort.rglob("*") if p.is_file() and _is_dicom_path(cohort, p)]
    return {path: pydicom.dcmread(path) for path in sorted(files)}


def _is_dicom_path(root: Path, path: Path) -> bool:
    relative = path.relative_to(root)
    return relative.parts[0] not in {"ground_truth_masks"} and path.suffix != ".json"


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_rewrite_is_byte_identical(tmp_path: Path) -> None:
    options = {"matrix": 32, "n_slices": 8, "slice_spacing_mm": 4.0, "n_patients": 2}
    write_cohort(tmp_path / "first", seed=5, **options)
    write_cohort(tmp_path / "second", seed=5, **options)
    write_cohort(tmp_path / "other", seed=6, **options)
    first = _all_bytes(tmp_path / "first")
    second = _all_bytes(tmp_path / "second")
    other = _all_bytes(tmp_path / "other")

    assert len(first) > 50
    assert sorted(first) == sorted(second)
    for name, content in first.items():
        assert content == second[name], name
    assert first["ground_truth.json"] != other["ground_truth.json"]


def test_rewrite_in_place_replaces_cohort(tmp_path: Path) -> None:
    write_cohort(tmp_path, matrix=32, n_slices=12, slice_spacing_mm=4.0, n_patients=1)
    before = _all_bytes(tmp_path)
    write_cohort(tmp_path, matrix=32, n_slices=6, slice_spacing_mm=4.0, n_patients=1)
    write_cohort(tmp_path, matrix=32, n_slices=12, slice_spacing_mm=4.0, n_patients=1)

    assert _all_bytes(tmp_path) == before


def test_foreign_output_folder_raises(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a cohort")
    with pytest.raises(FileExistsError, match="contains no ground_truth.json"):
        write_cohort(tmp_path, matrix=32, n_slices=4)
    assert (tmp_path / "notes.txt").is_file()


def test_cohort_info_paths(tmp_path: Path) -> None:
    info = write_cohort(tmp_path, matrix=32, n_slices=8, slice_spacing_mm=4.0, n_patients=1)

    assert info.ground_truth == tmp_path / "ground_truth.json"
    assert (info.media_dir / "DICOMDIR").is_file()
    assert 1 <= len(info.site_dirs) <= 2  # the first study of the only person is on the CD
    assert set(info.site_dirs) <= {"northgate", "riverside", "lakeside"}
    for folder in info.site_dirs.values():
        assert any(folder.rglob("*.dcm"))
    dicom_files = [p for p in tmp_path.rglob("*") if p.is_file() and _is_dicom_path(tmp_path, p)]
    assert info.file_count == len(dicom_files)


def test_every_file_reads_as_dicom(headers: dict[Path, pydicom.Dataset]) -> None:
    assert len(headers) > 100
    for path, ds in headers.items():
        if path.name == "DICOMDIR":
            continue
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, path
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID, path
        assert ds.SOPClassUID in {CTImageStorage, XRayRadiationDoseSRStorage}, path


def test_ct_images_have_mandatory_attributes(headers: dict[Path, pydicom.Dataset]) -> None:
    images = [(p, ds) for p, ds in headers.items() if ds.get("SOPClassUID") == CTImageStorage]
    assert images
    for path, ds in images:
        missing = [keyword for keyword in CT_MANDATORY if keyword not in ds]
        assert missing == [], path
        assert ds.Modality == "CT"
        assert ds.BodyPartExamined == "CHEST"
        assert ds.RescaleIntercept == -1024
        assert ds.RescaleSlope == 1
        assert ds.PatientPosition in {"HFS", "FFS"}
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)


def _content_items(items: Any) -> list[pydicom.Dataset]:
    found = []
    for item in items:
        found.append(item)
        found.extend(_content_items(item.get("ContentSequence", [])))
    return found


def test_dose_reports_are_sr(headers: dict[Path, pydicom.Dataset]) -> None:
    reports = [ds for ds in headers.values() if ds.get("SOPClassUID") == XRayRadiationDoseSRStorage]
    assert len(reports) == 9
    for ds in reports:
        assert ds.Modality == "SR"
        assert ds.ValueType == "CONTAINER"
        assert ds.ConceptNameCodeSequence[0].CodeValue == "113701"
        assert ds.ContentTemplateSequence[0].TemplateIdentifier == "10011"
        assert ds.CompletionFlag == "COMPLETE"

        items = _content_items(ds.ContentSequence)
        for item in items:
            assert item.RelationshipType in {
                "CONTAINS", "HAS OBS CONTEXT", "HAS CONCEPT MOD", "HAS PROPERTIES",
            }  # fmt: skip
            assert "ConceptNameCodeSequence" in item
        numbers = {
            item.ConceptNameCodeSequence[0].CodeValue: float(
                item.MeasuredValueSequence[0].NumericValue
            )
            for item in items
            if item.ValueType == "NUM"
        }
        assert 1.0 < numbers["113830"] < 30.0  # Mean CTDIvol, mGy
        assert numbers["113838"] == numbers["113813"]  # event DLP equals the total
        scope = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "110180"]
        assert scope[0].UID == ds.StudyInstanceUID


def test_studies_carry_clutter_series(
    headers: dict[Path, pydicom.Dataset], truth: dict[str, Any]
) -> None:
    by_series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for ds in headers.values():
        if "SeriesInstanceUID" in ds:
            by_series[ds.SeriesInstanceUID].append(ds)
    for person in truth["persons"]:
        for study in person["studies"]:
            localizer = by_series[study["series"]["localizer"]]
            thin = by_series[study["series"]["thin"]]
            thick = by_series[study["series"]["thick"]]
            assert len(localizer) == 1
            assert list(localizer[0].ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            assert list(localizer[0].ImageOrientationPatient) != list(
                thin[0].ImageOrientationPatient
            )
            assert len(thin) == SMALL["n_slices"]
            assert float(thick[0].SliceThickness) == 5.0
            assert float(thin[0].SliceThickness) <= 2.5
            assert thin[0].ConvolutionKernel != thick[0].ConvolutionKernel
            assert len(by_series[study["series"]["dose_report"]]) == 1
            frames = {ds.FrameOfReferenceUID for ds in thin + thick + localizer}
            assert frames == {study["frame_of_reference_uid"]}


def test_dicomdir_lists_media_files(cohort: Path, truth: dict[str, Any]) -> None:
    media = cohort / "cd"
    file_set = FileSet(pydicom.dcmread(media / "DICOMDIR"))
    listed = {Path(instance.path).resolve() for instance in file_set}
    on_disk = {p.resolve() for p in (media / "DICOM").rglob("*") if p.is_file()}

    assert listed == on_disk
    for path in on_disk:
        parts = path.relative_to(media.resolve()).parts
        assert parts[0] == "DICOM"
        for part in parts:
            assert re.fullmatch(r"[A-Z0-9_]{1,8}", part), path

    media_studies = [s for p in truth["persons"] for s in p["studies"] if s["delivery"] == "media"]
    assert len(media_studies) == 1
    media_uid = media_studies[0]["study_instance_uid"]
    assert {instance.StudyInstanceUID for instance in file_set} == {media_uid}
    for site in ("northgate", "riverside", "lakeside"):
        for path in (cohort / site).rglob("*.dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            assert ds.StudyInstanceUID != media_uid, path


def test_names_differ_but_birth_date_agrees(
    headers: dict[Path, pydicom.Dataset], truth: dict[str, Any]
) -> None:
    seen: dict[tuple[str, str], set[tuple[str, str, str]]] = defaultdict(set)
    for ds in headers.values():
        if "PatientID" in ds and "IssuerOfPatientID" in ds:
            key = (ds.IssuerOfPatientID, ds.PatientID)
            seen[key].add((str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex))

    for person in truth["persons"]:
        records = [(r["issuer"], r["patient_id"]) for r in person["records"]]
        assert len(records) >= 2
        assert len({issuer for issuer, _ in records}) == len(records)
        assert len({patient_id for _, patient_id in records}) == len(records)
        values = [seen[record] for record in records]
        for value in values:
            assert len(value) == 1
        names = {next(iter(v))[0] for v in values}
        birth_dates = {next(iter(v))[1] for v in values}
        sexes = {next(iter(v))[2] for v in values}
        assert len(names) == len(records)
        assert birth_dates == {person["birth_date"]}
        assert sexes == {person["sex"]}


def test_timeline_spans_years_and_sites(truth: dict[str, Any]) -> None:
    assert len(truth["persons"]) == 3
    for person in truth["persons"]:
        dates = [study["study_date"] for study in person["studies"]]
        assert len(dates) == 3
        assert dates == sorted(dates)
        assert int(dates[-1][:4]) - int(dates[0][:4]) >= 1
        assert len({study["site"] for study in person["studies"]}) >= 2


def test_lesion_events_cover_every_kind(truth: dict[str, Any]) -> None:
    kinds = {event["kind"] for p in truth["persons"] for event in p["lesion_events"]}

    assert {"new", "grown", "shrunk", "resolved"} <= kinds
    for person in truth["persons"]:
        for event in person["lesion_events"]:
            before, after = event["diameter_mm"]
            if event["kind"] == "new":
                assert before is None
                assert after > 0
            if event["kind"] == "resolved":
                assert after is None
            if event["kind"] == "grown":
                assert after > before


def _mask_centroids(path: Path) -> dict[int, np.ndarray]:
    image = sitk.ReadImage(str(path))
    labels = sitk.GetArrayFromImage(image)
    centroids = {}
    for label in np.unique(labels[labels > 0]):
        k, j, i = np.nonzero(labels == label)
        index = np.stack([i, j, k], axis=1).astype(float).mean(axis=0)
        centroids[int(label)] = np.array(image.TransformContinuousIndexToPhysicalPoint(index))
    return centroids


def _scored_centroids(cohort: Path, study: dict[str, Any]) -> dict[int, np.ndarray]:
    centroids = _mask_centroids(cohort / study["lesion_mask"])
    large = {
        lesion["lesion_id"]
        for lesion in study["lesions"]
        if lesion["diameter_mm"] >= CENTROID_MIN_DIAMETER_MM
    }
    return {lesion_id: c for lesion_id, c in centroids.items() if lesion_id in large}


def test_transform_maps_current_lesion_to_prior(cohort: Path, truth: dict[str, Any]) -> None:
    checked = 0
    for person in truth["persons"]:
        centroids = [_scored_centroids(cohort, study) for study in person["studies"]]
        for pair in person["pairs"]:
            prior, current = pair["prior_timepoint"], pair["current_timepoint"]
            matrix = np.array(pair["current_to_prior_lps"])
            for lesion_id in centroids[prior].keys() & centroids[current].keys():
                point = matrix @ np.append(centroids[current][lesion_id], 1.0)
                error = np.linalg.norm(point[:3] - centroids[prior][lesion_id])
                assert error < CENTROID_TOLERANCE_MM, (person["person"], pair, lesion_id)
                checked += 1
    assert checked >= 6


def test_mask_matches_recorded_centres(cohort: Path, truth: dict[str, Any]) -> None:
    checked = 0
    for person in truth["persons"]:
        for study in person["studies"]:
            labelled = _mask_centroids(cohort / study["lesion_mask"])
            centroids = _scored_centroids(cohort, study)
            for lesion in study["lesions"]:
                if lesion["diameter_mm"] >= CENTROID_MIN_DIAMETER_MM:
                    assert lesion["lesion_id"] in labelled, (study["study_instance_uid"], lesion)
                measured = centroids.get(lesion["lesion_id"])
                if measured is None:
                    continue
                checked += 1
                error = np.linalg.norm(measured - np.array(lesion["center_lps"]))
                assert error < CENTROID_TOLERANCE_MM, (study["study_instance_uid"], lesion)
    assert checked >= 9


def _read_thin_series(headers: dict[Path, pydicom.Dataset], series_uid: str) -> sitk.Image:
    paths = [str(p) for p, ds in headers.items() if ds.get("SeriesInstanceUID") == series_uid]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(Path(paths[0]).parent)))
    return reader.Execute()


def test_mask_geometry_matches_thin_series(
    cohort: Path, headers: dict[Path, pydicom.Dataset], truth: dict[str, Any]
) -> None:
    positions = set()
    for person in truth["persons"]:
        for study in person["studies"]:
            if study["delivery"] == "media":
                continue
            volume = _read_thin_series(headers, study["series"]["thin"])
            mask = sitk.ReadImage(str(cohort / study["lesion_mask"]))
            positions.add(study["site"])

            assert volume.GetSize() == mask.GetSize()
            np.testing.assert_allclose(volume.GetOrigin(), mask.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(volume.GetSpacing(), mask.GetSpacing(), atol=1e-3)
            np.testing.assert_allclose(volume.GetDirection(), mask.GetDirection(), atol=1e-6)

            # Pixel data and mask agree: lesion voxels are soft tissue, lung is not.
            hu = sitk.GetArrayFromImage(volume).astype(float)
            labels = sitk.GetArrayFromImage(mask)
            if np.any(labels > 0):
                assert np.median(hu[labels > 0]) > -200.0, study["study_instance_uid"]
    assert len(positions) >= 2


def test_feet_first_site_geometry(headers: dict[Path, pydicom.Dataset]) -> None:
    lakeside = [
        ds
        for ds in headers.values()
        if ds.get("InstitutionName") == "Lakeside Community Hospital"
        and "LOCALIZER" not in ds.get("ImageType", [])
        and ds.get("SOPClassUID") == CTImageStorage
    ]
    assert lakeside
    for ds in lakeside:
        assert ds.PatientPosition == "FFS"
        assert [float(v) for v in ds.ImageOrientationPatient] == [-1, 0, 0, 0, 1, 0]
        assert ds.PixelRepresentation == 0


def test_motion_between_time_points(truth: dict[str, Any]) -> None:
    for person in truth["persons"]:
        for pair in person["pairs"]:
            matrix = np.array(pair["current_to_prior_lps"])
            rotation = matrix[:3, :3]
            angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
            np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-5)
            assert angle >= 3.0, pair
            assert np.allclose(matrix[3], [0, 0, 0, 1])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_timepoints": 1}, "n_timepoints is 1, expected at least 2"),
        ({"n_patients": 0}, "n_patients is 0, expected at least 1"),
        ({"matrix": 8}, "matrix is 8, expected at least 16"),
    ],
)
def test_invalid_sizes_raise(tmp_path: Path, options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_cohort(tmp_path, **options)


def test_module_entry_writes_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from priors.synthetic.__main__ import main

    main([str(tmp_path), "--patients", "1", "--matrix", "32", "--slices", "4", "--seed", "3"])

    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["seed"] == 3
    assert len(truth["persons"]) == 1
    assert "ground truth in" in capsys.readouterr().out


def test_transform_resamples_prior_onto_current(
    headers: dict[Path, pydicom.Dataset], truth: dict[str, Any]
) -> None:
    person = truth["persons"][1]
    pair = person["pairs"][-1]
    studies = {s["timepoint"]: s for s in person["studies"]}
    current = _read_thin_series(headers, studies[pair["current_timepoint"]]["series"]["thin"])
    prior = _read_thin_series(headers, studies[pair["prior_timepoint"]]["series"]["thin"])
    matrix = np.array(pair["current_to_prior_lps"])
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix[:3, :3].ravel().tolist())
    transform.SetTranslation(matrix[:3, 3].tolist())

    def mean_difference(moving_to_fixed: sitk.Transform) -> float:
        resampled = sitk.Resample(prior, current, moving_to_fixed, sitk.sitkLinear, -1000.0)
        fixed = sitk.GetArrayFromImage(current).astype(float)
        moving = sitk.GetArrayFromImage(resampled).astype(float)
        return float(np.mean(np.abs(fixed - moving)))

    def shifted(axis: int, shift_mm: float) -> sitk.Transform:
        moved = sitk.AffineTransform(transform)
        translation = list(transform.GetTranslation())
        translation[axis] += shift_mm
        moved.SetTranslation(translation)
        return moved

    # Noise, kernels, lesion changes and different pixel spacings leave a residual,
    # so the true transform must beat its neighbours rather than reach zero.
    aligned = mean_difference(transform)
    assert aligned < 0.7 * mean_difference(sitk.Transform(3, sitk.sitkIdentity))
    assert aligned < 0.5 * mean_difference(transform.GetInverse())
    for axis in range(3):
        for shift_mm in (-3.0, 3.0):
            assert aligned < mean_difference(shifted(axis, shift_mm)), (axis, shift_mm)


@pytest.mark.parametrize("seed", [0, 1])
def test_default_coverage_holds_lesions(tmp_path: Path, seed: int) -> None:
    # A 16-pixel matrix keeps this fast; the default slice count and spacing stay.
    write_cohort(tmp_path, seed=seed, matrix=16)
    truth = json.loads((tmp_path / "ground_truth.json").read_text())

    for person in truth["persons"]:
        for study in person["studies"]:
            mask = sitk.ReadImage(str(tmp_path / study["lesion_mask"]))
            first = mask.TransformIndexToPhysicalPoint((0, 0, 0))
            last = mask.TransformIndexToPhysicalPoint((0, 0, mask.GetSize()[2] - 1))
            low, high = sorted((first[2], last[2]))
            for lesion in study["lesions"]:
                z = lesion["center_lps"][2]
                radius = lesion["diameter_mm"] / 2
                assert low + radius < z < high - radius, (study["study_instance_uid"], lesion)
