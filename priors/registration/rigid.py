"""Staged registration of a prior onto a current volume: starts, rigid, affine, checks.

The pipeline per pair:

1. body masks of both volumes (``masks``), used as metric masks;
2. one start per initialisation and superior-inferior offset;
3. a rigid (Euler 3-D) multi-resolution optimisation from every start, keeping the
   best by the metric and recording all of them;
4. an optional affine stage from the best rigid result;
5. an optional deformable (B-spline) stage after that (``deformable``);
6. quality checks (overlap, NCC, MI, Jacobian determinant) and a verdict;
7. optionally, the reverse registration and its inverse consistency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Iterator

import numpy as np
import SimpleITK as sitk

from priors.config import RegistrationSettings
from priors.registration import _levels, deformable, slab
from priors.registration.masks import body_mask, metric_mask
from priors.registration.presets import RegistrationOptions, preset
from priors.registration.quality import (
    body_displacement_mm,
    jacobian_determinant,
    judge,
    level_shift_ncc,
    overlap_fraction,
    similarity_in_overlap,
)
from priors.registration.result import RegistrationResult, transform_matrix_lps

__all__ = ["RegistrationError", "inverse_consistency_mm", "register"]

logger = logging.getLogger(__name__)

# Inverse consistency above this (95th percentile over the body, mm) fails the pair,
# because forward and reverse registrations then disagree by about a CT voxel or more.
MAX_INVERSE_CONSISTENCY_MM = 1.0

# A start whose bodies overlap less than this is not optimised: ITK's correlation
# metric then only warns and returns a meaningless value.
MIN_START_OVERLAP_FRACTION = 0.01

# The offset along the slice normal after the in-plane search is chosen among steps
# of 2 mm up to 12 mm either way: about half to two and a half slices of the spine
# series, and more than the few mm by which their centres disagree left-right.
NORMAL_SCAN_STEP_MM = 2.0
NORMAL_SCAN_RANGE_MM = 12.0

# Tolerance when reading a rotation matrix back from a caller's transform. The
# matrix is rebuilt from transformed points in double precision, so rounding stays
# far below it, while a scaled or sheared matrix exceeds it.
ORTHONORMAL_TOLERANCE = 1e-6

# Points of the body at which inverse consistency is measured when a transform is not
# affine and each point goes through ITK one at a time: enough for a stable 95th
# percentile, and about a second of work.
MAX_INVERSE_CONSISTENCY_POINTS = 20_000


@dataclasses.dataclass(frozen=True)
class _Masks:
    """Body masks of both volumes, and the masks handed to the ITK metric."""

    current: sitk.Image
    prior: sitk.Image
    metric_fixed: sitk.Image
    metric_moving: sitk.Image | None

    @classmethod
    def build(cls, current: sitk.Image, prior: sitk.Image, options: RegistrationOptions) -> _Masks:
        bodies = (
            body_mask(current, method=options.body_mask),
            body_mask(prior, method=options.prior_body_mask),
        )
        moving = metric_mask(bodies[1]) if options.use_prior_mask else None
        return cls(*bodies, metric_mask(bodies[0]), moving)


class RegistrationError(ValueError):
    """Input volumes that cannot be registered (not 3-D, empty, no body found)."""


@contextlib.contextmanager
def _itk_threads(threads: int) -> Iterator[None]:
    # Filters run through the procedural API use the global default thread count.
    # NOTE: the global is process-wide, so two registrations in threads of one
    # process share it; Ray runs each registration in its own worker process.
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _check_volume(image: sitk.Image, role: str) -> None:
    if image.GetDimension() != 3:
        raise RegistrationError(f"{role} volume has {image.GetDimension()} dimensions, expected 3")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise RegistrationError(
            f"{role} volume has {image.GetNumberOfComponentsPerPixel()} components per "
            "voxel, expected 1 (a scalar volume)"
        )


def _centroid(mask: sitk.Image, role: str) -> tuple[float, float, float]:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    if not stats.HasLabel(1):
        raise RegistrationError(
            f"{role} volume: no body found above the mask threshold. "
            "Check the modality pair and the intensities"
        )
    return stats.GetCentroid(1)


def _euler_from(transform: sitk.Transform, center: tuple[float, ...]) -> sitk.Euler3DTransform:
    """Return ``transform`` as an Euler 3-D transform about ``center``.

    Raises
    ------
    RegistrationError
        When the transform is not rigid.
    """
    matrix = transform_matrix_lps(transform)
    rotation, offset = matrix[:3, :3], matrix[:3, 3]
    c = np.asarray(center)
    euler = sitk.Euler3DTransform()
    euler.SetCenter(tuple(c))
    try:
        euler.SetMatrix(tuple(rotation.ravel()), ORTHONORMAL_TOLERANCE)
    except RuntimeError as err:
        raise RegistrationError(
            f"initial transform {transform.GetName()} is not rigid: its matrix is not "
            f"orthonormal within {ORTHONORMAL_TOLERANCE}"
        ) from err
    euler.SetTranslation(tuple(offset - c + rotation @ c))
    return euler


def _start(
    mode: str,
    current: sitk.Image,
    prior: sitk.Image,
    masks: _Masks,
    center: tuple[float, ...],
) -> sitk.Euler3DTransform:
    if mode == "moments":
        fixed = sitk.Cast(masks.current, sitk.sitkFloat32)
        moving = sitk.Cast(masks.prior, sitk.sitkFloat32)
        initializer = sitk.CenteredTransformInitializerFilter.MOMENTS
    elif mode == "geometry":
        fixed, moving = current, prior
        initializer = sitk.CenteredTransformInitializerFilter.GEOMETRY
    elif mode == "identity":
        return _euler_from(sitk.Transform(), center)
    else:
        raise ValueError(
            f"initialisation {mode!r} is not supported, "
            "expected 'moments', 'geometry' or 'identity'"
        )
    start = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), initializer)
    return sitk.Euler3DTransform(start)


def _shift_si(transform: sitk.Euler3DTransform, offset_mm: float) -> sitk.Euler3DTransform:
    # LPS: the third axis runs inferior to superior.
    shifted = sitk.Euler3DTransform(transform)
    tx, ty, tz = shifted.GetTranslation()
    shifted.SetTranslation((tx, ty, tz + offset_mm))
    return shifted


def _si_position(transform: sitk.Transform, point: tuple[float, ...]) -> float:
    return float(transform.TransformPoint(point)[2])


def _find_ambiguity(candidates: list[dict], best: dict, options: RegistrationOptions) -> str:
    """Describe a converged start about one vertebral level from the best that scores as well."""
    low, high = options.vertebral_level_mm
    for other in candidates:
        if other is best or other["status"] != "converged":
            continue
        distance = abs(other["si_position_mm"] - best["si_position_mm"])
        margin = abs(other["metric"] - best["metric"])
        if low <= distance <= high and margin <= options.ambiguity_margin * abs(best["metric"]):
            return (
                f"start at {other['offset_mm']:+.0f} mm ({other['initialisation']}) ended "
                f"{distance:.1f} mm along S-I from the best with a metric within "
                f"{margin / abs(best['metric']):.1%}"
            )
    return ""


def _versions() -> dict[str, str]:
    return {
        "SimpleITK": sitk.Version.VersionString(),
        "ITK": sitk.Version.ITKVersionString(),
        "numpy": np.__version__,
    }


def _body_corners(mask: sitk.Image) -> np.ndarray:
    """Return the 8 corners of the bounding box of a body mask, (8, 3) LPS mm."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    box = stats.GetBoundingBox(1)  # (x, y, z) start index, then size
    low, high = np.asarray(box[:3]), np.asarray(box[:3]) + np.asarray(box[3:]) - 1
    corners = [
        (x, y, z) for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])
    ]
    return np.array([mask.TransformIndexToPhysicalPoint([int(v) for v in c]) for c in corners])


