"""Series to volume: turn the instances of DICOM series into 3-D SimpleITK images.

Slices are ordered by (0020,0032) Image Position (Patient) projected on the slice normal
from (0020,0037) Image Orientation (Patient), and the slice spacing comes from those
positions, never from (0018,0088) Spacing Between Slices, Slice Location or Instance
Number. Every split, drop, resampling and rescale is recorded in ``Volume.decisions``,
and everything that cannot become a volume is returned as a ``SeriesRejection``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from priors.dicom import _pixels
from priors.dicom._tilt import align_sheared_slices
from priors.dicom._volume_direct import DirectRead, can_read_direct, read_direct
from priors.dicom._volume_frames import Frame, FrameReadError, read_frames
from priors.dicom._volume_geometry import (
    SliceLayout,
    measure_layout,
    resample_along_normal,
    uniform_blocks,
)
from priors.dicom._volume_stacks import Stack, split_series

__all__ = [
    "GAP_POLICIES",
    "TEMPORAL_POLICIES",
    "TILT_POLICIES",
    "SeriesRejection",
    "Volume",
    "build_volumes",
]

logger = logging.getLogger(__name__)

GAP_POLICIES = ("split", "resample", "reject")
TILT_POLICIES = ("resample", "keep", "reject")
TEMPORAL_POLICIES = ("split", "4d", "first", "reject")


@dataclass
class Volume:
    """One 3-D volume built from a stack of slices of one series.

    ``sop_instance_uids`` and ``paths`` list the source slices in slice order (an
    enhanced multi-frame instance appears once per frame used, and
    ``metadata["frame_numbers"]`` gives the 1-based frame of each).
    """

    image: sitk.Image
    series_instance_uid: str
    stack_label: str
    sop_instance_uids: list[str]
    paths: list[str]
    pixel_sha256: dict[str, str]
    decisions: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


@dataclass
class SeriesRejection:
    """Instances of a series (or one stack of it) that did not become a volume."""

    series_instance_uid: str
    stack_label: str
    reason: str
    paths: list[str]


class _Rejected(Exception):
    """Internal signal: the stack being built is rejected with this reason."""


def _check_option(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported, expected one of {list(allowed)}")


def _unique_paths(frames: Sequence[Frame]) -> list[str]:
    return list(dict.fromkeys(frame.path for frame in frames))


def _read_all(
    paths: Sequence[str | Path],
) -> tuple[dict[str, list[Frame]], list[SeriesRejection]]:
    """Read every file, grouping frames by Series Instance UID in first-seen order."""
    by_series: dict[str, list[Frame]] = {}
    rejections = []
    for path in paths:
        try:
            frames = read_frames(path)
        except FrameReadError as err:
            logger.warning("rejected a file: %s", err)
            rejections.append(SeriesRejection("", "", str(err), [str(path)]))
            continue
        for frame in frames:
            by_series.setdefault(frame.series_instance_uid, []).append(frame)
    return by_series, rejections


def _decodable_frames(
    series_uid: str, frames: Sequence[Frame], rejections: list[SeriesRejection]
) -> list[Frame]:
    """Decode every frame once; drop the files that fail, each with its own rejection.

    One undecodable instance then costs its own slice (and may split the stack at
    the gap it leaves), not the whole series. Decoded values are cached on the
    instance, so the later build does not decode again. Native pixel data left in the
    file is only checked to be complete here, and read when its volume is built.
    """
    kept = []
    failed: dict[str, str] = {}
    for frame in frames:
        if frame.path in failed:
            continue
        try:
            frame.instance.check_pixels()
        except _pixels.PixelDecodeError as err:
            failed[frame.path] = str(err)
            continue
        kept.append(frame)
    for path, reason in failed.items():
        logger.warning("series %s: dropped an undecodable file: %s", series_uid, reason)
        rejections.append(SeriesRejection(series_uid, "", reason, [path]))
    return kept


def _stored_slices(frames: Sequence[Frame]) -> list[np.ndarray]:
    """Decode the frames and invert MONOCHROME1, keeping stored (pre-rescale) units."""
    slices = []
    for frame in frames:
        try:
            stored = frame.stored()
        except _pixels.PixelDecodeError as err:
            raise _Rejected(str(err)) from err
        if frame.photometric_interpretation == "MONOCHROME1":
            stored = _pixels.invert_monochrome1(stored, bits_stored=frame.bits_stored)
        slices.append(stored)
    return slices


def _record_pixel_decisions(frames: Sequence[Frame], dtype: np.dtype, decisions: list[str]) -> None:
    """Record photometric inversion, rescales and a float32 output among the decisions."""
    if any(f.photometric_interpretation == "MONOCHROME1" for f in frames):
        decisions.append("inverted MONOCHROME1 so that higher values are brighter")
    distinct = sorted({(f.rescale_slope, f.rescale_intercept) for f in frames})
    if distinct != [(1.0, 0.0)]:
        shown = ", ".join(f"slope {s:g} intercept {b:g}" for s, b in distinct[:4])
        more = f" and {len(distinct) - 4} more" if len(distinct) > 4 else ""
        decisions.append(f"applied rescale per slice ({shown}{more})")
    if dtype == np.float32:
        decisions.append("output is float32 because a rescale is not integral or exceeds 16 bits")


def _rescaled_array(frames: Sequence[Frame], decisions: list[str]) -> np.ndarray:
    """Return the (N, rows, columns) array of rescaled values in the output dtype."""
    slices = _stored_slices(frames)
    rescales = [(f.rescale_slope, f.rescale_intercept) for f in frames]
    ranges = [
        (float(stored.min()), float(stored.max()))
        if frame.photometric_interpretation == "MONOCHROME1"
        else frame.stored_range()
        for frame, stored in zip(frames, slices, strict=True)
    ]
    dtype = _pixels.output_dtype(ranges, rescales)
    _record_pixel_decisions(frames, dtype, decisions)

    output = np.empty((len(slices),) + slices[0].shape, dtype=dtype)
    for index, (stored, (slope, intercept)) in enumerate(zip(slices, rescales, strict=True)):
        _pixels.rescale_into(output[index], stored, slope=slope, intercept=intercept)
    return output


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _set_geometry(
    image: sitk.Image, layout: SliceLayout, origin: np.ndarray, step_mm: float
) -> sitk.Image:
    image.SetSpacing((layout.pixel_spacing[1], layout.pixel_spacing[0], float(step_mm)))
    image.SetOrigin(tuple(float(v) for v in origin))
    direction = np.column_stack([layout.row_cosine, layout.column_cosine, layout.normal])
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def _single_slice_thickness(frame: Frame, decisions: list[str]) -> float:
    """Choose the third spacing of a one-slice volume, which has no measured step."""
    dataset = frame.instance.dataset
    for keyword, tag in (
        ("SpacingBetweenSlices", "(0018,0088) Spacing Between Slices"),
        ("SliceThickness", "(0018,0050) Slice Thickness"),
    ):
        value = dataset.get(keyword)
        if value not in (None, "") and abs(float(value)) > 0:
            decisions.append(f"one slice: spacing along the normal taken from {tag} {value}")
            return abs(float(value))
    decisions.append("one slice and no slice thickness: spacing along the normal set to 1 mm")
    return 1.0


class _StackBuilder:
    """Builds the volumes of one stack under the chosen policies."""

    def __init__(
        self, series_uid: str, stack: Stack, *, gap_policy: str, tilt_policy: str, min_slices: int
    ) -> None:
        self.series_uid = series_uid
        self.stack = stack
        self.gap_policy = gap_policy
        self.tilt_policy = tilt_policy
        self.min_slices = min_slices
        self.volumes: list[Volume] = []
        self.rejections: list[SeriesRejection] = []
        # Steps where the stack breaks into uniform blocks, as JSON-ready records.
        self.gaps: list[dict[str, float]] = []

    def reject(self, frames: Sequence[Frame], label: str, reason: str) -> None:
        logger.info("rejected stack %r of series %s: %s", label, self.series_uid, reason)
        self.rejections.append(
            SeriesRejection(self.series_uid, label, reason, _unique_paths(frames))
        )

    def too_few(self, frames: Sequence[Frame], label: str, what: str) -> bool:
        if len(frames) >= self.min_slices:
            return False
        self.reject(
            frames,
            label,
            f"{what} has {len(frames)} slice(s) at distinct positions, expected at least "
            f"min_slices={self.min_slices}",
        )
        return True

    def build(self) -> None:
        frames, label = self.stack.frames, self.stack.label
        if self.too_few(frames, label, "stack"):
            return
        layout = measure_layout(frames)
        if layout.is_sheared and self.tilt_policy == "reject":
            self.reject(
                frames,
                label,
                f"slices are sheared by {layout.tilt_deg:.2f} degrees (gantry tilt): "
                "(0020,0032) Image Position (Patient) steps are not along the slice normal "
                "(tilt_policy='reject')",
            )
            return

        steps = np.diff(layout.positions_mm)
        blocks = uniform_blocks(layout.positions_mm)
        if len(blocks) == 1:
            self.emit(frames, label, layout, list(self.stack.decisions))
            return
        self.gaps = self.find_gaps(layout.positions_mm, blocks)
        gaps = "; ".join(
            f"step of {gap['step_mm']:.3f} mm after the slice at {gap['after_mm']:.3f} mm "
            "along the normal"
            for gap in self.gaps
        )
        if self.gap_policy == "reject":
            self.reject(frames, label, f"non-uniform slice spacing: {gaps} (gap_policy='reject')")
        elif self.gap_policy == "resample":
            decisions = list(self.stack.decisions)
            decisions.append(f"non-uniform slice spacing: {gaps}")
            self.emit(frames, label, layout, decisions, resample_step=float(np.median(steps)))
        else:
            self.split_blocks(frames, label, blocks, gaps)

    @staticmethod
    def find_gaps(
        positions_mm: np.ndarray, blocks: list[tuple[int, int]]
    ) -> list[dict[str, float]]:
        gaps = []
        for (_, stop), (start, _) in zip(blocks[:-1], blocks[1:], strict=True):
            after = float(positions_mm[stop - 1])
            step = float(positions_mm[start]) - after
            gaps.append({"after_mm": round(after, 4), "step_mm": round(step, 4)})
        return gaps

    def split_blocks(
        self, frames: list[Frame], label: str, blocks: list[tuple[int, int]], gaps: str
    ) -> None:
        for number, (start, stop) in enumerate(blocks, start=1):
            block = frames[start:stop]
            block_label = ", ".join(filter(None, [label, f"block {number} of {len(blocks)}"]))
            if self.too_few(block, block_label, f"uniform block {number} of {len(blocks)}"):
                continue
            decisions = list(self.stack.decisions)
            decisions.append(
                f"split at non-uniform slice spacing ({gaps}) into {len(blocks)} blocks, "
                f"of which this is block {number} (gap_policy='split')"
            )
            self.emit(block, block_label, measure_layout(block), decisions)

    def read_pixels(
        self, frames: list[Frame], *, moves_voxels: bool, decisions: list[str]
    ) -> DirectRead | np.ndarray:
        """Return the rescaled voxels, as an image when read straight from the files.

        Slices that need no interpolation and are stored as native 16-bit values go
        straight into the image. Everything else is decoded into an array first.

        Raises
        ------
        PixelDecodeError, _Rejected
            When a slice cannot be read or decoded.
        """
        if not moves_voxels and can_read_direct(frames):
            direct = read_direct(frames)
            if direct is not None:
                _record_pixel_decisions(frames, direct.dtype, decisions)
                return direct
        return _rescaled_array(frames, decisions)

    def emit(
        self,
        frames: list[Frame],
        label: str,
        layout: SliceLayout,
        decisions: list[str],
        *,
        resample_step: float | None = None,
    ) -> None:
        moves_voxels = resample_step is not None or (
            layout.is_sheared and self.tilt_policy == "resample"
        )
        try:
            pixels = self.read_pixels(frames, moves_voxels=moves_voxels, decisions=decisions)
        except (_pixels.PixelDecodeError, _Rejected) as err:
            self.reject(frames, label, str(err))
            return
        # Only decoded slices are resampled for tilt or gaps, since moves_voxels rules
        # out the direct read.
        direct: DirectRead | None = None
        array: np.ndarray | None = None
        if isinstance(pixels, DirectRead):
            direct, dtype = pixels, pixels.dtype
        else:
            array, dtype = pixels, pixels.dtype
        origin = frames[0].image_position_patient
        metadata: dict = {
            "tilt_deg": 0.0,
            "gaps": self.gaps,
            "interpolated_positions_mm": [],
            "resampled": False,
        }

        if layout.is_sheared:
            metadata["tilt_deg"] = round(layout.tilt_deg, 4)
            metadata["shear_offsets_mm"] = layout.offsets_mm.round(4).tolist()
            if self.tilt_policy == "resample":
                assert array is not None
                aligned = align_sheared_slices(
                    array, layout.offsets_mm, layout.pixel_spacing, fill_value=float(array.min())
                )
                array = _cast_like(aligned, dtype)
                metadata["resampled"] = True
                decisions.append(
                    f"gantry tilt of {layout.tilt_deg:.2f} degrees: shifted each slice in plane "
                    "onto a rectilinear grid anchored at the first slice (linear interpolation)"
                )
            else:
                decisions.append(
                    f"gantry tilt of {layout.tilt_deg:.2f} degrees kept: voxels of slice k lie "
                    "off by shear_offsets_mm[k] in plane (tilt_policy='keep')"
                )

        positions = layout.positions_mm
        if resample_step is not None:
            assert array is not None
            resampled, positions, interpolated = resample_along_normal(
                array.astype(np.float64), layout.positions_mm, resample_step
            )
            array = _cast_like(resampled, dtype)
            metadata["resampled"] = True
            metadata["interpolated_positions_mm"] = [round(p, 4) for p in interpolated]
            decisions.append(
                f"resampled to a uniform {resample_step:.4f} mm slice spacing and interpolated "
                f"{len(interpolated)} slice(s) linearly (gap_policy='resample')"
            )
            step = resample_step
        elif len(positions) == 1:
            step = _single_slice_thickness(frames[0], decisions)
        else:
            step = (positions[-1] - positions[0]) / (len(positions) - 1)

        if direct is not None:
            image = direct.image
        else:
            assert array is not None
            image = sitk.GetImageFromArray(array)
        _set_geometry(image, layout, origin, step)
        modality = frames[0].modality
        metadata.update(
            {
                "size": list(image.GetSize()),
                "spacing": list(image.GetSpacing()),
                "origin_lps": list(image.GetOrigin()),
                "direction_lps": list(image.GetDirection()),
                "slice_positions_mm": [round(float(p), 4) for p in positions],
                "source_positions_mm": [round(float(p), 4) for p in layout.positions_mm],
                "frame_numbers": [f.frame_index + 1 for f in frames],
                "pixel_type": str(dtype),
                "modality": modality,
                "units": "HU" if modality == "CT" else "",
                "gantry_detector_tilt": frames[0].instance.dataset.get("GantryDetectorTilt"),
            }
        )
        if metadata["gantry_detector_tilt"] is not None:
            metadata["gantry_detector_tilt"] = float(metadata["gantry_detector_tilt"])
        self.volumes.append(
            Volume(
                image=image,
                series_instance_uid=self.series_uid,
                stack_label=label,
                sop_instance_uids=[f.sop_instance_uid for f in frames],
                paths=[f.path for f in frames],
                pixel_sha256={f.sop_instance_uid: f.instance.pixel_sha256() for f in frames},
                decisions=decisions,
                metadata=metadata,
            )
        )


# Time points joined into one 4-D image must share their grid to this tolerance (mm, or
# direction cosine). It matches slice grouping because all time points share one set of positions.
JOIN_GRID_TOLERANCE = 1e-3


def _same_grid(first: sitk.Image, other: sitk.Image) -> bool:
    return first.GetSize() == other.GetSize() and all(
        np.allclose(getter(first), getter(other), atol=JOIN_GRID_TOLERANCE)
        for getter in (sitk.Image.GetSpacing, sitk.Image.GetOrigin, sitk.Image.GetDirection)
    )


def _join_time_points(
    series_uid: str, group_label_parts: list[str], built: list[tuple[Stack, _StackBuilder]]
) -> tuple[list[Volume], list[SeriesRejection]]:
    """Join the 3-D volumes of every time point of one group into one 4-D volume.

    The fourth axis is the time point index (spacing 1), in the order of the temporal key:
    Temporal Position Identifier, then Trigger Time, then Acquisition Number.
    """
    count = len(built)
    label = ", ".join(group_label_parts + [f"{count} time points"])
    all_paths = list(dict.fromkeys(f.path for stack, _ in built for f in stack.frames))
    first: Volume | None = None
    problem = ""
    for stack, builder in built:
        assert stack.time_point is not None
        name = f"time point {stack.time_point[0] + 1} of {count}"
        if builder.rejections or len(builder.volumes) != 1:
            reasons = "; ".join(r.reason for r in builder.rejections)
            problem = f"{name} gave {len(builder.volumes)} volumes, expected 1 ({reasons})"
            break
        (volume,) = builder.volumes
        if first is None:
            first = volume
        elif not _same_grid(first.image, volume.image):
            problem = (
                f"{name} has size {volume.image.GetSize()}, origin {volume.image.GetOrigin()}, "
                f"expected the grid of time point 1 (size {first.image.GetSize()}, origin "
                f"{first.image.GetOrigin()})"
            )
            break
    if problem or first is None:
        reason = (
            f"cannot join {count} time points into one 4-D image: {problem}; "
            "temporal_policy='split' builds each time point as its own volume"
        )
        logger.info("rejected stack %r of series %s: %s", label, series_uid, reason)
        return [], [SeriesRejection(series_uid, label, reason, all_paths)]

    volumes = [builder.volumes[0] for _, builder in built]
    decisions = list(dict.fromkeys(d for volume in volumes for d in volume.decisions))
    images = [volume.image for volume in volumes]
    if len({image.GetPixelID() for image in images}) > 1:
        images = [sitk.Cast(image, sitk.sitkFloat32) for image in images]
        decisions.append("time points differ in pixel type, so the 4-D image is float32")
    image = sitk.JoinSeries(images)
    decisions.append(
        f"joined {count} time points into one 4-D image; the fourth axis is the time point "
        "index in temporal order (temporal_policy='4d')"
    )
    metadata = dict(first.metadata)
    metadata.update(
        {
            "size": list(image.GetSize()),
            "spacing": list(image.GetSpacing()),
            "origin_lps": list(image.GetOrigin()),
            "direction_lps": list(image.GetDirection()),
            "pixel_type": str(sitk.GetArrayViewFromImage(image).dtype),
            "time_point_count": count,
            # (Temporal Position Identifier, Trigger Time, Acquisition Number), -1 if absent.
            "temporal_keys": [list(stack.frames[0].temporal_key) for stack, _ in built],
            "frame_numbers": [n for volume in volumes for n in volume.metadata["frame_numbers"]],
        }
    )
    joined = Volume(
        image=image,
        series_instance_uid=series_uid,
        stack_label=label,
        sop_instance_uids=[uid for volume in volumes for uid in volume.sop_instance_uids],
        paths=[path for volume in volumes for path in volume.paths],
        pixel_sha256={k: v for volume in volumes for k, v in volume.pixel_sha256.items()},
        decisions=decisions,
        metadata=metadata,
    )
    return [joined], []


def build_volumes(
    paths: Sequence[str | Path],
    *,
    gap_policy: str = "split",
    tilt_policy: str = "resample",
    temporal_policy: str = "split",
    min_slices: int = 3,
) -> tuple[list[Volume], list[SeriesRejection]]:
    """Build 3-D volumes (LPS, mm) from the files of one or more series.

    Parameters
    ----------
    paths : sequence of str or Path
        DICOM files. They are grouped by (0020,000E) Series Instance UID first.
    gap_policy : {"split", "resample", "reject"}
        What to do when steps between slice positions differ by more than
        ``spacing_tolerance``: split into uniform blocks, interpolate linearly onto the
        median step, or reject the stack.
    tilt_policy : {"resample", "keep", "reject"}
        What to do with slices sheared by gantry tilt: shift them in plane onto a
        rectilinear grid, keep them as stored (recording the offsets), or reject.
    temporal_policy : {"split", "4d", "first", "reject"}
        What to do when every position contains several frames (time points or cardiac
        phases): one 3-D volume per time point, one 4-D volume whose fourth axis is the
        time point (rejected when the time points do not share one grid), only the first
        time point, or reject.
    min_slices : int
        Fewest slices at distinct positions that make a volume.

    Returns
    -------
    volumes : list of Volume
    rejections : list of SeriesRejection
        Files or stacks that did not become a volume, each with a reason.
    """
    _check_option("gap_policy", gap_policy, GAP_POLICIES)
    _check_option("tilt_policy", tilt_policy, TILT_POLICIES)
    _check_option("temporal_policy", temporal_policy, TEMPORAL_POLICIES)
    if min_slices < 1:
        raise ValueError(f"min_slices={min_slices} is invalid, expected 1 or more")

    by_series, rejections = _read_all(paths)
    volumes: list[Volume] = []
    for series_uid, all_frames in by_series.items():
        frames = _decodable_frames(series_uid, all_frames, rejections)
        stacks, stack_rejections = split_series(frames, temporal_policy=temporal_policy)
        for rejected in stack_rejections:
            rejections.append(
                SeriesRejection(
                    series_uid, rejected.label, rejected.reason, _unique_paths(rejected.frames)
                )
            )
        time_groups: dict[tuple[str, ...], list[tuple[Stack, _StackBuilder]]] = {}
        for stack in stacks:
            builder = _StackBuilder(
                series_uid,
                stack,
                gap_policy=gap_policy,
                tilt_policy=tilt_policy,
                min_slices=min_slices,
            )
            builder.build()
            if temporal_policy == "4d" and stack.time_point is not None:
                group = tuple(stack.group_label_parts)
                time_groups.setdefault(group, []).append((stack, builder))
                continue
            volumes.extend(builder.volumes)
            rejections.extend(builder.rejections)
        for group, built in time_groups.items():
            joined, not_joined = _join_time_points(series_uid, list(group), built)
            volumes.extend(joined)
            rejections.extend(not_joined)
        logger.info(
            "series %s: %d frames, %d volume(s), %d rejection(s) so far",
            series_uid,
            len(frames),
            len(volumes),
            len(rejections),
        )
    return volumes, rejections
