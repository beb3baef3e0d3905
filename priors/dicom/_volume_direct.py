"""Native 16-bit slices read straight into the buffer of the output SimpleITK image.

The general path decodes every instance into its own array, rescales into a second one
and copies that into the image. For uncompressed little-endian 16-bit single-frame
instances with integral rescales, each slice's Pixel Data is instead read from its file
into its place in the image, hashed there, cleared or sign-extended above Bits Stored
and rescaled in place. The work runs on a few threads, because file reads, SHA-256 and
numpy loops release the GIL.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from priors.dicom import _pixels
from priors.dicom._volume_frames import Frame

__all__ = ["DIRECT_READ_THREADS", "DirectRead", "can_read_direct", "read_direct"]

logger = logging.getLogger(__name__)

# Threads that read, hash and rescale slices. Each keeps one core busy because its work
# releases the GIL. More than four would mostly wait on memory bandwidth, which is an
# estimate: only two cores were measured.
DIRECT_READ_THREADS = max(1, min(4, os.cpu_count() or 1))

# Integral rescales are applied modulo 2**16 in the 16-bit buffer (see _rescale_in_place).
_WORD = 1 << 16

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _forget_pool() -> None:
    # A forked child has none of the parent's threads, so it starts a pool of its own.
    global _executor, _executor_lock
    _executor = None
    _executor_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


@dataclass
class DirectRead:
    """An image whose voxels were read straight from the files, and its voxel type."""

    image: sitk.Image
    dtype: np.dtype


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=DIRECT_READ_THREADS, thread_name_prefix="volume-read"
            )
        return _executor


def _whole(value: float) -> int | None:
    """Return value as an int when it is integral and fits 16 bits, else None."""
    if abs(value - round(value)) > _pixels.INTEGRAL_RESCALE_TOLERANCE:
        return None
    whole = round(value)
    return whole if -(1 << 15) <= whole < _WORD else None


def can_read_direct(frames: Sequence[Frame]) -> bool:
    """Return whether every frame is a whole native 16-bit instance with integral rescale.

    MONOCHROME1, mosaics, multi-frame instances, 8- and 32-bit data, compressed data and
    non-integral rescales take the general path.
    """
    instances = set()
    for frame in frames:
        native = frame.instance.native
        if native is None or native.dtype.itemsize != 2 or native.shape[0] != 1:
            return False
        if frame.tile is not None or frame.photometric_interpretation == "MONOCHROME1":
            return False
        if _whole(frame.rescale_slope) is None or _whole(frame.rescale_intercept) is None:
            return False
        instances.add(id(frame.instance))
    return len(instances) == len(frames)


def _writable_view(image: sitk.Image) -> np.ndarray:
    """Return a writable uint16 (slices, rows, columns) array over a 16-bit image's buffer.

    SimpleITK only offers a read-only view, because images may share one buffer until
    one of them is written. ``GetArrayViewFromImage`` first makes this image's buffer its
    own (``MakeUnique``), so writing through the view changes no other image. The array
    does not keep the image alive: the caller must hold the image while it writes.
    """
    view = sitk.GetArrayViewFromImage(image)
    address = view.__array_interface__["data"][0]
    memory = (ctypes.c_char * view.nbytes).from_address(address)
    return np.frombuffer(memoryview(memory), dtype=np.uint16).reshape(view.shape)


def _read_slice(frame: Frame, target: np.ndarray) -> tuple[str, int, int]:
    """Read one slice into target as stored values; return its SHA-256, minimum and maximum.

    The hash covers the Pixel Data value as written, before the bits above Bits Stored
    are corrected.
    """
    native = frame.instance.native
    assert native is not None
    data = target.data.cast("B")
    _pixels.read_into(data, frame.path, native.offset)
    digest = hashlib.sha256(data).hexdigest()
    stored = target.view(native.dtype)
    _pixels.correct_unused_bits(stored, bits_stored=native.bits_stored)
    return digest, int(stored.min()), int(stored.max())


def _rescale_in_place(target: np.ndarray, slope: int, intercept: int) -> None:
    """Apply an integral rescale to 16-bit values in place, modulo 2**16.

    Stored values of either signedness and the chosen output type (int16 or uint16) share
    their low 16 bits with the exact result, so wrapping arithmetic on uint16 gives the
    exact output whenever it fits, which ``output_dtype`` has checked.
    """
    if slope != 1:
        np.multiply(target, np.uint16(slope % _WORD), out=target)
    if intercept != 0:
        np.add(target, np.uint16(intercept % _WORD), out=target)


def read_direct(frames: Sequence[Frame]) -> DirectRead | None:
    """Build the image of frames that ``can_read_direct`` accepts, in slice order.

    Records each instance's pixel SHA-256 (the Pixel Data value as written) on the
    instance. Returns None when the rescaled values need float32, so that the caller
    takes the general path.

    Raises
    ------
    PixelDecodeError
        When a file ends inside its Pixel Data.
    """
    rows, columns = frames[0].rows, frames[0].columns
    image = sitk.Image([columns, rows, len(frames)], sitk.sitkInt16)
    buffer = _writable_view(image)
    pool = _pool()

    reads = [pool.submit(_read_slice, frame, buffer[k]) for k, frame in enumerate(frames)]
    # Every read must end before an error propagates and the image may be freed.
    wait(reads)
    ranges = []
    rescales = []
    for frame, read in zip(frames, reads, strict=True):
        digest, low, high = read.result()
        frame.instance.record_pixel_sha256(digest)
        ranges.append((float(low), float(high)))
        rescales.append((frame.rescale_slope, frame.rescale_intercept))
    dtype = _pixels.output_dtype(ranges, rescales)
    if dtype == np.float32:
        logger.debug(
            "series %s: rescaled values of %d slices need float32, so they are decoded instead",
            frames[0].series_instance_uid,
            len(frames),
        )
        return None

    pending = []
    for k, (slope, intercept) in enumerate(rescales):
        whole_slope, whole_intercept = _whole(slope), _whole(intercept)
        assert whole_slope is not None and whole_intercept is not None
        if (whole_slope, whole_intercept) != (1, 0):
            pending.append(pool.submit(_rescale_in_place, buffer[k], whole_slope, whole_intercept))
    wait(pending)
    for task in pending:
        task.result()

    if dtype == np.uint16:
        # The bits are right, but the image was allocated as int16, so a copy changes its type.
        image = sitk.GetImageFromArray(buffer)
    del buffer
    return DirectRead(image=image, dtype=dtype)
