"""Volumes from synthetic series whose expected geometry is worked out in each test."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

from priors.dicom import _volume_frames
from priors.dicom.convert import run_convert
from priors.dicom.volume import build_volumes

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)

# Element values longer than this stay in the file in the "left in file" runs. The test
# images are small, so without it their Pixel Data would always be read with the header.
SMALL_DEFER_SIZE_BYTES = 64


@pytest.fixture(autouse=True, params=["read with header", "left in file"])
def pixel_data_placement(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every case twice: Pixel Data read with the header, and read later from the file.

    The second run takes the path that reads native 16-bit slices straight into the
    image, and has pydicom defer the larger header values (such as enhanced functional
    groups) as well.
    """
    if request.param == "left in file":
        monkeypatch.setattr(_volume_frames, "DEFER_SIZE_BYTES", SMALL_DEFER_SIZE_BYTES)
    return request.param


def write_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    position: Sequence[float],
    series_uid: str,
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: Sequence[float] = (0.5, 0.5),
    slope: float = 1.0,
    intercept: float = 0.0,
    instance_number: int = 1,
    sop_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    extra: dict | None = None,
) -> Path:
    """Write one CT slice with the given stored pixels and geometry; return its path."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = UID(transfer_syntax)

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    signed = pixels.dtype.kind == "i"
    ds.PixelRepresentation = 1 if signed else 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(rows: int = 8, columns: int = 10, *, offset: int = 0, dtype: str = "int16") -> np.ndarray:
    """Return a (rows, columns) image whose values encode each pixel's row and column."""
    grid = np.arange(rows * columns).reshape(rows, columns) + offset
    return grid.astype(dtype)


def read_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


SERIES = "1.2.826.0.1.3680043.8.498.10"


def axial_series(
    folder: Path,
    z_positions: Sequence[float],
    *,
    file_order: Sequence[int] | None = None,
    **kwargs,
) -> list[Path]:
    """Write one axial slice per z position, slice k holding ramp(offset=100 * k)."""
    paths = []
    for k, z in enumerate(z_positions):
        path = folder / f"slice{k:03d}.dcm"
        write_slice(
            path,
            ramp(offset=100 * k),
            position=(-10.0, 20.0, z),
            series_uid=SERIES,
            instance_number=k + 1,
            **kwargs,
        )
        paths.append(path)
    if file_order is not None:
        paths = [paths[i] for i in file_order]
    return paths


@pytest.mark.parametrize("file_order", list(itertools.permutations(range(3))))
def test_order_from_positions_not_tags(tmp_path: Path, file_order: tuple[int, ...]) -> None:
    # Listed top to bottom: InstanceNumber 1 is the highest slice, Spacing Between Slices
    # is negative and Slice Location runs the other way. None of these may matter.
    paths = []
    for k, z in enumerate((4.0, 2.0, 0.0)):
        path = tmp_path / f"s{k}.dcm"
        write_slice(
            path,
            ramp(offset=int(z) * 100),
            position=(-10.0, 20.0, z),
            series_uid=SERIES,
            instance_number=k + 1,
            extra={"SpacingBetweenSlices": "-2", "SliceLocation": str(-z)},
        )
        paths.append(path)

    volumes, rejections = build_volumes([paths[i] for i in file_order])

    assert rejections == []
    assert len(volumes) == 1
    image = volumes[0].image
    # The normal of an axial orientation is +z (superior), so the lowest slice comes first.
    assert image.GetOrigin() == pytest.approx((-10.0, 20.0, 0.0))
    assert image.GetSpacing() == pytest.approx((0.5, 0.5, 2.0))
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    array = sitk.GetArrayFromImage(image)
    for k, z in enumerate((0, 2, 4)):
        assert np.array_equal(array[k], ramp(offset=z * 100))
    assert volumes[0].paths == [str(paths[2]), str(paths[1]), str(paths[0])]
    assert volumes[0].metadata["slice_positions_mm"] == [0.0, 2.0, 4.0]


def test_per_slice_rescale_gives_float(tmp_path: Path) -> None:
    paths = []
    for k in range(3):
        path = tmp_path / f"s{k}.dcm"
        write_slice(
            path,
            ramp(offset=k),
            position=(0, 0, k),
            series_uid=SERIES,
            slope=1.0 if k == 0 else 0.5,
            intercept=-1024,
        )
        paths.append(path)

    (volume,), _ = build_volumes(paths)

    array = sitk.GetArrayFromImage(volume.image)
    assert array.dtype == np.float32
    assert np.array_equal(array[0], ramp(offset=0) - 1024.0)
    assert np.array_equal(array[1], ramp(offset=1) * 0.5 - 1024.0)
    assert any("float32" in d for d in volume.decisions)
    assert volume.metadata["units"] == "HU"


