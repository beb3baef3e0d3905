"""File and pixel hashes of DICOM instances.

Each instance has two SHA-256 hashes. ``file_sha256`` covers the bytes of the file
at one location. ``pixel_sha256`` covers the decoded pixel data in its stored data
type, C order, little endian, before rescale or photometric changes, so it is the
same however the instance was losslessly encoded or fetched. For uncompressed data
the Pixel Data value already is that byte string (after a byte swap for big endian
and a reorder for planar colour data), so ingest hashes it without decoding.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRBigEndian

from priors.dicom.header import attribute_value

__all__ = [
    "PixelDataError",
    "expected_pixel_bytes",
    "file_sha256",
    "pixel_sha256_from_array",
    "pixel_sha256_from_dataset",
]

logger = logging.getLogger(__name__)

# (7FE0,0010) Pixel Data, as a BaseTag so that a membership test skips key conversion.
PIXEL_DATA_TAG = BaseTag(0x7FE00010)

# Read files in 1 MiB blocks: large enough for throughput, small enough for memory.
HASH_BLOCK_BYTES = 1 << 20

# Bits Allocated values whose stored samples map onto a numpy dtype byte for byte.
# Bits Allocated 1 is bit-packed, and the decoded array of it is one byte a pixel.
WHOLE_BYTE_BITS = frozenset({8, 16, 32, 64})

# Uncompressed colour data in these photometric interpretations is subsampled, so the
# stored bytes are not the decoded array (PS3.3 C.7.6.3.1.2).
SUBSAMPLED_PHOTOMETRIC = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"})


class PixelDataError(ValueError):
    """Pixel Data that is shorter than its image pixel description requires."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 hex digest of the bytes of a file.

    Raises
    ------
    OSError
        When the file cannot be opened or read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def expected_pixel_bytes(ds: Dataset) -> int | None:
    """Return the byte length of the native Pixel Data that the header describes.

    This is Rows x Columns x Number of Frames x Samples per Pixel x Bits Allocated / 8,
    rounded up to whole bytes for bit-packed data, without the trailing padding byte
    of an odd length. ``None`` when a needed attribute is missing or invalid.
    """
    return _expected_bytes(ds, bits=attribute_value(ds, "BitsAllocated"),
                           samples=attribute_value(ds, "SamplesPerPixel"))


def _expected_bytes(ds: Dataset, *, bits: Any, samples: Any) -> int | None:
    # expected_pixel_bytes with Bits Allocated and Samples per Pixel already read.
    try:
        rows = int(attribute_value(ds, "Rows"))
        columns = int(attribute_value(ds, "Columns"))
        bits = int(bits)
        samples = int(samples or 1)
        frames = int(attribute_value(ds, "NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    if min(rows, columns, bits, samples, frames) < 1:
        return None
    return (rows * columns * frames * samples * bits + 7) // 8


def pixel_sha256_from_dataset(
    ds: Dataset, *, transfer_syntax_uid: str | None = None
) -> str | None:
    """Return the pixel hash of an uncompressed data set without decoding it.

    Parameters
    ----------
    ds
        Data set read with its Pixel Data (7FE0,0010).
    transfer_syntax_uid
        Transfer syntax the data set was read with; taken from its file meta when
        ``None``.

    Returns
    -------
    str or None
        The SHA-256 hex digest, or ``None`` when the data set has no Pixel Data, the
        transfer syntax is compressed (the volume builder hashes the decoded array
        with ``pixel_sha256_from_array``), or the stored bytes differ in layout from
        the decoded array (bit-packed or subsampled colour data).

    Raises
    ------
    PixelDataError
        When the Pixel Data value is shorter than the image pixel attributes
        require, as in a truncated file.
    """
    if PIXEL_DATA_TAG not in ds:
        return None
    syntax = transfer_syntax_uid or ds.get("file_meta", Dataset()).get("TransferSyntaxUID", "")
    if not syntax or _is_compressed(str(syntax)):
        return None

    photometric = str(attribute_value(ds, "PhotometricInterpretation") or "").strip()
    bits = attribute_value(ds, "BitsAllocated")
    if bits not in WHOLE_BYTE_BITS or photometric in SUBSAMPLED_PHOTOMETRIC:
        # NOTE: bit-packed and subsampled data get their hash when decoded.
        return None

    samples_value = attribute_value(ds, "SamplesPerPixel")
    expected = _expected_bytes(ds, bits=bits, samples=samples_value)
    if expected is None:
        return None
    value = attribute_value(ds, "PixelData")
    if len(value) < expected:
        raise PixelDataError(
            f"SOP Instance {ds.get('SOPInstanceUID', '<missing>')}: (7FE0,0010) Pixel Data "
            f"has {len(value)} bytes, expected {expected} from Rows, Columns, Number of "
            "Frames, Samples per Pixel and Bits Allocated"
        )
    stored = memoryview(value)[:expected]

    needs_swap = syntax == ExplicitVRBigEndian and bits > 8
    # _expected_bytes has read Samples per Pixel as an integer already.
    planar = int(samples_value or 1) > 1 and attribute_value(ds, "PlanarConfiguration") == 1
    if not needs_swap and not planar:
        return hashlib.sha256(stored).hexdigest()
    return pixel_sha256_from_array(_native_array(ds, stored, big_endian=needs_swap))


def pixel_sha256_from_array(array: Any) -> str:
    """Return the pixel hash of a decoded pixel array.

    Parameters
    ----------
    array
        Pixel array in its stored data type, before rescale or photometric changes,
        shaped as pydicom returns it (frames, rows, columns[, samples]).

    Returns
    -------
    str
        SHA-256 hex digest of the array's bytes in C order, little endian.
    """
    values = np.asarray(array)
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(np.ascontiguousarray(little).tobytes()).hexdigest()


@functools.lru_cache(maxsize=64)
def _is_compressed(syntax: str) -> bool:
    # Building a UID and asking it costs more than the hash of a small image.
    return UID(syntax).is_compressed


def _native_array(ds: Dataset, stored: memoryview, *, big_endian: bool) -> np.ndarray:
    bits = int(ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    kind = "i" if signed else "u"
    order = ">" if big_endian else "<"
    dtype = np.dtype(f"{order}{kind}{bits // 8}")
    array = np.frombuffer(stored, dtype=dtype)

    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1 and ds.get("PlanarConfiguration", 0) == 1:
        # Planar data stores each colour plane of a frame in turn (PS3.3 C.7.6.3.1.3).
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        planes = array.reshape(frames, samples, int(ds.Rows), int(ds.Columns))
        array = planes.transpose(0, 2, 3, 1)
    return array
