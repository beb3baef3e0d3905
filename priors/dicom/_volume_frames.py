"""One record per stored 2-D frame: geometry, pixel transform and the keys that split stacks."""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from priors.dicom import _pixels
from priors.dicom.header import attribute_value

__all__ = [
    "CommonFields",
    "Frame",
    "FrameReadError",
    "Instance",
    "common_fields",
    "float_values",
    "number_or",
    "read_frames",
    "temporal_key",
]

logger = logging.getLogger(__name__)

# Element values longer than this stay in the file when a file is read, so that large
# native Pixel Data is read once, straight into its destination. pydicom reads other
# deferred values (large private elements or sequences) from the file when they are used.
DEFER_SIZE_BYTES = 16384


class FrameReadError(ValueError):
    """Raised when a file cannot give frames with complete geometry."""


@dataclass(eq=False)
class Instance:
    """A read instance whose pixel data is decoded on first use and then cached.

    ``native`` locates uncompressed Pixel Data that was left in the file. It is None
    when the Pixel Data needs a decoder or was read with the rest of the data set.
    """

    path: str
    dataset: Dataset
    native: _pixels.NativePixelData | None = None
    _stored: np.ndarray | None = field(default=None, repr=False)
    _sha256: Future[str] | None = field(default=None, repr=False)
    _ranges: Future[np.ndarray] | None = field(default=None, repr=False)

    def stored(self) -> np.ndarray:
        """Return the stored values as a (frames, rows, columns) array."""
        if self._stored is None:
            if self.native is not None:
                written = _pixels.read_native(self.native, self.path)
                # The hash covers the values as written, so the correction gets a copy.
                self._sha256 = _pixels.start_array_sha256(written)
                self._stored = written
                if self.native.bits_stored < written.dtype.itemsize * 8:
                    self._stored = written.copy()
                    _pixels.correct_unused_bits(self._stored, bits_stored=self.native.bits_stored)
            else:
                self._stored = _pixels.decode_stored(self.dataset, self.path)
                # Hashing starts now so that Pixel Data can leave the dataset. Compressed
                # data is then kept once, decoded, and native data is viewed in place.
                self._sha256 = _pixels.start_pixel_sha256(self.dataset, self._stored)
                del self.dataset.PixelData
            self._ranges = _pixels.start_frame_ranges(self._stored)
        return self._stored

    def check_pixels(self) -> None:
        """Check that the pixel data can be read, decoding it unless it is native.

        Raises
        ------
        PixelDecodeError
            When no decoder reads the data, or the file ends inside native Pixel Data.
        """
        if self.native is None:
            self.stored()
            return
        end = self.native.offset + self.native.nbytes
        size = os.path.getsize(self.path)
        if size < end:
            raise _pixels.PixelDecodeError(
                f"{self.path}: (7FE0,0010) Pixel Data ends at byte {end}, but the file has "
                f"{size} bytes: the file is truncated"
            )

    def record_pixel_sha256(self, digest: str) -> None:
        """Record the pixel hash of native data that a caller read and hashed itself."""
        if self._sha256 is None:
            done: Future[str] = Future()
            done.set_result(digest)
            self._sha256 = done

    def frame_range(self, index: int) -> tuple[float, float]:
        """Return the minimum and maximum stored value of one frame."""
        if self._ranges is None:
            self.stored()
        assert self._ranges is not None
        low, high = self._ranges.result()[index]
        return float(low), float(high)

    def pixel_sha256(self) -> str:
        """Return the SHA-256 of the decoded stored pixel data of the whole instance."""
        if self._sha256 is None:
            self.stored()
        assert self._sha256 is not None
        return self._sha256.result()


@dataclass(eq=False)
class Frame:
    """One 2-D plane of an instance, with its geometry in LPS millimetres."""

    instance: Instance
    frame_index: int  # 0-based index into the instance's frames
    sop_instance_uid: str
    series_instance_uid: str
    image_position_patient: np.ndarray  # (3,) mm, LPS
    image_orientation_patient: np.ndarray  # (6,) row then column direction cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    rows: int
    columns: int
    rescale_slope: float
    rescale_intercept: float
    photometric_interpretation: str
    bits_stored: int
    echo: str  # echo number or effective echo time, "" when absent
    image_type: tuple[str, ...]
    temporal_key: tuple[float, ...]  # orders frames that share one position in time
    stack_id: str  # (0020,9056) Stack ID of enhanced images, "" otherwise
    modality: str
    tile: tuple[slice, slice] | None = None  # (rows, columns) of a mosaic tile

    @property
    def path(self) -> str:
        return self.instance.path

    @property
    def is_multiframe(self) -> bool:
        return "PerFrameFunctionalGroupsSequence" in self.instance.dataset

    def stored(self) -> np.ndarray:
        """Return the stored values of this frame, (rows, columns)."""
        if self.tile is not None:
            return self.instance.stored()[0][self.tile]
        return self.instance.stored()[self.frame_index]

    def stored_range(self) -> tuple[float, float]:
        """Return the minimum and maximum stored value of this frame (or mosaic tile)."""
        if self.tile is not None:
            tile = self.stored()
            return float(tile.min()), float(tile.max())
        return self.instance.frame_range(self.frame_index)

    def frame_sha256(self) -> str:
        """Return the SHA-256 of this frame's stored values (for duplicate checks)."""
        array = np.ascontiguousarray(self.stored())
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        return hashlib.sha256(array.tobytes()).hexdigest()


def _number(ds: Dataset, keyword: str) -> Any:
    """Return a numeric attribute as pydicom gives it or as its text, None when missing."""
    return attribute_value(ds, keyword, numeric=True)