def test_integral_rescale_keeps_int16(tmp_path: Path) -> None:
    paths = axial_series(tmp_path, [0, 1, 2], slope=1.0, intercept=-1024)

    (volume,), _ = build_volumes(paths)

    array = sitk.GetArrayFromImage(volume.image)
    assert array.dtype == np.int16
    assert array[2, 0, 0] == 200 - 1024


def test_unsigned_beyond_int16_gives_uint16(tmp_path: Path) -> None:
    paths = []
    for k in range(3):
        path = tmp_path / f"s{k}.dcm"
        write_slice(path, ramp(dtype="uint16", offset=60000), position=(0, 0, k), series_uid=SERIES)
        paths.append(path)

    (volume,), _ = build_volumes(paths)

    assert sitk.GetArrayFromImage(volume.image).dtype == np.uint16


def test_monochrome1_inverted_within_bits_stored(tmp_path: Path) -> None:
    paths = []
    for k in range(3):
        path = tmp_path / f"s{k}.dcm"
        write_slice(
            path,
            ramp(dtype="uint16"),
            position=(0, 0, k),
            series_uid=SERIES,
            photometric="MONOCHROME1",
            bits_stored=12,
        )
        paths.append(path)

    (volume,), _ = build_volumes(paths)

    array = sitk.GetArrayFromImage(volume.image)
    assert np.array_equal(array[0], 4095 - ramp(dtype="int64"))
    assert any("MONOCHROME1" in d for d in volume.decisions)


def test_one_slice_in_other_orientation(tmp_path: Path) -> None:
    paths = axial_series(tmp_path, [0, 1, 2, 3])
    odd = write_slice(
        tmp_path / "sagittal.dcm",
        ramp(),
        position=(0, 0, 1),
        series_uid=SERIES,
        orientation=SAGITTAL,
    )

    volumes, rejections = build_volumes([*paths, odd])

    assert len(volumes) == 1
    assert volumes[0].image.GetSize() == (10, 8, 4)
    assert volumes[0].stack_label.startswith("orientation ")
    assert len(rejections) == 1
    assert rejections[0].paths == [str(odd)]
    assert rejections[0].series_instance_uid == SERIES
    assert "1 slice(s)" in rejections[0].reason


def write_cine(folder: Path, phases: int = 50) -> list[Path]:
    """Write one axial position over phases cardiac phases, phase p holding ramp(offset=p)."""
    paths = []
    for phase in range(phases):
        path = folder / f"phase{phase:02d}.dcm"
        write_slice(
            path,
            ramp(offset=phase),
            position=(0, 0, 5),
            series_uid=SERIES,
            instance_number=phase + 1,
            extra={"TriggerTime": str(20 * phase), "TemporalPositionIdentifier": phase + 1},
        )
        paths.append(path)
    return paths


def test_cine_at_one_position_rejected(tmp_path: Path) -> None:
    paths = write_cine(tmp_path)

    volumes, rejections = build_volumes(paths)

    assert volumes == []
    assert len(rejections) == 1
    assert "50 frames with different pixels share one position" in rejections[0].reason
    assert len(rejections[0].paths) == 50


def test_cine_at_one_position_as_4d(tmp_path: Path) -> None:
    paths = write_cine(tmp_path)

    (volume,), rejections = build_volumes(paths, temporal_policy="4d", min_slices=1)
    _, too_few = build_volumes(paths, temporal_policy="4d")

    assert rejections == []
    assert volume.image.GetSize() == (10, 8, 1, 50)
    array = sitk.GetArrayFromImage(volume.image)
    assert np.array_equal(array[49, 0], ramp(offset=49))
    assert "cannot join 50 time points" in too_few[0].reason
    assert "min_slices=3" in too_few[0].reason


def test_time_points_become_volumes(tmp_path: Path) -> None:
    paths = []
    for time_point in (2, 1):
        for k in range(3):
            path = tmp_path / f"t{time_point}s{k}.dcm"
            write_slice(
                path,
                ramp(offset=1000 * time_point + k),
                position=(0, 0, k),
                series_uid=SERIES,
                extra={"TemporalPositionIdentifier": time_point},
            )
            paths.append(path)

    volumes, rejections = build_volumes(paths)
    first, _ = build_volumes(paths, temporal_policy="first")
    rejected_volumes, reasons = build_volumes(paths, temporal_policy="reject")

    assert rejections == []
    assert [v.stack_label for v in volumes] == ["time point 1 of 2", "time point 2 of 2"]
    assert sitk.GetArrayFromImage(volumes[1].image)[2, 0, 0] == 2002
    assert len(first) == 1
    assert rejected_volumes == []
    assert "temporal_policy='reject'" in reasons[0].reason