def _distance_mm(a: sitk.Transform, b: sitk.Transform, points: np.ndarray) -> float:
    """Return max |a(p) - b(p)| over ``points``, mm."""
    return max(
        float(np.linalg.norm(np.subtract(a.TransformPoint(tuple(p)), b.TransformPoint(tuple(p)))))
        for p in points
    )


def _optimise_start(
    pyramids: tuple[list, list],
    start: sitk.Euler3DTransform,
    options: RegistrationOptions,
    masks: _Masks,
    kept: list[dict],
    corners: np.ndarray,
) -> tuple[sitk.Transform, dict, dict | None]:
    """Optimise one start; stop after the coarsest level when it joins a kept start.

    Returns the transform, the optimiser's figures (with ``coarse_transform``, the
    result of the coarsest level) and the kept candidate it joined, ``None`` when it
    ran every level. Splitting the levels gives the same result as one call.
    """
    levels = len(pyramids[0])
    optimise = functools.partial(
        _levels.optimise,
        *pyramids,
        options=options,
        fixed_mask=masks.metric_fixed,
        moving_mask=masks.metric_moving,
    )
    transform, info = optimise(start=start, levels=range(1))
    info["coarse_transform"] = transform
    tolerance = options.redundant_start_voxels * min(pyramids[0][0].image.GetSpacing())
    for other in kept:
        if _distance_mm(transform, other["coarse_transform"], corners) <= tolerance:
            return transform, info, other
    if levels > 1:
        transform, fine = optimise(start=transform, levels=range(1, levels))
        for key in ("iterations_per_level", "stop_conditions", "learning_rates"):
            info[key] += fine[key]
        info["metric"] = fine["metric"]
    return transform, info, None


