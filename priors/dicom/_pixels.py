"""Decoding of stored pixel data, its hash and the conversion to output values."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder, pixel_array
from pydicom.tag import BaseTag
from pydicom.uid import UID

from priors.dicom.header import attribute_value

__all__ = [
    "NativePixelData",
    "PixelDecodeError",
    "correct_unused_bits",
    "decode_stored",
    "invert_monochrome1",
    "locate_native_pixel_data",
    "output_dtype",
    "pixel_sha256",
    "read_into",
    "read_native",
    "rescale",
    "rescale_into",
    "start_array_sha256",
    "start_frame_ranges",
    "start_pixel_sha256",
]

logger = logging.getLogger(__name__)

# Rescale values closer than this to an integer count as integral: DS strings such as
# "1.00000000000001" come from float formatting on the scanner, not from a real fraction.
INTEGRAL_RESCALE_TOLERANCE = 1e-6


# (7FE0,0010) Pixel Data, as a BaseTag so that a lookup skips pydicom's key conversion.
PIXEL_DATA_TAG = BaseTag(0x7FE00010)


class PixelDecodeError(ValueError):
    """Raised when the pixel data of an instance cannot be decoded."""


@dataclass(frozen=True)
class NativePixelData:
    """Location of uncompressed little-endian pixel data in its file, not yet read."""

    offset: int  # byte offset of the (7FE0,0010) Pixel Data value in the file
    dtype: np.dtype  # stored type, little endian
    shape: tuple[int, int, int]  # (frames, rows, columns)
    bits_stored: int  # (0028,0101) Bits Stored, at most the dtype's bits

    @property
    def nbytes(self) -> int:
        """Length of the stored values, without the padding of an odd-length value."""
        frames, rows, columns = self.shape
        return frames * rows * columns * self.dtype.itemsize


@functools.cache
def _is_native_little_endian(transfer_syntax: str) -> bool:
    syntax = UID(transfer_syntax)
    # Offsets in a deflated data set count inflated bytes, not bytes of the file.
    return syntax.is_little_endian and not (syntax.is_compressed or syntax.is_deflated)


def locate_native_pixel_data(ds: Dataset) -> NativePixelData | None:
    """Locate Pixel Data that pydicom deferred, when it can be read as stored values.

    Returns None unless the data set was read with Pixel Data deferred (``defer_size``)
    and the values need no decoder. That takes an uncompressed, undeflated
    little-endian transfer syntax and one sample per pixel. (0028,0100) Bits Allocated
    must be 8, 16 or 32 and (0028,0101) Bits Stored at most that, and the declared
    length must cover Rows x Columns x Number of Frames values. Everything else takes
    ``decode_stored``.
    """
    file_meta = getattr(ds, "file_meta", None)
    syntax = attribute_value(file_meta, "TransferSyntaxUID") if file_meta is not None else None
    if not syntax or not _is_native_little_endian(str(syntax)):
        return None
    element = ds.get_item(PIXEL_DATA_TAG, keep_deferred=True)
    if not isinstance(element, RawDataElement) or element.value is not None:
        return None
    bits_allocated = attribute_value(ds, "BitsAllocated")
    if bits_allocated not in (8, 16, 32) or attribute_value(ds, "SamplesPerPixel") not in (None, 1):
        return None
    bits_stored = attribute_value(ds, "BitsStored")
    if not isinstance(bits_stored, int) or not 1 <= bits_stored <= bits_allocated:
        return None
    rows, columns = attribute_value(ds, "Rows"), attribute_value(ds, "Columns")
    frames = attribute_value(ds, "NumberOfFrames", numeric=True)
    if not isinstance(rows, int) or not isinstance(columns, int):
        return None
    try:
        frame_count = int(frames or 1)
    except (TypeError, ValueError):
        return None
    signed = attribute_value(ds, "PixelRepresentation") == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits_allocated // 8}")
    shape = (max(frame_count, 1), rows, columns)
    location = NativePixelData(
        offset=element.value_tell, dtype=dtype, shape=shape, bits_stored=bits_stored
    )
    if element.length < location.nbytes:
        return None
    return location


def read_into(target: memoryview, path: str, offset: int) -> None:
    """Fill target with the bytes of a file from offset, without an intermediate copy.

    Raises
    ------
    PixelDecodeError
        When the file ends before target is full.
    """
    filled = 0
    with open(path, "rb", buffering=0) as stream:
        stream.seek(offset)
        while filled < len(target):
            count = stream.readinto(target[filled:])
            if not count:
                break
            filled += count
    if filled < len(target):
        raise PixelDecodeError(
            f"{path}: (7FE0,0010) Pixel Data has {filled} bytes in the file from offset "
            f"{offset}, expected {len(target)}: the file is truncated"
        )


def read_native(location: NativePixelData, path: str) -> np.ndarray:
    """Read deferred native pixel data from its file as a (frames, rows, columns) array.

    The values are as written: ``correct_unused_bits`` turns them into stored values
    when (0028,0101) Bits Stored is less than (0028,0100) Bits Allocated.
    """
    array = np.empty(location.shape, dtype=location.dtype)
    read_into(array.data.cast("B"), path, location.offset)
    return array


def correct_unused_bits(values: np.ndarray, *, bits_stored: int) -> None:
    """Clear or sign-extend the bits above (0028,0101) Bits Stored, in place.

    Writers may leave any value in the unused high bits of native pixel data. Shifting
    them out and back, arithmetically for signed types, gives what pydicom 3.0's decoder
    returns: unsigned values masked, signed values sign-extended from Bits Stored.
    """
    shift = values.dtype.itemsize * 8 - bits_stored
    if shift > 0:
        np.left_shift(values, shift, out=values)
        np.right_shift(values, shift, out=values)


def _native_stored_array(ds: Dataset) -> np.ndarray | None:
    """Return native Pixel Data as an array of the stored type, without bit corrections.

    The array is a read-only view of the Pixel Data value when it is little endian and
    a little-endian copy otherwise. Returns None for cases the raw view does not cover
    (bit-packed or colour data).

    Raises
    ------
    ValueError
        When Pixel Data is shorter than Rows x Columns x Number of Frames values.
    """
    bits_allocated = int(ds.BitsAllocated)
    if bits_allocated not in (8, 16, 32) or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")
    if not ds.file_meta.TransferSyntaxUID.is_little_endian:
        dtype = dtype.newbyteorder(">")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    count = frames * int(ds.Rows) * int(ds.Columns)
    raw = np.frombuffer(ds.PixelData, dtype=dtype, count=count)
    return raw.astype(dtype.newbyteorder("<"), copy=False)


def _sha256_hex(data: np.ndarray) -> str:
    return hashlib.sha256(data.data).hexdigest()


# hashlib releases the GIL on large buffers, so one background thread hashes the pixel
# data of an instance while the caller reads and decodes the next one.
_hash_executor: ThreadPoolExecutor | None = None
_hash_executor_lock = threading.Lock()


def _forget_executor() -> None:
    # A forked child has none of the parent's threads, so it starts an executor of its own.
    global _hash_executor, _hash_executor_lock
    _hash_executor = None
    _hash_executor_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_executor)


def _executor() -> ThreadPoolExecutor:
    global _hash_executor
    with _hash_executor_lock:
        if _hash_executor is None:
            _hash_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixel-sha256")
        return _hash_executor


def _hash_input(ds: Dataset, decoded: np.ndarray) -> np.ndarray:
    """Return the bytes that pixel_sha256 covers, without copying where possible."""
    transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
    array = None
    if not transfer_syntax.is_compressed:
        array = _native_stored_array(ds)
    if array is None:
        array = np.ascontiguousarray(decoded)
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(array)


def pixel_sha256(ds: Dataset, decoded: np.ndarray) -> str:
    """Hash the stored pixel values of an instance: stored type, C order, little endian.

    For native (uncompressed) data the hash covers the Pixel Data value as written, so it
    equals the hash that ingest computes without decoding. For compressed data it covers
    the decoder's output.
    """
    return _sha256_hex(_hash_input(ds, decoded))


def start_pixel_sha256(ds: Dataset, decoded: np.ndarray) -> Future[str]:
    """Start pixel_sha256 on a background thread and return its future.

    The bytes to hash are chosen before returning, so the caller may delete
    (7FE0,0010) Pixel Data from the dataset straight away.
    """
    return _executor().submit(_sha256_hex, _hash_input(ds, decoded))


def _frame_ranges(decoded: np.ndarray) -> np.ndarray:
    return np.stack([decoded.min(axis=(1, 2)), decoded.max(axis=(1, 2))], axis=1)


def start_array_sha256(stored: np.ndarray) -> Future[str]:
    """Start hashing a C-contiguous little-endian array of stored values on the hashing thread.

    For native pixel data read with ``read_native`` this is the hash of the Pixel Data
    value as written, the same that ``pixel_sha256`` gives.
    """
    return _executor().submit(_sha256_hex, stored)


def start_frame_ranges(decoded: np.ndarray) -> Future[np.ndarray]:
    """Start computing the (min, max) of each frame of a (frames, rows, columns) array.

    Runs on the hashing thread, because numpy reductions also release the GIL. The
    result is a (frames, 2) array in the stored dtype.
    """
    return _executor().submit(_frame_ranges, decoded)


def _decode_native(ds: Dataset, path: str) -> np.ndarray:
    """Decode uncompressed pixel data, viewing the bytes directly when no bit fix-up applies."""
    bits_allocated = int(ds.get("BitsAllocated", 0))
    bits_stored = int(ds.get("BitsStored", bits_allocated))
    if "PixelData" in ds and bits_stored == bits_allocated:
        try:
            array = _native_stored_array(ds)
        except (ValueError, AttributeError) as err:
            raise PixelDecodeError(f"{path}: native pixel data is invalid: {err}") from err
        if array is not None:
            return array
    try:
        return pixel_array(ds)
    except (ValueError, AttributeError, NotImplementedError) as err:
        raise PixelDecodeError(f"{path}: native pixel data is invalid: {err}") from err


def decode_stored(ds: Dataset, path: str) -> np.ndarray:
    """Decode the stored pixel values of an instance as a (frames, rows, columns) array.

    Values are returned before rescale and photometric changes. For compressed transfer
    syntaxes each pydicom decoder plugin is tried in turn. Uncompressed data whose
    (0028,0101) Bits Stored equals (0028,0100) Bits Allocated is returned as a read-only
    view of the Pixel Data bytes (or a byte-swapped copy for big endian), which is what
    pydicom's decoder returns for it, without the copy.

    Raises
    ------
    PixelDecodeError
        When no plugin decodes the data. The message lists each plugin's reason,
        including plugins that are not installed.
    """
    if "PixelData" not in ds:
        raise PixelDecodeError(f"{path}: (7FE0,0010) Pixel Data is missing")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise PixelDecodeError(
            f"{path}: (0028,0002) Samples per Pixel is {ds.SamplesPerPixel}, expected 1 "
            "(colour images are not built into volumes)"
        )

    transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
    if transfer_syntax.is_compressed:
        array = _decode_with_plugins(ds, path, transfer_syntax)
    else:
        array = _decode_native(ds, path)
    return array.reshape(-1, int(ds.Rows), int(ds.Columns))


def _plugin_reason(name: str, err: Exception) -> str:
    """Return a plugin's own message without pydicom's "all plugins failed" wrapper."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    return last.removeprefix(f"{name}: ")