def write_time_points(folder: Path, *, slopes: Sequence[float] = (1.0, 1.0)) -> list[Path]:
    """Write 3 axial positions at len(slopes) time points, each with its Rescale Slope."""
    paths = []
    for time_point, slope in enumerate(slopes, start=1):
        for k in range(3):
            paths.append(
                write_slice(
                    folder / f"t{time_point}s{k}.dcm",
                    ramp(offset=1000 * time_point + k),
                    position=(0, 0, 2.0 * k),
                    series_uid=SERIES,
                    slope=slope,
                    extra={"TemporalPositionIdentifier": time_point, "TriggerTime": 40 * k},
                )
            )
    return paths[::-1]


def test_time_points_join_into_4d(tmp_path: Path) -> None:
    (volume,), rejections = build_volumes(write_time_points(tmp_path), temporal_policy="4d")

    assert rejections == []
    assert volume.stack_label == "2 time points"
    assert volume.image.GetDimension() == 4
    assert volume.image.GetSize() == (10, 8, 3, 2)
    assert volume.image.GetSpacing()[:3] == pytest.approx((0.5, 0.5, 2.0))
    assert volume.image.GetOrigin()[:3] == pytest.approx((0.0, 0.0, 0.0))
    array = sitk.GetArrayFromImage(volume.image)  # (time, z, y, x)
    for time_point in (1, 2):
        for k in range(3):
            assert np.array_equal(array[time_point - 1, k], ramp(offset=1000 * time_point + k))
    assert volume.metadata["time_point_count"] == 2
    assert [key[0] for key in volume.metadata["temporal_keys"]] == [1.0, 2.0]
    assert len(volume.sop_instance_uids) == 6
    assert any("temporal_policy='4d'" in d for d in volume.decisions)


def test_4d_mixed_pixel_types_become_float(tmp_path: Path) -> None:
    paths = write_time_points(tmp_path, slopes=(1.0, 0.5))

    (volume,), rejections = build_volumes(paths, temporal_policy="4d")

    assert rejections == []
    assert volume.image.GetPixelID() == sitk.sitkFloat32
    array = sitk.GetArrayFromImage(volume.image)
    assert np.array_equal(array[1, 2], ramp(offset=2002) * 0.5)
    assert "time points differ in pixel type, so the 4-D image is float32" in volume.decisions


def test_convert_time_points_as_4d(tmp_path: Path) -> None:
    source = tmp_path / "dicom"
    source.mkdir()
    write_time_points(source)

    status = run_convert([source], out_dir=tmp_path / "out", temporal_policy="4d")

    assert status == 0
    (sidecar_path,) = [
        path
        for path in (tmp_path / "out").glob("*.json")
        if path.name not in {"rejected.json", "conversion.json"}
    ]
    sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    assert sidecar["size"] == [10, 8, 3, 2]
    image = sitk.ReadImage(str(tmp_path / "out" / sidecar["nifti"]))
    assert image.GetSize() == (10, 8, 3, 2)
    with pytest.raises(ValueError, match="temporal_policy='movie' is not supported"):
        run_convert([source], out_dir=tmp_path / "out", temporal_policy="movie")


GAPPED = [0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0]


def test_gap_splits_into_uniform_blocks(tmp_path: Path) -> None:
    volumes, rejections = build_volumes(axial_series(tmp_path, GAPPED))

    assert rejections == []
    assert [v.image.GetSize()[2] for v in volumes] == [4, 3]
    assert [v.image.GetSpacing()[2] for v in volumes] == pytest.approx([1.0, 1.0])
    assert volumes[1].image.GetOrigin()[2] == pytest.approx(5.0)
    assert "block 2 of 2" in volumes[1].stack_label
    assert any("2.000 mm" in d for d in volumes[0].decisions)
    assert volumes[0].metadata["gaps"] == [{"after_mm": 3.0, "step_mm": 2.0}]