def _run_starts(
    pyramids: tuple[list, list],
    starts: list[tuple[str, float, sitk.Euler3DTransform]],
    options: RegistrationOptions,
    masks: _Masks,
    center: tuple[float, ...],
) -> list[dict]:
    candidates: list[dict] = []
    corners = _body_corners(masks.current)
    for mode, offset, start in starts:
        began = time.perf_counter()
        record = {
            "initialisation": mode,
            "offset_mm": offset,
            "start_parameters": list(start.GetParameters()),
            "start_transform": start,
        }
        start_overlap = overlap_fraction(masks.current, masks.prior, start)
        record["overlap_fraction_at_start"] = start_overlap
        try:
            if start_overlap < MIN_START_OVERLAP_FRACTION:
                raise _levels.OverlapError(f"the bodies overlap {start_overlap:.1%} at this start")
            kept = [c for c in candidates if c["status"] == "converged"]
            transform, info, joined = _optimise_start(
                pyramids, start, options, masks, kept, corners
            )
        except _levels.OverlapError as err:
            record |= {"status": "failed", "error": str(err), "transform": start}
            logger.info("registration start %s %+.0f mm failed: %s", mode, offset, err)
        else:
            if joined is not None:
                # Record it, but leave it out of the choice and the ambiguity check.
                record |= {
                    "status": "redundant",
                    "joined": candidates.index(joined),
                    "metric_coarsest_level": info.pop("metric"),
                    "parameters": list(transform.GetParameters()),
                    "transform": transform,
                    **info,
                }
                record["seconds"] = time.perf_counter() - began
                candidates.append(record)
                logger.info(
                    "registration start %s %+.0f mm joined start %d after the coarsest level",
                    mode,
                    offset,
                    record["joined"],
                )
                continue
            record |= {
                "status": "converged",
                "metric": info.pop("metric"),
                "parameters": list(transform.GetParameters()),
                "si_position_mm": _si_position(transform, center),
                "transform": transform,
                **info,
            }
        record["seconds"] = time.perf_counter() - began
        candidates.append(record)
    return candidates


def _affine_stage(
    pyramids: tuple[list, list],
    rigid: sitk.Euler3DTransform,
    options: RegistrationOptions,
    masks: _Masks,
) -> tuple[sitk.Transform, dict]:
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    return _levels.optimise(
        *pyramids,
        affine,
        options,
        fixed_mask=masks.metric_fixed,
        moving_mask=masks.metric_moving,
    )


