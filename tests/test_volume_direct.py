"""Native 16-bit slices read straight into the image, checked against pydicom's decoding."""

from __future__ import annotations

import gc
import hashlib
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from priors.dicom import _volume_direct, _volume_frames, volume
from priors.dicom.volume import Volume, build_volumes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_volume_synthetic import SERIES, ramp, write_slice

# Pixel Data of the 8 x 10 test images (160 bytes) is longer than this, so it stays in
# the file and the direct path reads it.
SMALL_DEFER_SIZE_BYTES = 64


@pytest.fixture(autouse=True)
def defer_pixel_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_volume_frames, "DEFER_SIZE_BYTES", SMALL_DEFER_SIZE_BYTES)


@pytest.fixture
def direct_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the slices that went through read_direct and came back as an image."""
    calls: list[int] = []
    original = volume.read_direct

    def counting(frames):
        result = original(frames)
        if result is not None:
            calls.append(len(frames))
        return result

    monkeypatch.setattr(volume, "read_direct", counting)
    return calls


def write_series(
    folder: Path,
    written: list[np.ndarray],
    rescales: list[tuple[float, float]],
    *,
    bits_stored: int | None = None,
) -> list[Path]:
    paths = []
    for k, (pixels, (slope, intercept)) in enumerate(zip(written, rescales, strict=True)):
        path = folder / f"s{k}.dcm"
        write_slice(
            path,
            pixels,
            position=(0, 0, 2 * k),
            series_uid=SERIES,
            slope=slope,
            intercept=intercept,
            instance_number=k + 1,
            bits_stored=bits_stored,
        )
        paths.append(path)
    return paths


def build_general(paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> Volume:
    """Build with Pixel Data read with the header and decoded by pydicom."""
    with monkeypatch.context() as patch:
        patch.setattr(_volume_frames, "DEFER_SIZE_BYTES", None)
        patch.setattr(volume, "can_read_direct", lambda frames: False)
        (built,), rejections = build_volumes(paths)
    assert rejections == []
    return built


def twelve_bit_signed(values: np.ndarray) -> np.ndarray:
    """Write signed values as 12-bit two's complement with the top 4 bits clear."""
    return (values.astype(np.int16) & 0x0FFF).astype(np.int16)