def test_gap_resampled_to_uniform_grid(tmp_path: Path) -> None:
    (volume,), _ = build_volumes(axial_series(tmp_path, GAPPED), gap_policy="resample")

    array = sitk.GetArrayFromImage(volume.image)
    assert volume.image.GetSize()[2] == 8
    assert volume.image.GetSpacing()[2] == pytest.approx(1.0)
    # Slice 4 (z = 4 mm) lies halfway between stored slices 3 and 4 (offsets 300 and 400).
    assert np.array_equal(array[4], ramp(offset=350))
    assert volume.metadata["interpolated_positions_mm"] == [4.0]
    assert volume.metadata["gaps"] == [{"after_mm": 3.0, "step_mm": 2.0}]


def test_gap_rejected_on_request(tmp_path: Path) -> None:
    volumes, rejections = build_volumes(axial_series(tmp_path, GAPPED), gap_policy="reject")

    assert volumes == []
    assert "non-uniform slice spacing" in rejections[0].reason
    assert "step of 2.000 mm after the slice at 3.000 mm" in rejections[0].reason


def test_non_uniform_spacing_never_averaged(tmp_path: Path) -> None:
    volumes, rejections = build_volumes(axial_series(tmp_path, [0, 5, 10, 15.3, 20.6, 25.9]))

    steps = sorted(round(v.image.GetSpacing()[2], 3) for v in volumes)
    assert steps == [5.0, 5.3]
    assert rejections == []


def test_identical_duplicate_dropped(tmp_path: Path) -> None:
    paths = axial_series(tmp_path, [0, 1, 2])
    copy = write_slice(
        tmp_path / "copy.dcm", ramp(offset=100), position=(-10.0, 20.0, 1.0), series_uid=SERIES
    )

    with pytest.warns(UserWarning, match="dropped duplicate"):
        volumes, rejections = build_volumes([*paths, copy])

    assert rejections == []
    assert volumes[0].image.GetSize()[2] == 3
    assert any("dropped duplicate" in d for d in volumes[0].decisions)


def test_conflicting_duplicate_rejected(tmp_path: Path) -> None:
    # A re-sent, changed image gets a new Instance Number; that does not make it a time point.
    paths = axial_series(tmp_path, [0, 1, 2])
    other = write_slice(
        tmp_path / "other.dcm",
        ramp(offset=7),
        position=(-10.0, 20.0, 1.0),
        series_uid=SERIES,
        instance_number=9,
    )

    volumes, rejections = build_volumes([*paths, other])

    assert volumes == []
    reason = rejections[0].reason
    assert "(-10.000, 20.000, 1.000) mm" in reason
    assert str(other) in reason
    assert str(paths[1]) in reason


def test_deflated_transfer_syntax(tmp_path: Path) -> None:
    paths = axial_series(tmp_path, [0, 1, 2], transfer_syntax=DeflatedExplicitVRLittleEndian)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian

    (volume,), rejections = build_volumes(paths)

    assert rejections == []
    assert np.array_equal(sitk.GetArrayFromImage(volume.image)[1], ramp(offset=100))


def test_pixel_sha256_of_native_data(tmp_path: Path) -> None:
    paths = axial_series(tmp_path, [0, 1, 2])

    (volume,), _ = build_volumes(paths)

    for path in paths:
        ds = pydicom.dcmread(path)
        expected = hashlib.sha256(ds.PixelData).hexdigest()
        assert volume.pixel_sha256[str(ds.SOPInstanceUID)] == expected


def test_sheared_stack_resampled(tmp_path: Path) -> None:
    # Slice k sits at y = 3 * k mm and z = 2 * k mm: a shear of atan(3 / 2) = 56.3 degrees
    # along the column direction. The pixels vary linearly, so linear interpolation is exact
    # where a stored pixel covers the grid.
    spacing = 0.5
    paths = []
    for k in range(4):
        pixels = (np.arange(40)[:, None] * 10 + np.arange(12)[None, :]).astype(np.int16)
        path = tmp_path / f"s{k}.dcm"
        write_slice(
            path,
            pixels,
            position=(0.0, 3.0 * k, 2.0 * k),
            series_uid=SERIES,
            pixel_spacing=(spacing, spacing),
        )
        paths.append(path)

    (volume,), _ = build_volumes(paths)
    (kept,), _ = build_volumes(paths, tilt_policy="keep")
    rejected_volumes, rejections = build_volumes(paths, tilt_policy="reject")

    assert volume.metadata["tilt_deg"] == pytest.approx(56.3099, abs=1e-3)
    assert json.loads(json.dumps(volume.metadata))["size"] == [12, 40, 4]
    array = sitk.GetArrayFromImage(volume.image)
    # Grid row j of slice k lies at y = j * 0.5; stored row j - 6 k of slice k lies there.
    assert array[2, 20, 5] == (20 - 12) * 10 + 5
    assert array[3, 30, 7] == (30 - 18) * 10 + 7
    assert volume.image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert any("gantry tilt" in d for d in volume.decisions)
    assert sitk.GetArrayFromImage(kept.image)[2, 20, 5] == 20 * 10 + 5
    assert rejected_volumes == []
    assert "sheared by 56.31 degrees" in rejections[0].reason