def register(
    current: sitk.Image,
    prior: sitk.Image,
    *,
    modality_pair: str = "CT-CT",
    settings: RegistrationSettings | None = None,
    options: RegistrationOptions | None = None,
    initial_transform: sitk.Transform | None = None,
    current_modality: str | None = None,
) -> RegistrationResult:
    """Register a prior volume onto the current volume.

    Parameters
    ----------
    current
        The fixed volume, LPS mm (as read from DICOM by SimpleITK).
    prior
        The moving volume, LPS mm; any grid, field of view and pixel type.
    modality_pair
        "CT-CT", "MR-MR" or "CT-MR"; chooses the defaults (see ``preset``).
    settings
        User settings that ``preset`` builds the options from.
    options
        Complete options; when given, ``modality_pair`` and ``settings`` are ignored.
    initial_transform
        A rigid transform (current to prior points) to start from instead of the
        initialisations in the options; the S-I offsets still apply to it.
    current_modality
        For CT-MR, the modality of ``current``.

    Returns
    -------
    RegistrationResult
        With ``verdict`` "fail" and the overlap in ``reason`` when the volumes overlap
        too little, whether ITK raised (no start converged) or not.

    Raises
    ------
    RegistrationError
        When a volume is not a 3-D scalar image, has no body, or the initial
        transform is not rigid.
    """
    began = time.perf_counter()
    options = options or preset(modality_pair, settings, current_modality=current_modality)
    if options.affine:
        # With an affine stage every finest level runs down to options.min_step,
        # because the affine fit depends on where the rigid stage stopped. On the
        # tests' scaled phantom (5 mm voxels) it ended at TRE p95 1.3 mm this way.
        # It ended at 2.4 mm when the rigid stage stopped at 0.02 voxel, and at
        # 2.7 mm when its own finest level stopped there too.
        options = dataclasses.replace(options, fine_min_step_voxels=0.0)
    _check_volume(current, "current")
    _check_volume(prior, "prior")
    timings: dict[str, float] = {}

    with _itk_threads(options.threads):
        stage = time.perf_counter()
        masks = _Masks.build(current, prior, options)
        center = _centroid(masks.current, "current")
        _centroid(masks.prior, "prior")
        timings["masks"] = time.perf_counter() - stage

        stage = time.perf_counter()
        pyramids = (_levels.build_pyramid(current, options), _levels.build_pyramid(prior, options))
        timings["pyramids"] = time.perf_counter() - stage

        slab_decision = _slab_decision(current, prior, options, initial_transform)
        if slab_decision["run"]:
            candidates, ambiguity, slab_info = _slab_stage(
                current, prior, pyramids, options, masks, center, timings
            )
            result = _finish(
                current,
                prior,
                pyramids,
                candidates,
                options,
                masks,
                timings,
                ambiguity=ambiguity,
            )
            result.parameters["slab_search"] = slab_decision | slab_info
            timings["total"] = time.perf_counter() - began
            _log_result(options, result, timings, candidates)
            return result

        stage = time.perf_counter()
        if initial_transform is not None:
            bases = [("given", _euler_from(initial_transform, center))]
        else:
            bases = [
                (mode, _start(mode, current, prior, masks, center))
                for mode in options.initialisations
            ]
        starts = [
            (mode, float(offset), _shift_si(base, offset))
            for mode, base in bases
            for offset in options.si_start_offsets_mm
        ]
        candidates = _run_starts(pyramids, starts, options, masks, center)
        timings["rigid"] = time.perf_counter() - stage

        result = _finish(current, prior, pyramids, candidates, options, masks, timings)
        result.parameters["slab_search"] = slab_decision
        timings["total"] = time.perf_counter() - began
    _log_result(options, result, timings, candidates)
    return result


def _log_result(
    options: RegistrationOptions, result: RegistrationResult, timings: dict, candidates: list
) -> None:
    logger.info(
        "registered %s pair: %s%s in %.1f s over %d starts",
        options.modality_pair,
        result.verdict,
        f" ({result.reason})" if result.reason else "",
        timings["total"],
        len(candidates),
    )


def _slab_decision(
    current: sitk.Image,
    prior: sitk.Image,
    options: RegistrationOptions,
    initial_transform: sitk.Transform | None,
) -> dict:
    """Decide whether the in-plane start search runs, and record why."""
    decision: dict = {
        "mode": options.slab_search,
        "current_slab_ratio": slab.slab_ratio(current),
        "prior_slab_ratio": slab.slab_ratio(prior),
        "normal_angle_deg": slab.normal_angle_deg(current, prior),
        "max_slab_ratio": slab.MAX_SLAB_RATIO,
        "max_normal_angle_deg": slab.MAX_NORMAL_ANGLE_DEG,
    }
    if options.slab_search not in {"auto", "on", "off"}:
        raise ValueError(
            f"slab_search {options.slab_search!r} is not supported, expected 'auto', 'on' or 'off'"
        )
    if initial_transform is not None:
        return decision | {"run": False, "why": "an initial transform was given"}
    if options.slab_search == "off":
        return decision | {"run": False, "why": "switched off"}
    if options.slab_search == "on":
        return decision | {"run": True, "why": "switched on"}
    if not slab.contains_si(current):
        return decision | {"run": False, "why": "S-I runs along the slice normal (axial slab)"}
    if slab.are_parallel_slabs(current, prior):
        return decision | {"run": True, "why": "both volumes are slabs of the same orientation"}
    return decision | {"run": False, "why": "not two slabs of the same orientation"}


