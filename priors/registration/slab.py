"""In-plane start search for thin slabs such as sagittal spine series.

A slab is a volume whose extent along its slice normal is small against its
in-plane extent: a sagittal lumbar T2 of 11 to 15 slices covers 50 to 70 mm across
and 250 to 350 mm in plane. For two such volumes the 3-D optimiser has little to
hold on to across the slices and, from a start one vertebral level off, converges
to a plausible but wrong alignment. This module compares the two volumes on one
plane instead:

1. Both volumes are resampled onto the current's central slice plane (the prior
   onto the parallel plane through its own centre), averaging a slab a few mm
   thick, so that a small left-right offset changes the picture little.
2. A 2-D rigid registration (``Euler2DTransform``, Mattes mutual information,
   masked to where both images have data, multi-resolution) runs from several
   superior-inferior offsets about half a vertebral height apart, plus the
   geometry-centre and identity starts; every candidate is kept with its score.
3. The best 2-D result is lifted to a 3-D rigid transform: the in-plane
   translation and the rotation about the slice normal, with the two planes'
   offset along the normal.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

__all__ = [
    "PlaneFrame",
    "SlabSearch",
    "are_parallel_slabs",
    "contains_si",
    "is_slab",
    "search_in_plane",
    "slab_ratio",
]

logger = logging.getLogger(__name__)

# A volume is a slab when its extent along the slice normal is at most this fraction
# of its smaller in-plane extent. The spine T2 series of the shared data measure 0.14
# (11 x 4.5 mm across 350 mm) and 0.27 (15 x 4.8 mm across 270 mm); a head T1 of 35
# sagittal slices at 4.8 mm over 230 mm measures 0.73 and a CT chest above 1.
MAX_SLAB_RATIO = 0.4

# Two slabs have the same orientation when their slice normals differ by at most
# this angle. Sagittal series planned on two scanners differ by a few degrees.
MAX_NORMAL_ANGLE_DEG = 20.0

# Pixel size of the plane images, mm. Finer than the 4 to 5 mm slice spacing along
# the slab, coarse enough that 14 starts of a 2-D registration take seconds.
PLANE_SPACING_MM = 1.25

# Thickness of the slab averaged into each plane image and the number of samples
# across it. 6 mm is about one slice of either spine series, so a left-right offset
# of a few mm changes the averaged picture gradually.
SLAB_THICKNESS_MM = 6.0
SLAB_SAMPLES = 5

# Multi-resolution schedule of the 2-D registration: shrink factors and Gaussian
# sigmas in mm, coarsest first.
PLANE_SHRINK_FACTORS = (4, 2, 1)
PLANE_SMOOTHING_MM = (4.0, 2.0, 1.0)

# Regular-step gradient descent of the 2-D registration: first step in mm, smallest
# step, iterations per level and the step's shrink on each reversal.
PLANE_LEARNING_RATE_MM = 4.0
PLANE_MIN_STEP_MM = 0.01
PLANE_ITERATIONS = 150
PLANE_RELAXATION = 0.7

# Mattes bins of the 2-D metric. The plane images hold 20,000 to 50,000 pixels in
# the overlap, so 32 x 32 bins keep about 30 samples a cell.
PLANE_HISTOGRAM_BINS = 32

# Fraction of the current's plane that must overlap the prior's data for a candidate
# to be eligible. Below it Mattes can score a sliver of overlap better than the whole.
MIN_PLANE_OVERLAP_FRACTION = 0.5

# Fraction of the fixed plane's pixels sampled by the 2-D metric at each level.
PLANE_SAMPLING_FRACTION = 0.5

# Candidates are scored on the plane images smoothed by this sigma (mm), so that the
# score follows anatomy (discs, vertebral bodies, canal) more than noise, which at
# 0.3 T is strong.
SCORE_SMOOTHING_MM = 1.0

# A candidate overlapping fewer pixels than this is not scored.
MIN_SCORED_PIXELS = 1000


@dataclass(frozen=True)
class PlaneFrame:
    """An orthonormal frame (u, v, n) with its origin, LPS mm.

    ``u`` and ``v`` span the plane (the first two direction columns of the current
    volume), ``n`` is the slice normal.
    """

    origin: np.ndarray
    axes: np.ndarray  # (3, 3): columns u, v, n

    def to_plane(self, points: np.ndarray) -> np.ndarray:
        """Return the (N, 3) frame coordinates (u, v, n) of (N, 3) LPS points."""
        return (np.atleast_2d(points) - self.origin) @ self.axes


@dataclass
class SlabSearch:
    """The outcome of the in-plane search.

    ``transform`` is a 3-D rigid start (current to prior points), ``candidates`` one
    record per 2-D start (JSON-ready), ``best`` the index of the chosen one.
    """

    transform: sitk.AffineTransform
    candidates: list[dict]
    best: int
    parameters: dict
    seconds: float


def _corners_lps(image: sitk.Image) -> np.ndarray:
    size = np.asarray(image.GetSize(), dtype=float) - 1.0
    return np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint(tuple(size * np.array(bits)))
            for bits in np.ndindex(2, 2, 2)
        ]
    )


def _center_lps(image: sitk.Image) -> np.ndarray:
    size = (np.asarray(image.GetSize(), dtype=float) - 1.0) / 2.0
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(tuple(size)))


def _direction(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.GetDirection()).reshape(3, 3)


def slab_ratio(image: sitk.Image) -> float:
    """Return the extent along the slice normal over the smaller in-plane extent.

    The extents count whole voxels (size x spacing) along the grid axes; the third
    grid axis is the slice normal, as for a volume built from one DICOM series.
    """
    extent = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    return float(extent[2] / min(extent[0], extent[1]))


def is_slab(image: sitk.Image) -> bool:
    """Return True when ``image`` is thin along its slice normal (see ``MAX_SLAB_RATIO``)."""
    return image.GetDimension() == 3 and slab_ratio(image) <= MAX_SLAB_RATIO


def normal_angle_deg(current: sitk.Image, prior: sitk.Image) -> float:
    """Return the angle between the slice normals of two volumes, 0 to 90 degrees."""
    cosine = abs(float(_direction(current)[:, 2] @ _direction(prior)[:, 2]))
    return math.degrees(math.acos(min(1.0, cosine)))


def contains_si(image: sitk.Image) -> bool:
    """Return True when S-I lies within ``MAX_NORMAL_ANGLE_DEG`` of the slice plane.

    Only then do S-I start offsets move along the plane, and the vertebral level can
    be found in it; in an axial slab the level lies along the normal.
    """
    normal_si = abs(float(_direction(image)[2, 2]))
    return normal_si <= math.sin(math.radians(MAX_NORMAL_ANGLE_DEG))


def are_parallel_slabs(current: sitk.Image, prior: sitk.Image) -> bool:
    """Return True when both volumes are slabs whose slice normals nearly agree."""
    return (
        is_slab(current)
        and is_slab(prior)
        and normal_angle_deg(current, prior) <= MAX_NORMAL_ANGLE_DEG
    )


def _frames(current: sitk.Image, prior: sitk.Image) -> tuple[PlaneFrame, PlaneFrame]:
    """Return the current's central plane frame and the parallel frame through the prior.

    Both frames share the current's axes. The prior's origin is the current's origin
    moved along the normal to the prior's centre, so that in-plane coordinates of the
    two frames are patient coordinates as stored.
    """
    axes = _direction(current).copy()
    origin = _center_lps(current)
    normal = axes[:, 2]
    prior_origin = origin + normal * float((_center_lps(prior) - origin) @ normal)
    return PlaneFrame(origin, axes), PlaneFrame(prior_origin, axes)


@dataclass(frozen=True)
class _Plane:
    """A slab average on a plane frame: image and data mask in frame coordinates (u, v)."""

    image: sitk.Image
    mask: sitk.Image
    smooth: sitk.Image  # ``image`` smoothed by SCORE_SMOOTHING_MM, for scoring


def _plane(image: sitk.Image, frame: PlaneFrame, spacing_mm: float) -> _Plane:
    """Return the slab average of ``image`` around ``frame`` and where it has data.

    The 2-D images have the identity direction and their origin in frame
    coordinates (u, v), so a 2-D transform between two of them acts on in-plane
    frame coordinates.
    """
    uv = frame.to_plane(_corners_lps(image))[:, :2]
    low, high = uv.min(axis=0), uv.max(axis=0)
    size = [int(math.ceil((high[i] - low[i]) / spacing_mm)) + 1 for i in range(2)]
    step = SLAB_THICKNESS_MM / (SLAB_SAMPLES - 1)
    grid = sitk.Image(size[0], size[1], SLAB_SAMPLES, sitk.sitkFloat32)
    grid.SetSpacing((spacing_mm, spacing_mm, step))
    grid.SetDirection(tuple(frame.axes.ravel()))
    corner = np.array([low[0], low[1], -SLAB_THICKNESS_MM / 2.0])
    grid.SetOrigin(tuple(frame.origin + frame.axes @ corner))

    values = sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0
    )
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    inside = sitk.Resample(ones, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    mean = sitk.GetArrayViewFromImage(values).mean(axis=0)
    # A pixel has data when every sample across the slab lies inside the volume.
    covered = sitk.GetArrayViewFromImage(inside).min(axis=0)

    plane = sitk.GetImageFromArray(mean.astype(np.float32))
    mask = sitk.GetImageFromArray(covered.astype(np.uint8))
    for item in (plane, mask):
        item.SetSpacing((spacing_mm, spacing_mm))
        item.SetOrigin((float(low[0]), float(low[1])))
    return _Plane(plane, mask, sitk.SmoothingRecursiveGaussian(plane, SCORE_SMOOTHING_MM))


def _method(seed: int, threads: int) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=PLANE_HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(PLANE_SAMPLING_FRACTION, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetNumberOfThreads(threads)
    return method


def _register_plane(
    fixed: _Plane, moving: _Plane, start: sitk.Euler2DTransform, *, seed: int, threads: int
) -> tuple[sitk.Euler2DTransform, dict]:
    method = _method(seed, threads)
    method.SetMetricFixedMask(fixed.mask)
    method.SetMetricMovingMask(moving.mask)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=PLANE_LEARNING_RATE_MM,
        minStep=PLANE_MIN_STEP_MM,
        numberOfIterations=PLANE_ITERATIONS,
        relaxationFactor=PLANE_RELAXATION,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(PLANE_SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(PLANE_SMOOTHING_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    transform = sitk.Euler2DTransform(start)
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed.image, moving.image)
    return transform, {
        "iterations": int(method.GetOptimizerIteration()),
        "stop_condition": method.GetOptimizerStopConditionDescription(),
    }


def _score(fixed: _Plane, moving: _Plane, transform: sitk.Transform, *, seed: int) -> dict:
    """Score a 2-D transform on every overlapping pixel: Mattes MI, NCC and overlap.

    Every candidate is scored on the same pixels of the fixed plane (those whose
    image lies in the moving data), so the figures of two candidates compare.
    """
    mapped_mask = sitk.Resample(
        moving.mask, fixed.image, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    fixed_mask = sitk.GetArrayViewFromImage(fixed.mask).astype(bool)
    both = fixed_mask & sitk.GetArrayViewFromImage(mapped_mask).astype(bool)
    overlap = float(both.sum() / max(1, fixed_mask.sum()))
    # None, not NaN, for figures that cannot be computed: the records go to JSON.
    figures = {"plane_overlap_fraction": overlap, "plane_metric": None, "plane_ncc": None}
    if both.sum() < MIN_SCORED_PIXELS:
        return figures
    moved = sitk.Resample(moving.smooth, fixed.image, transform, sitk.sitkLinear, 0.0)
    a = sitk.GetArrayViewFromImage(fixed.smooth)[both].astype(np.float64)
    b = sitk.GetArrayViewFromImage(moved)[both].astype(np.float64)
    method = _method(seed, 1)
    method.SetMetricSamplingStrategy(method.NONE)
    both_image = sitk.GetImageFromArray(both.astype(np.uint8))
    both_image.CopyInformation(fixed.mask)
    method.SetMetricFixedMask(both_image)
    method.SetInitialTransform(transform, inPlace=False)
    figures["plane_metric"] = float(method.MetricEvaluate(fixed.smooth, moving.smooth))
    if a.std() > 0 and b.std() > 0:
        figures["plane_ncc"] = float(np.corrcoef(a, b)[0, 1])
    return figures


def _si_direction_uv(frame: PlaneFrame) -> np.ndarray:
    """Return the unit in-plane direction (u, v) closest to superior (LPS +z)."""
    uv = frame.axes[2, :2].copy()
    norm = float(np.linalg.norm(uv))
    if norm < 1e-6:
        raise ValueError("the slab plane is axial: superior-inferior is its normal")
    return uv / norm


def _lift(
    plane: sitk.Euler2DTransform, fixed_frame: PlaneFrame, moving_frame: PlaneFrame
) -> sitk.AffineTransform:
    """Return the 3-D rigid transform that acts as ``plane`` in plane and keeps the normal.

    A current point p with frame coordinates (u, v, n) maps to the prior point whose
    coordinates in the prior's frame are (plane(u, v), n).
    """
    rotation_2d = np.asarray(plane.GetMatrix()).reshape(2, 2)
    center = np.asarray(plane.GetCenter())
    offset_2d = center - rotation_2d @ center + np.asarray(plane.GetTranslation())
    axes = fixed_frame.axes
    in_frame = np.eye(3)
    in_frame[:2, :2] = rotation_2d
    matrix = axes @ in_frame @ axes.T
    offset = (
        moving_frame.origin
        + axes @ np.array([offset_2d[0], offset_2d[1], 0.0])
        - matrix @ fixed_frame.origin
    )
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(matrix.ravel()))
    transform.SetTranslation(tuple(offset))
    return transform


def _starts(
    current: sitk.Image,
    prior: sitk.Image,
    frame: PlaneFrame,
    offsets_mm: tuple[float, ...],
    center_uv: np.ndarray,
) -> list[tuple[str, float, sitk.Euler2DTransform]]:
    """Return (initialisation, S-I offset, 2-D start) for each start of the search."""
    geometry_uv = (frame.axes.T @ (_center_lps(prior) - _center_lps(current)))[:2]
    superior = _si_direction_uv(frame)
    starts = []
    for offset in offsets_mm:
        start = sitk.Euler2DTransform()
        start.SetCenter(tuple(center_uv))
        start.SetTranslation(tuple(geometry_uv + offset * superior))
        starts.append(("geometry", float(offset), start))
    identity = sitk.Euler2DTransform()
    identity.SetCenter(tuple(center_uv))
    starts.append(("identity", 0.0, identity))
    return starts


def search_in_plane(
    current: sitk.Image,
    prior: sitk.Image,
    *,
    offsets_mm: tuple[float, ...],
    seed: int,
    threads: int = 1,
) -> SlabSearch:
    """Find a rigid start for two parallel slabs by 2-D registrations on one plane.

    Parameters
    ----------
    current, prior
        The fixed and moving volumes, LPS mm; the plane is the current's central
        slice plane.
    offsets_mm
        Superior-inferior offsets (mm) added to the geometry-centre start; the
        identity start (patient coordinates as stored) is tried as well.
    seed
        Seed of the metric's random sampling.
    threads
        ITK threads of each 2-D registration.

    Returns
    -------
    SlabSearch
        The best candidate lifted to 3-D and every candidate's record. The best is
        the lowest Mattes score among candidates that overlap at least
        ``MIN_PLANE_OVERLAP_FRACTION`` of the current's plane; when none does, the
        one with the largest overlap.
    """
    began = time.perf_counter()
    fixed_frame, moving_frame = _frames(current, prior)
    fixed = _plane(current, fixed_frame, PLANE_SPACING_MM)
    moving = _plane(prior, moving_frame, PLANE_SPACING_MM)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(fixed.mask)
    center_uv = np.asarray(stats.GetCentroid(1))
    superior = _si_direction_uv(fixed_frame)

    candidates = []
    for mode, offset, start in _starts(current, prior, fixed_frame, offsets_mm, center_uv):
        clock = time.perf_counter()
        record: dict = {
            "stage": "plane",
            "initialisation": mode,
            "offset_mm": offset,
            "start_parameters": list(start.GetParameters()),
        }
        try:
            transform, info = _register_plane(fixed, moving, start, seed=seed, threads=threads)
        except RuntimeError as err:
            record |= {"status": "failed", "error": " ".join(str(err).split())[-200:]}
        else:
            shift = np.asarray(transform.TransformPoint(tuple(center_uv))) - center_uv
            record |= {
                "status": "converged",
                "parameters": list(transform.GetParameters()),
                "rotation_deg": math.degrees(transform.GetAngle()),
                "si_shift_mm": float(shift @ superior),
                **info,
                **_score(fixed, moving, transform, seed=seed),
            }
            record["_transform"] = transform
        record["seconds"] = time.perf_counter() - clock
        candidates.append(record)

    best = _choose(candidates)
    if best is None:
        raise ValueError("the in-plane search failed from every start")
    lifted = _lift(candidates[best]["_transform"], fixed_frame, moving_frame)
    for record in candidates:
        record.pop("_transform", None)
    parameters = {
        "plane_spacing_mm": PLANE_SPACING_MM,
        "slab_thickness_mm": SLAB_THICKNESS_MM,
        "slab_samples": SLAB_SAMPLES,
        "shrink_factors": list(PLANE_SHRINK_FACTORS),
        "smoothing_sigmas_mm": list(PLANE_SMOOTHING_MM),
        "learning_rate_mm": PLANE_LEARNING_RATE_MM,
        "iterations": PLANE_ITERATIONS,
        "histogram_bins": PLANE_HISTOGRAM_BINS,
        "sampling_fraction": PLANE_SAMPLING_FRACTION,
        "min_plane_overlap_fraction": MIN_PLANE_OVERLAP_FRACTION,
        "score_smoothing_mm": SCORE_SMOOTHING_MM,
        "plane_size": list(fixed.image.GetSize()),
        "si_offsets_mm": list(offsets_mm),
    }
    return SlabSearch(lifted, candidates, best, parameters, time.perf_counter() - began)


def _choose(candidates: list[dict]) -> int | None:
    scored = [
        (i, c)
        for i, c in enumerate(candidates)
        if c["status"] == "converged" and c["plane_metric"] is not None
    ]
    if not scored:
        return None
    eligible = [
        (i, c) for i, c in scored if c["plane_overlap_fraction"] >= MIN_PLANE_OVERLAP_FRACTION
    ]
    if eligible:
        return min(eligible, key=lambda item: item[1]["plane_metric"])[0]
    return max(scored, key=lambda item: item[1]["plane_overlap_fraction"])[0]