def _decode_with_plugins(ds: Dataset, path: str, transfer_syntax: UID) -> np.ndarray:
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as err:
        raise PixelDecodeError(
            f"{path}: (0002,0010) Transfer Syntax UID {transfer_syntax} "
            f"({transfer_syntax.name}) has no pixel data decoder in pydicom "
            f"{pydicom.__version__}"
        ) from err

    reasons: list[str] = []
    for missing in decoder.missing_dependencies:
        reasons.append(f"not available: {missing}")
    for name in decoder.available_plugins:
        try:
            return pixel_array(ds, decoding_plugin=name)
        except Exception as err:  # every plugin's reason goes into one error
            reasons.append(f"{name}: {_plugin_reason(name, err)}")
            logger.debug("decoder plugin %s failed on %s: %s", name, path, err)
    raise PixelDecodeError(
        f"{path}: no decoder could read (0002,0010) Transfer Syntax UID {transfer_syntax} "
        f"({transfer_syntax.name}); " + "; ".join(reasons)
    )


def _is_integral(value: float) -> bool:
    return abs(value - round(value)) <= INTEGRAL_RESCALE_TOLERANCE


def output_dtype(
    ranges: Sequence[tuple[float, float]], rescales: Sequence[tuple[float, float]]
) -> np.dtype:
    """Choose int16, uint16 or float32 for rescaled values.

    Parameters
    ----------
    ranges : sequence of (min, max)
        Stored value range of each slice.
    rescales : sequence of (slope, intercept)
        Rescale Slope and Rescale Intercept of each slice, in the same order.
    """
    if not all(_is_integral(s) and _is_integral(b) for s, b in rescales):
        return np.dtype(np.float32)
    ends = [
        (lo * slope + intercept, hi * slope + intercept)
        for (lo, hi), (slope, intercept) in zip(ranges, rescales, strict=True)
    ]
    low = min(min(pair) for pair in ends)
    high = max(max(pair) for pair in ends)
    for dtype in (np.dtype(np.int16), np.dtype(np.uint16)):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return np.dtype(np.float32)