def _slab_stage(
    current: sitk.Image,
    prior: sitk.Image,
    pyramids: tuple[list, list],
    options: RegistrationOptions,
    masks: _Masks,
    center: tuple[float, ...],
    timings: dict[str, float],
) -> tuple[list[dict], str, dict]:
    """Search the start on the central plane, then refine it in 3-D at the finest levels.

    Returns the candidates (plane ones, then the 3-D refinement), the ambiguity
    description (empty when none) and what the stage decided.
    """
    stage = time.perf_counter()
    search = slab.search_in_plane(
        current,
        prior,
        offsets_mm=options.slab_si_offsets_mm,
        seed=options.seed,
        threads=options.threads,
    )
    timings["plane_search"] = time.perf_counter() - stage
    ambiguity = _plane_ambiguity(search.candidates, search.best, options)

    stage = time.perf_counter()
    start, normal_scan = _scan_normal(
        _euler_from(search.transform, center), current, pyramids, options, masks
    )
    levels = max(1, min(options.slab_refine_levels, len(options.shrink_factors)))
    refine_options = dataclasses.replace(
        options,
        shrink_factors=options.shrink_factors[-levels:],
        smoothing_sigmas_mm=options.smoothing_sigmas_mm[-levels:],
        learning_rate=options.slab_refine_learning_rate,
        iterations=options.slab_refine_iterations,
    )
    refine_pyramids = (pyramids[0][-levels:], pyramids[1][-levels:])
    record = _run_starts(refine_pyramids, [("plane", 0.0, start)], refine_options, masks, center)[0]
    record["stage"] = "refine"
    info: dict = {"plane": search.parameters, "plane_best": search.best, "normal_scan": normal_scan}
    info["refine"] = {
        "levels": levels,
        "learning_rate_voxels": options.slab_refine_learning_rate,
        "iterations": options.slab_refine_iterations,
        "max_drift_mm": options.slab_max_drift_mm,
        "max_drift_deg": options.slab_max_drift_deg,
    }
    if record["status"] == "converged":
        drift_mm, drift_deg = _drift(start, record["transform"], center)
        info["refine"] |= {"drift_mm": drift_mm, "drift_deg": drift_deg}
        start_metric = _levels.evaluate(
            pyramids[0][-1].image,
            pyramids[1][-1].image,
            start,
            options,
            fixed_mask=masks.metric_fixed,
            moving_mask=masks.metric_moving,
        )
        info["refine"] |= {"metric_at_start": start_metric, "metric_refined": record["metric"]}
        too_far = drift_mm > options.slab_max_drift_mm or drift_deg > options.slab_max_drift_deg
        if too_far or record["metric"] > start_metric:
            # Keep the start: the refinement walked off along the slab or scored worse.
            why = "drift above the limit" if too_far else "refined metric worse"
            info["refine"]["kept"] = f"start ({why})"
            record["transform"] = start
            record["parameters"] = list(start.GetParameters())
            record["si_position_mm"] = _si_position(start, center)
            record["metric"] = _levels.evaluate(
                pyramids[0][-1].image,
                pyramids[1][-1].image,
                start,
                options,
                fixed_mask=masks.metric_fixed,
                moving_mask=masks.metric_moving,
            )
            logger.info(
                "3-D refinement moved %.1f mm / %.1f deg, metric %.4f against %.4f at the "
                "start; kept the start (%s)",
                drift_mm,
                drift_deg,
                record["metric"],
                start_metric,
                why,
            )
        else:
            info["refine"]["kept"] = "refined"
    timings["rigid"] = time.perf_counter() - stage
    return [*search.candidates, record], ambiguity, info