def _strings(ds: Dataset, keyword: str) -> tuple[str, ...]:
    """Return the values of a string attribute as a tuple, () when missing or empty."""
    value = attribute_value(ds, keyword)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def float_values(value: Any, count: int, *, path: str, tag: str) -> np.ndarray:
    """Convert a multi-valued DS element to floats, checking the number of values."""
    if value is None:
        raise FrameReadError(f"{path}: {tag} is missing")
    values = (
        list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    )
    if len(values) != count:
        raise FrameReadError(f"{path}: {tag} has {len(values)} values, expected {count}")
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise FrameReadError(f"{path}: {tag} value {values!r} is not numeric") from err


def number_or(value: Any, default: float) -> float:
    """Convert a numeric element value to float, or return default when absent or invalid."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def temporal_key(ds: Dataset) -> tuple[float, ...]:
    """Build the key that orders single-frame instances sharing one position in time.

    (0020,0100) Temporal Position Identifier comes first, then (0018,1060) Trigger Time and
    (0020,0012) Acquisition Number. Missing values sort first. Instance Number is left out
    because a re-sent, changed image gets a new one without being a new time point.
    """
    return (
        number_or(_number(ds, "TemporalPositionIdentifier"), -1.0),
        number_or(_number(ds, "TriggerTime"), -1.0),
        number_or(_number(ds, "AcquisitionNumber"), -1.0),
    )


class CommonFields(TypedDict):
    """Attributes that every frame of one instance shares."""

    sop_instance_uid: str
    series_instance_uid: str
    rows: int
    columns: int
    photometric_interpretation: str
    bits_stored: int
    modality: str


def common_fields(ds: Dataset, path: str) -> CommonFields:
    """Read the attributes every frame of an instance shares."""
    values = {}
    for keyword, tag in (
        ("SOPInstanceUID", "(0008,0018) SOP Instance UID"),
        ("SeriesInstanceUID", "(0020,000E) Series Instance UID"),
        ("Rows", "(0028,0010) Rows"),
        ("Columns", "(0028,0011) Columns"),
    ):
        values[keyword] = attribute_value(ds, keyword)
        if values[keyword] in (None, ""):
            raise FrameReadError(f"{path}: {tag} is missing")
    bits_stored = attribute_value(ds, "BitsStored")
    if bits_stored is None:
        bits_stored = attribute_value(ds, "BitsAllocated")
    photometric = attribute_value(ds, "PhotometricInterpretation")
    modality = attribute_value(ds, "Modality")
    return CommonFields(
        sop_instance_uid=str(values["SOPInstanceUID"]),
        series_instance_uid=str(values["SeriesInstanceUID"]),
        rows=int(values["Rows"]),
        columns=int(values["Columns"]),
        photometric_interpretation=str("MONOCHROME2" if photometric is None else photometric),
        bits_stored=int(16 if bits_stored is None else bits_stored),
        modality=str("" if modality is None else modality),
    )


def _single_frame(instance: Instance) -> list[Frame]:
    ds, path = instance.dataset, instance.path
    common = common_fields(ds, path)
    position = float_values(
        _number(ds, "ImagePositionPatient"),
        3,
        path=path,
        tag="(0020,0032) Image Position (Patient)",
    )
    orientation = float_values(
        _number(ds, "ImageOrientationPatient"),
        6,
        path=path,
        tag="(0020,0037) Image Orientation (Patient)",
    )
    spacing = float_values(
        _number(ds, "PixelSpacing"), 2, path=path, tag="(0028,0030) Pixel Spacing"
    )
    frames = int(number_or(_number(ds, "NumberOfFrames"), 1.0) or 1)
    if frames != 1:
        raise FrameReadError(
            f"{path}: (0028,0008) Number of Frames is {frames} without a "
            "(5200,9230) Per-frame Functional Groups Sequence, expected 1"
        )
    return [
        Frame(
            instance=instance,
            frame_index=0,
            image_position_patient=position,
            image_orientation_patient=orientation,
            pixel_spacing=(float(spacing[0]), float(spacing[1])),
            rescale_slope=number_or(_number(ds, "RescaleSlope"), 1.0),
            rescale_intercept=number_or(_number(ds, "RescaleIntercept"), 0.0),
            echo=str(attribute_value(ds, "EchoNumbers") or ""),
            image_type=_strings(ds, "ImageType"),
            temporal_key=temporal_key(ds),
            stack_id="",
            **common,
        )
    ]


def read_frames(path: str | Path) -> list[Frame]:
    """Read one file into its frames.

    A single-frame image gives one frame. An enhanced multi-frame image gives one per frame,
    with geometry from the functional groups, and a Siemens mosaic gives one per tile.

    Raises
    ------
    FrameReadError
        When the file is not DICOM or lacks a geometry attribute.
    """
    from priors.dicom import _mosaic, _multiframe

    path = str(path)
    try:
        ds = pydicom.dcmread(path, defer_size=DEFER_SIZE_BYTES)
    except (InvalidDicomError, OSError, ValueError) as err:
        raise FrameReadError(f"{path}: not a readable DICOM file: {err}") from err
    if _pixels.PIXEL_DATA_TAG not in ds:
        raise FrameReadError(f"{path}: (7FE0,0010) Pixel Data is missing")

    instance = Instance(path=path, dataset=ds, native=_pixels.locate_native_pixel_data(ds))
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _multiframe.enhanced_frames(instance)
    # Image Type decoded from its bytes rules out most mosaics before is_mosaic, which
    # has pydicom convert the value.
    image_type = _strings(ds, "ImageType")
    if any(value.upper() == "MOSAIC" for value in image_type) and _mosaic.is_mosaic(ds):
        return _mosaic.mosaic_frames(instance)
    return _single_frame(instance)