def invert_monochrome1(stored: np.ndarray, *, bits_stored: int) -> np.ndarray:
    """Invert MONOCHROME1 values within the range of (0028,0101) Bits Stored.

    After inversion higher values are brighter, as in MONOCHROME2 (PS3.3 C.7.6.3.1.2).
    """
    values = stored.astype(np.int64)
    if np.issubdtype(stored.dtype, np.signedinteger):
        return -1 - values
    return ((1 << bits_stored) - 1) - values


def rescale(values: np.ndarray, *, slope: float, intercept: float, dtype: np.dtype) -> np.ndarray:
    """Apply (0028,1053) Rescale Slope and (0028,1052) Rescale Intercept to one slice."""
    output = np.empty(values.shape, dtype=dtype)
    rescale_into(output, values, slope=slope, intercept=intercept)
    return output


def rescale_into(output: np.ndarray, values: np.ndarray, *, slope: float, intercept: float) -> None:
    """Write rescaled values into output, rounding to its dtype when that is an integer.

    The caller picks an output dtype that can store every exact result (see output_dtype).
    With an integral slope and intercept and an integer output, the arithmetic stays in
    integers and gives the same values as rounding the float result.
    """
    if output.dtype.kind in "iu" and _is_integral(slope) and _is_integral(intercept):
        whole_slope, whole_intercept = round(slope), round(intercept)
        info = np.iinfo(output.dtype)
        if all(info.min <= value <= info.max for value in (whole_slope, whole_intercept)):
            # Integer loops wrap modulo 2**bits and are never narrower than the output, so
            # the wrapped result cast to the output equals the exact one whenever it fits.
            scalar = output.dtype.type
            if whole_slope == 1:
                np.add(values, scalar(whole_intercept), out=output, casting="unsafe")
                return
            np.multiply(values, scalar(whole_slope), out=output, casting="unsafe")
            np.add(output, scalar(whole_intercept), out=output, casting="unsafe")
            return
    result = values.astype(np.float64) * slope + intercept
    if output.dtype.kind in "iu":
        np.rint(result, out=result)
    output[...] = result