def _scan_normal(
    start: sitk.Euler3DTransform,
    current: sitk.Image,
    pyramids: tuple[list, list],
    options: RegistrationOptions,
    masks: _Masks,
) -> tuple[sitk.Euler3DTransform, dict]:
    """Move ``start`` along the current's slice normal to where the 3-D metric is best.

    The in-plane search cannot see an offset along the normal (left-right for a
    sagittal series); it centres the two slabs on each other. This scan tries
    offsets of ``NORMAL_SCAN_STEP_MM`` up to ``NORMAL_SCAN_RANGE_MM`` either way.
    """
    normal = np.asarray(current.GetDirection()).reshape(3, 3)[:, 2]
    steps = int(round(NORMAL_SCAN_RANGE_MM / NORMAL_SCAN_STEP_MM))
    scores = {}
    for step in range(-steps, steps + 1):
        offset = step * NORMAL_SCAN_STEP_MM
        moved = sitk.Euler3DTransform(start)
        moved.SetTranslation(tuple(np.add(start.GetTranslation(), normal * offset)))
        try:
            scores[offset] = _levels.evaluate(
                pyramids[0][-1].image,
                pyramids[1][-1].image,
                moved,
                options,
                fixed_mask=masks.metric_fixed,
                moving_mask=masks.metric_moving,
            )
        except _levels.OverlapError:
            continue
    best = min(scores, key=scores.get) if scores else 0.0
    chosen = sitk.Euler3DTransform(start)
    chosen.SetTranslation(tuple(np.add(start.GetTranslation(), normal * best)))
    return chosen, {
        "offset_mm": best,
        "metric_per_offset": {f"{k:+.0f}": v for k, v in scores.items()},
    }