def test_too_few_slices_rejected(tmp_path: Path) -> None:
    volumes, rejections = build_volumes(axial_series(tmp_path, [0, 1]))

    assert volumes == []
    assert "expected at least min_slices=3" in rejections[0].reason


def test_unreadable_file_rejected(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")

    volumes, rejections = build_volumes([junk, *axial_series(tmp_path, [0, 1, 2])])

    assert len(volumes) == 1
    assert rejections[0].paths == [str(junk)]
    assert "not a readable DICOM file" in rejections[0].reason


def test_missing_orientation_rejected(tmp_path: Path) -> None:
    paths = axial_series(tmp_path, [0, 1, 2])
    ds = pydicom.dcmread(paths[0])
    del ds.ImageOrientationPatient
    ds.save_as(paths[0])

    volumes, rejections = build_volumes(paths, min_slices=2)

    assert len(volumes) == 1
    assert "(0020,0037) Image Orientation (Patient) is missing" in rejections[0].reason


@pytest.mark.parametrize(
    ("option", "value"),
    [("gap_policy", "fill"), ("tilt_policy", "ignore"), ("temporal_policy", "average")],
)
def test_unknown_policy_raises(tmp_path: Path, option: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{option}='{value}' is not supported"):
        build_volumes([], **{option: value})


def write_enhanced(path: Path, frames: list[dict]) -> Path:
    """Write an Enhanced CT image whose frames have the given positions and orientations.

    Each frame dict has "position", "orientation", "stack_id" and "offset" (added to a ramp).
    The rescale is shared: slope 2, intercept -1000.
    """
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import EnhancedCTImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = SERIES
    ds.Modality = "CT"
    ds.Rows, ds.Columns = 8, 10
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = ["0.5", "0.5"]
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = "2", "-1000"
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    items = []
    for frame in frames:
        item = Dataset()
        position, orientation, content = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [f"{v:g}" for v in frame["position"]]
        orientation.ImageOrientationPatient = [f"{v:g}" for v in frame["orientation"]]
        content.StackID = frame["stack_id"]
        item.PlanePositionSequence = DicomSequence([position])
        item.PlaneOrientationSequence = DicomSequence([orientation])
        item.FrameContentSequence = DicomSequence([content])
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    pixels = np.stack([ramp(offset=frame["offset"]) for frame in frames])
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_enhanced_two_stacks_sorted(tmp_path: Path) -> None:
    # Frames listed out of order: an axial stack at z = 0, 1, 2 and a sagittal stack at
    # x = 5, 6, 7, interleaved. Offsets encode the expected slice: 100 * z or 1000 + 100 * x.
    frames = []
    for z, x in ((2, 6), (0, 7), (1, 5)):
        frames.append(
            {"position": (0, 0, z), "orientation": AXIAL, "stack_id": "1", "offset": 100 * z}
        )
        frames.append(
            {
                "position": (x, 0, 0),
                "orientation": SAGITTAL,
                "stack_id": "2",
                "offset": 1000 + 100 * x,
            }
        )
    path = write_enhanced(tmp_path / "enhanced.dcm", frames)

    volumes, rejections = build_volumes([path])

    assert rejections == []
    assert len(volumes) == 2
    by_normal = {round(v.image.GetDirection()[8]): v for v in volumes}
    axial = sitk.GetArrayFromImage(by_normal[1].image)
    assert np.array_equal(axial[:, 0, 0], np.array([0, 200, 400]) - 1000)
    assert by_normal[1].metadata["frame_numbers"] == [3, 5, 1]
    sagittal = next(v for v in volumes if v is not by_normal[1])
    # SAGITTAL's normal is (0,1,0) x (0,0,-1) = (-1, 0, 0): x descends along the stack.
    assert sagittal.image.GetOrigin()[0] == pytest.approx(7.0)
    assert np.array_equal(
        sitk.GetArrayFromImage(sagittal.image)[:, 0, 0], np.array([1700, 1600, 1500]) * 2 - 1000
    )
    assert sagittal.sop_instance_uids == [read_uid(path)] * 3