# Each case: (values as written, Bits Stored, rescales, stored values the decoder gives).
CASES = {
    # Stored int16 and uint16 CT values with the usual intercept stay int16.
    "int16 intercept -1024": (
        [ramp(offset=50 * k) for k in range(3)],
        None,
        [(1, -1024)] * 3,
        [ramp(offset=50 * k) for k in range(3)],
    ),
    "uint16 intercept -1024": (
        [ramp(dtype="uint16", offset=1000 + 50 * k) for k in range(3)],
        None,
        [(1, -1024)] * 3,
        [ramp(dtype="uint16", offset=1000 + 50 * k) for k in range(3)],
    ),
    # uint16 values above 32767 keep their type, through a copy of the int16 image.
    "uint16 above int16": (
        [ramp(dtype="uint16", offset=60000 + 50 * k) for k in range(3)],
        None,
        [(1, 0)] * 3,
        [ramp(dtype="uint16", offset=60000 + 50 * k) for k in range(3)],
    ),
    "slope 2 negative values": (
        [ramp(offset=-300 + 50 * k) for k in range(3)],
        None,
        [(2, -3)] * 3,
        [ramp(offset=-300 + 50 * k) for k in range(3)],
    ),
    "intercept per slice": (
        [ramp(offset=5 + 50 * k) for k in range(3)],
        None,
        [(1, 0), (1, -1024), (1, 7)],
        [ramp(offset=5 + 50 * k) for k in range(3)],
    ),
    # Bits above Bits Stored carry arbitrary values, which the decoder masks off.
    "unsigned 12 of 16 bits": (
        [ramp(dtype="uint16", offset=50 * k) | np.uint16(0xA000) for k in range(3)],
        12,
        [(1, -1024)] * 3,
        [ramp(dtype="uint16", offset=50 * k) for k in range(3)],
    ),
    # Negative 12-bit values are sign-extended from bit 11.
    "signed 12 of 16 bits": (
        [twelve_bit_signed(ramp(offset=-40 + 50 * k)) for k in range(3)],
        12,
        [(1, 0)] * 3,
        [ramp(offset=-40 + 50 * k) for k in range(3)],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_direct_equals_pydicom_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct_calls: list[int], case: str
) -> None:
    written, bits_stored, rescales, stored = CASES[case]
    paths = write_series(tmp_path, written, rescales, bits_stored=bits_stored)

    (direct,), rejections = build_volumes(paths)
    general = build_general(paths, monkeypatch)

    assert rejections == []
    assert direct_calls == [3]
    ours = sitk.GetArrayFromImage(direct.image)
    expected = sitk.GetArrayFromImage(general.image)
    assert ours.dtype == expected.dtype
    assert np.array_equal(ours, expected)
    exact = [v.astype(np.int64) * a + b for v, (a, b) in zip(stored, rescales, strict=True)]
    assert np.array_equal(ours.astype(np.int64), np.stack(exact))
    assert direct.pixel_sha256 == general.pixel_sha256
    assert direct.decisions == general.decisions
    assert direct.metadata == general.metadata
    assert direct.image.GetOrigin() == general.image.GetOrigin()
    assert direct.image.GetSpacing() == general.image.GetSpacing()
    assert direct.image.GetDirection() == general.image.GetDirection()


def test_general_path_reads_native_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Deferred native data that cannot go straight into the image (a fractional slope
    # here) is read from the file, corrected above Bits Stored and hashed as written.
    written = [ramp(dtype="uint16", offset=50 * k) | np.uint16(0xA000) for k in range(3)]
    paths = write_series(tmp_path, written, [(0.5, 0)] * 3, bits_stored=12)

    (deferred,), rejections = build_volumes(paths)
    general = build_general(paths, monkeypatch)

    assert rejections == []
    array = sitk.GetArrayFromImage(deferred.image)
    assert array.dtype == np.float32
    assert np.array_equal(array, sitk.GetArrayFromImage(general.image))
    assert np.array_equal(array[1], ramp(offset=50) * 0.5)
    assert deferred.pixel_sha256 == general.pixel_sha256


def test_direct_hash_is_pixel_data_hash(tmp_path: Path, direct_calls: list[int]) -> None:
    paths = write_series(tmp_path, [ramp(offset=k) for k in range(3)], [(1, -1024)] * 3)

    (built,), _ = build_volumes(paths)

    assert direct_calls == [3]
    for path in paths:
        ds = pydicom.dcmread(path)
        assert (
            built.pixel_sha256[str(ds.SOPInstanceUID)] == hashlib.sha256(ds.PixelData).hexdigest()
        )


def test_direct_float_result_falls_back(tmp_path: Path, direct_calls: list[int]) -> None:
    # 60000 + 10000 exceeds both int16 and uint16, so the values need float32.
    stored = [ramp(dtype="uint16", offset=60000) for _ in range(3)]
    paths = write_series(tmp_path, stored, [(1, 10000)] * 3)

    (built,), _ = build_volumes(paths)

    assert direct_calls == []
    array = sitk.GetArrayFromImage(built.image)
    assert array.dtype == np.float32
    assert np.array_equal(array[0], stored[0].astype(np.float32) + 10000)


def test_direct_skips_other_pixel_formats(tmp_path: Path) -> None:
    cases = {
        "8-bit": dict(pixels=ramp(dtype="uint8")),
        "MONOCHROME1": dict(pixels=ramp(dtype="uint16"), photometric="MONOCHROME1"),
        "fractional slope": dict(pixels=ramp(), slope=0.5),
    }
    for name, options in cases.items():
        path = write_slice(
            tmp_path / f"{name}.dcm", position=(0, 0, 0), series_uid=SERIES, **options
        )
        frames = _volume_frames.read_frames(path)
        assert not _volume_direct.can_read_direct(frames), name


def test_truncated_pixel_data_rejected(tmp_path: Path) -> None:
    paths = write_series(tmp_path, [ramp(offset=k) for k in range(4)], [(1, 0)] * 4)
    cut = paths[3]
    cut.write_bytes(cut.read_bytes()[:-20])

    volumes, rejections = build_volumes(paths)

    assert [v.image.GetSize()[2] for v in volumes] == [3]
    (rejection,) = rejections
    assert rejection.paths == [str(cut)]
    assert str(cut) in rejection.reason
    assert "(7FE0,0010) Pixel Data" in rejection.reason
    assert "truncated" in rejection.reason


def test_direct_image_owns_its_buffer(tmp_path: Path, direct_calls: list[int]) -> None:
    paths = write_series(tmp_path, [ramp(offset=k) for k in range(3)], [(1, -1024)] * 3)

    first = build_volumes(paths)[0][0].image
    second = build_volumes(paths)[0][0].image
    gc.collect()
    # Memory handed out after the build must not alias either image.
    scratch = [np.full((8, 10), 12345, dtype=np.int16) for _ in range(1000)]
    first_view = sitk.GetArrayViewFromImage(first)
    first_view_copy = first_view.copy()
    second[0, 0, 0] = 999

    assert direct_calls == [3, 3]
    assert first_view_copy[0, 0, 0] == -1024
    assert np.array_equal(first_view_copy[2], ramp(offset=2) - 1024)
    assert sitk.GetArrayViewFromImage(second)[0, 0, 0] == 999
    assert sitk.GetArrayViewFromImage(first)[0, 0, 0] == -1024
    assert all(block[0, 0] == 12345 for block in scratch)


# A forked child that hangs is killed by SIGALRM after this many seconds.
FORK_TIMEOUT_S = 30


def test_direct_read_in_forked_child(tmp_path: Path, direct_calls: list[int]) -> None:
    # The parent's reading threads do not exist in a forked child, which must start its own.
    paths = write_series(tmp_path, [ramp(offset=k) for k in range(3)], [(1, 0)] * 3)
    build_volumes(paths)

    pid = os.fork()
    if pid == 0:
        signal.alarm(FORK_TIMEOUT_S)
        try:
            (built,), _ = build_volumes(paths)
            status = 0 if sitk.GetArrayViewFromImage(built.image)[2, 0, 0] == 2 else 1
        except BaseException:
            status = 2
        os._exit(status)
    _, wait_status = os.waitpid(pid, 0)

    assert direct_calls == [3]
    assert os.waitstatus_to_exitcode(wait_status) == 0