def _drift(
    start: sitk.Euler3DTransform, end: sitk.Euler3DTransform, center: tuple[float, ...]
) -> tuple[float, float]:
    """Return how far ``end`` moves the point ``center`` from ``start`` (mm) and turns (deg)."""
    moved = np.subtract(end.TransformPoint(center), start.TransformPoint(center))
    relative = (
        np.asarray(end.GetMatrix()).reshape(3, 3) @ np.asarray(start.GetMatrix()).reshape(3, 3).T
    )
    cosine = np.clip((np.trace(relative) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.linalg.norm(moved)), float(np.degrees(np.arccos(cosine)))


def _plane_ambiguity(candidates: list[dict], best: int, options: RegistrationOptions) -> str:
    """Describe a plane candidate about one level from the best that scores as well."""
    low, high = options.vertebral_level_mm
    chosen = candidates[best]
    for other in candidates:
        if other is chosen or other["status"] != "converged" or other["plane_metric"] is None:
            continue
        if other["plane_overlap_fraction"] < slab.MIN_PLANE_OVERLAP_FRACTION:
            continue
        distance = abs(other["si_shift_mm"] - chosen["si_shift_mm"])
        margin = abs(other["plane_metric"] - chosen["plane_metric"])
        ncc_gap = (chosen["plane_ncc"] or 0.0) - (other["plane_ncc"] or 0.0)
        if (
            low <= distance <= high
            and margin <= options.ambiguity_margin * abs(chosen["plane_metric"])
            and ncc_gap <= options.slab_ambiguity_ncc
        ):
            return (
                f"plane start at {other['offset_mm']:+.1f} mm ({other['initialisation']}) ended "
                f"{distance:.1f} mm along S-I from the best with a Mattes score within "
                f"{margin / abs(chosen['plane_metric']):.1%} and a plane NCC gap of "
                f"{ncc_gap:.3f}"
            )
    return ""


def _finish(
    current: sitk.Image,
    prior: sitk.Image,
    pyramids: tuple[list, list],
    candidates: list[dict],
    options: RegistrationOptions,
    masks: _Masks,
    timings: dict[str, float],
    *,
    ambiguity: str | None = None,
) -> RegistrationResult:
    # Plane candidates of the slab search carry 2-D scores, not the 3-D metric.
    converged = [c for c in candidates if c["status"] == "converged" and c.get("stage") != "plane"]
    parameters = _parameters(options, pyramids)
    metrics: dict = {"metric": options.metric, "stages": ["rigid"]}
    finest = (pyramids[0][-1].image, pyramids[1][-1].image)

    if not converged:
        first = max(
            (c for c in candidates if "overlap_fraction_at_start" in c),
            key=lambda c: c["overlap_fraction_at_start"],
        )
        start, overlap = first["transform"], first["overlap_fraction_at_start"]
        metrics |= {"overlap_fraction": overlap, "overlap_fraction_at_start": overlap}
        reason = (
            f"registration failed from every start: the bodies overlap at most {overlap:.1%} "
            f"of the smaller body (minimum {options.min_overlap_fraction:.0%}); "
            f"{first['error']}"
        )
        return _result(start, "fail", reason, metrics, candidates, False, parameters, timings)

    best = min(converged, key=lambda c: c["metric"])
    transform = best["transform"]
    start_transform = best["start_transform"]
    metrics["metric_before"] = _levels.evaluate(
        *finest,
        start_transform,
        options,
        fixed_mask=masks.metric_fixed,
        moving_mask=masks.metric_moving,
    )
    metrics["overlap_fraction_at_start"] = best["overlap_fraction_at_start"]
    metrics |= {
        "iterations": int(sum(best["iterations_per_level"])),
        "iterations_per_level": best["iterations_per_level"],
        "stop_condition": best["stop_conditions"][-1],
    }

    if options.affine:
        stage = time.perf_counter()
        try:
            affine, info = _affine_stage(pyramids, transform, options, masks)
            metrics["affine_iterations_per_level"] = info["iterations_per_level"]
            # An affine fit that ends worse than the rigid one it started from (for
            # example pulled by a structure that moved between the scans) is dropped.
            rigid_metric, affine_metric = (
                _levels.evaluate(*finest, candidate, options, fixed_mask=masks.metric_fixed,
                                 moving_mask=masks.metric_moving)
                for candidate in (transform, affine))
            if affine_metric < rigid_metric:
                transform = affine
                metrics["stages"].append("affine")
            else:
                metrics["affine_error"] = (
                    f"affine metric {affine_metric:.4f} is not better than the rigid "
                    f"{rigid_metric:.4f}; the rigid result is kept")
                logger.warning("affine stage made the metric worse (%.4f against %.4f), "
                               "keeping the rigid result", affine_metric, rigid_metric)
        except _levels.OverlapError as err:
            metrics["affine_error"] = str(err)
            logger.warning("affine stage failed, keeping the rigid result: %s", err)
        timings["affine"] = time.perf_counter() - stage

    # The 4 x 4 matrix describes the linear stages; a B-spline adds to it.
    linear = transform
    if options.bspline:
        stage = time.perf_counter()
        try:
            transform, info = deformable.bspline_stage(
                *pyramids,
                linear,
                options,
                fixed_mask=masks.metric_fixed,
                moving_mask=masks.metric_moving,
            )
            metrics["stages"].append("bspline")
            metrics["bspline_mesh_size"] = info["mesh_size"]
            metrics["bspline_iterations_per_level"] = info["iterations_per_level"]
            metrics["bspline_stop_condition"] = info["stop_conditions"][-1]
        except _levels.OverlapError as err:
            metrics["bspline_error"] = str(err)
            logger.warning("B-spline stage failed, keeping the linear result: %s", err)
        timings["bspline"] = time.perf_counter() - stage

    stage = time.perf_counter()
    metrics["metric_after"] = _levels.evaluate(
        *finest, transform, options, fixed_mask=masks.metric_fixed, moving_mask=masks.metric_moving
    )
    # The figures below see a B-spline through its sampled field, as resampling does.
    sampled = deformable.sampled_transform(transform, current)
    metrics["overlap_fraction"] = overlap_fraction(masks.current, masks.prior, sampled)
    metrics |= similarity_in_overlap(current, prior, masks.current, masks.prior, sampled)
    metrics |= body_displacement_mm(sampled, masks.current)
    if "bspline" in metrics["stages"]:
        metrics |= jacobian_determinant(sampled, masks.current, masks.prior)
    if ambiguity is None:
        ambiguity = _find_ambiguity(converged, best, options)
    else:
        metrics |= level_shift_ncc(
            current, prior, masks.current, masks.prior, sampled, options.vertebral_level_mm
        )
    if ambiguity:
        metrics["ambiguity"] = ambiguity
    timings["quality"] = time.perf_counter() - stage

    if options.inverse_consistency:
        stage = time.perf_counter()
        metrics |= _inverse_consistency(current, prior, transform, masks.current, options)
        timings["inverse_consistency"] = time.perf_counter() - stage

    verdict, reason = judge(metrics, options)
    if options.inverse_consistency:
        verdict, reason = _judge_inverse(metrics, verdict, reason)
    return _result(
        transform,
        verdict,
        reason,
        metrics,
        candidates,
        bool(ambiguity),
        parameters,
        timings,
        linear=linear,
    )


def _inverse_consistency(
    current: sitk.Image,
    prior: sitk.Image,
    forward: sitk.Transform,
    current_mask: sitk.Image,
    options: RegistrationOptions,
) -> dict:
    reverse_options = dataclasses.replace(
        options,
        body_mask=options.prior_body_mask,
        prior_body_mask=options.body_mask,
        inverse_consistency=False,
    )
    reverse = register(prior, current, options=reverse_options)
    errors = inverse_consistency_mm(forward, reverse.transform, current_mask)
    return {
        "inverse_consistency_mm_p95": float(np.percentile(errors, 95)),
        "inverse_consistency_mm_max": float(errors.max()),
        "reverse_verdict": reverse.verdict,
        "reverse_parameters": list(reverse.transform.GetParameters())
        if reverse.transform.IsLinear()
        else None,
        "reverse_matrix_lps": reverse.matrix_lps,
    }


def _judge_inverse(metrics: dict, verdict: str, reason: str) -> tuple[str, str]:
    p95 = metrics["inverse_consistency_mm_p95"]
    if p95 <= MAX_INVERSE_CONSISTENCY_MM:
        return verdict, reason
    extra = (
        f"inverse consistency p95 is {p95:.2f} mm, above the maximum "
        f"{MAX_INVERSE_CONSISTENCY_MM} mm"
    )
    return "fail", f"{reason}; {extra}" if reason else extra


def inverse_consistency_mm(
    forward: sitk.Transform, reverse: sitk.Transform, mask: sitk.Image
) -> np.ndarray:
    """Return |reverse(forward(p)) - p| in mm at voxel centres p of ``mask``.

    ``forward`` maps current to prior points and ``reverse`` prior to current points.
    When both are affine every voxel of the mask is used. Otherwise (a B-spline
    stage) each point goes through ITK one at a time, so an even subset of at most
    ``MAX_INVERSE_CONSISTENCY_POINTS`` voxels is used.
    """
    indices = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1]
    origin = np.asarray(mask.GetOrigin())
    direction = np.asarray(mask.GetDirection()).reshape(3, 3)
    points = origin + (indices * np.asarray(mask.GetSpacing())) @ direction.T
    if forward.IsLinear() and reverse.IsLinear():
        round_trip = transform_matrix_lps(reverse) @ transform_matrix_lps(forward)
        mapped = points @ round_trip[:3, :3].T + round_trip[:3, 3]
    else:
        step = max(1, len(points) // MAX_INVERSE_CONSISTENCY_POINTS)
        points = points[::step]
        mapped = np.array(
            [reverse.TransformPoint(forward.TransformPoint(tuple(p))) for p in points]
        ).reshape(-1, 3)
    return np.linalg.norm(mapped - points, axis=1)


def _parameters(options: RegistrationOptions, pyramids: tuple[list, list]) -> dict:
    fixed_levels, moving_levels = pyramids
    stages = ["rigid"] + ["affine"] * options.affine + ["bspline"] * options.bspline
    return {
        **options.as_dict(),
        "stages": stages,
        "transform_class": "Euler3DTransform",
        "optimizer": "RegularStepGradientDescent",
        "optimizer_scales": "from physical shift",
        "sampling_strategy": "RANDOM",
        "sampling_fraction_per_level": [
            _levels.sampling_fraction(level.image, options) for level in fixed_levels
        ],
        "current_shrink_factors_per_level": [list(level.shrink_factors) for level in fixed_levels],
        "prior_shrink_factors_per_level": [list(level.shrink_factors) for level in moving_levels],
        "global_default_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        "versions": _versions(),
    }


# Candidate entries that hold transform objects, left out of the JSON-ready result.
_TRANSFORM_KEYS = frozenset({"transform", "start_transform", "coarse_transform"})


def _result(
    transform: sitk.Transform,
    verdict: str,
    reason: str,
    metrics: dict,
    candidates: list[dict],
    ambiguous: bool,
    parameters: dict,
    timings: dict,
    *,
    linear: sitk.Transform | None = None,
) -> RegistrationResult:
    """Build the result; ``linear`` is the rigid or affine part when a B-spline follows."""
    # The transform objects stay private: candidates must be JSON-ready.
    public_candidates = [
        {key: value for key, value in c.items() if key not in _TRANSFORM_KEYS} for c in candidates
    ]
    return RegistrationResult(
        transform=transform,
        matrix_lps=transform_matrix_lps(transform if linear is None else linear).tolist(),
        verdict=verdict,
        reason=reason,
        metrics=metrics,
        candidates=public_candidates,
        ambiguous=ambiguous,
        parameters=parameters,
        timings=timings,
    )
