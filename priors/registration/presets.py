"""Registration options and their defaults per modality pair.

``RegistrationSettings`` (in ``priors.config``) holds what a user configures;
``RegistrationOptions`` adds what this layer decides per modality pair (metric, body
mask, optimiser steps, quality thresholds). ``preset`` builds one from the other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from priors.config import RegistrationSettings

__all__ = [
    "INITIALISATIONS",
    "METRICS",
    "MODALITY_PAIRS",
    "RegistrationOptions",
    "normalise_modality_pair",
    "preset",
]

MODALITY_PAIRS = ("CT-CT", "CT-MR", "MR-MR")

# Floor on metric samples per pyramid level. Without it, a coarse level of a small
# volume (24 x 24 x 10 voxels) gets a few hundred samples, too few for the metric.
MIN_SAMPLES_PER_LEVEL = 10_000

# Cap on metric samples per pyramid level. With 40,000 samples, the forward and
# reverse registrations of a supine/prone head MR pair (256 x 256 x 35, 4.8 mm
# slices) disagreed by 0.64 mm (95th percentile). With 100,000 they disagreed by
# 0.25 mm, and a 128 x 128 x 100 CT pair took 3 to 5 s a start on one shared core.
MAX_SAMPLES_PER_LEVEL = 100_000

# MR-MR pairs come from different scanners, coils and sequences more often than CT
# pairs, and their NCC after a correct registration is lower: 0.78 for a supine and
# prone head T1 pair from one scanner, 0.99 for a phantom. Hence a lower floor than
# the CT default of 0.5. It is the default of ``RegistrationSettings.mr_min_ncc``.
MR_MIN_NCC = 0.3

# Metrics a caller may choose; "auto" picks correlation for CT-CT, Mattes otherwise.
METRICS = ("auto", "correlation", "mattes")

# Starts a caller may choose (see ``RegistrationOptions.initialisations``).
INITIALISATIONS = ("moments", "geometry", "identity")

# CT-MR has no linear intensity relation, so its check is on normalised mutual
# information ((H(A) + H(B)) / H(A, B): 1.0 independent, 2.0 identical). On a
# synthetic chest phantom with an MR-like contrast it was 1.14 when registered and
# 1.01 when 9 to 14 deg and 35 mm off.
# NOTE: not calibrated on a real CT-MR pair with a known transform.
CT_MR_MIN_NMI = 1.05

# Regular-step gradient descent: first step in voxels of each level, smallest step
# in mm (far below any tolerance a caller checks), and the step's shrink factor on
# each reversal of the gradient. With 0.5 the step collapses after a few reversals
# on the edge of a uniform phantom and the slow S-I direction then crawls; 0.9 let
# the table-moved MR phantom pair converge from 20 mm starts in the tests.
LEARNING_RATE_VOXELS = 2.0
MIN_STEP_MM = 1e-3
RELAXATION_FACTOR = 0.9

# S-I offsets of the in-plane search: -105 to +105 mm in 17.5 mm steps.
SLAB_SI_OFFSETS_MM = tuple(17.5 * step for step in range(-6, 7))

# CT body threshold: above air and lung (-900 to -500 HU), below fat (-100 HU).
CT_BODY_THRESHOLD_HU = -400.0

# MR body threshold as a fraction of the 99th intensity percentile. Noise in air is
# usually under 5 % of that percentile, tissue above 15 %.
MR_BODY_FRACTION_OF_P99 = 0.1


@dataclass(frozen=True)
class RegistrationOptions:
    """Every parameter of one registration, so a run can be repeated exactly.

    Lengths are in mm. Tuples named ``*_per_level`` run from the coarsest pyramid
    level to the finest.
    """

    modality_pair: str
    metric: str  # "correlation" or "mattes"
    histogram_bins: int
    sampling_fraction: float
    min_samples_per_level: int
    max_samples_per_level: int
    seed: int
    threads: int
    iterations: int
    shrink_factors: tuple[int, ...]
    smoothing_sigmas_mm: tuple[float, ...]
    # First gradient-descent step, in voxels of each level (smallest spacing).
    learning_rate: float
    min_step: float
    relaxation_factor: float
    # "moments" (centres of the body masks), "geometry" (centres of the grids) or
    # "identity" (patient coordinates as stored); each is tried with every offset.
    initialisations: tuple[str, ...]
    si_start_offsets_mm: tuple[float, ...]
    affine: bool
    body_mask: str  # "ct" (HU threshold) or "mr" (fraction of the 99th percentile)
    prior_body_mask: str
    min_overlap_fraction: float
    min_ncc: float | None
    min_nmi: float | None
    # Two starts whose results lie this far apart along S-I are a vertebral level apart.
    vertebral_level_mm: tuple[float, float] = (20.0, 50.0)
    # Relative metric difference under which two such starts are called ambiguous.
    ambiguity_margin: float = 0.03
    inverse_consistency: bool = False
    # Levels coarser than the finest, of volumes over ``_levels.LARGE_IMAGE_VOXELS``,
    # stop at a step of this many of their voxels. The next level starts with steps
    # of ``learning_rate`` of its own, smaller voxels anyway. On the 512 x 512 x 200
    # CT pair of the elastix benchmark the two coarse levels then took 34 and 32
    # iterations instead of 111 and 92, with the same TRE.
    coarse_min_step_voxels: float = 0.1
    # The finest level stops at a step of this many of its voxels: 0.03 mm on a
    # 1.5 mm level. On the 512 x 512 x 200 CT pair of the elastix benchmark it took
    # 47 iterations instead of 83 (at 0.001 mm) with the same TRE p95, 0.106 mm.
    fine_min_step_voxels: float = 0.02
    # Starts whose results after the coarsest level lie within this many of its
    # voxels of an earlier start's result (at the corners of the current's body box)
    # are not optimised further: they would end at the same place.
    redundant_start_voxels: float = 1.0
    # Deformable stage (``deformable``): a cubic B-spline with control points about
    # ``bspline_mesh_spacing_mm`` apart over the current's grid, optimised by
    # regular-step gradient descent for at most ``bspline_iterations`` per level on
    # the ``bspline_levels`` finest pyramid levels, after the rigid (and affine) result.
    bspline: bool = False
    bspline_mesh_spacing_mm: float = 80.0
    bspline_iterations: int = 50
    bspline_levels: int = 2
    # Restrict the metric to the prior's body as well as the current's. Off by
    # default: with it, moving the bodies apart removes the samples that disagree,
    # and mutual information of the remaining samples can rise as overlap falls.
    use_prior_mask: bool = False
    # In-plane start search for thin slabs (``slab``): "auto" runs it when both
    # volumes are slabs with nearly the same slice normal and no initial transform
    # is given, "on" whenever no initial transform is given, "off" never.
    slab_search: str = "auto"
    # S-I offsets (mm) of the 2-D starts, added to the geometry-centre start: steps
    # of about half a lumbar level (30 to 35 mm) over three levels either way.
    slab_si_offsets_mm: tuple[float, ...] = SLAB_SI_OFFSETS_MM
    # The 3-D refinement after the in-plane search runs on this many of the finest
    # pyramid levels, with this first step (voxels of the level) and iterations.
    slab_refine_levels: int = 2
    slab_refine_learning_rate: float = 0.25
    slab_refine_iterations: int = 30
    # The refinement may move the body centroid at most this far (mm) and turn at
    # most this much (degrees) from the in-plane start; beyond, the start is kept.
    slab_max_drift_mm: float = 10.0
    slab_max_drift_deg: float = 5.0
    # Two plane candidates a vertebral level apart are ambiguous only when their
    # Mattes scores are within ``ambiguity_margin`` and their plane NCC within this.
    slab_ambiguity_ncc: float = 0.03

    def as_dict(self) -> dict[str, object]:
        """Return the options as plain JSON-ready values."""
        return {key: _plain(value) for key, value in dataclasses.asdict(self).items()}


def _names(value: str | tuple[str, ...] | list[str], allowed: tuple[str, ...], what: str) -> tuple:
    """Return a comma-separated string or sequence of names as a checked tuple."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(item.strip().lower() for item in items if item.strip())
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise ValueError(
            f"registration settings: {what} {value!r} is not supported, expected one or "
            f"more of {', '.join(allowed)}"
        )
    return tuple(dict.fromkeys(names))


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def normalise_modality_pair(modality_pair: str) -> str:
    """Return ``modality_pair`` in the form of ``MODALITY_PAIRS`` ("MR-CT" -> "CT-MR").

    Raises
    ------
    ValueError
        When the pair is not two of CT and MR joined by "-".
    """
    parts = modality_pair.strip().upper().split("-")
    key = "-".join(sorted(parts))
    if len(parts) != 2 or key not in MODALITY_PAIRS:
        raise ValueError(
            f"modality pair {modality_pair!r} is not supported, expected one of "
            f"{', '.join(MODALITY_PAIRS)}"
        )
    return key


def preset(
    modality_pair: str,
    settings: RegistrationSettings | None = None,
    *,
    current_modality: str | None = None,
) -> RegistrationOptions:
    """Build the registration options for a modality pair from the user settings.

    With ``settings.metric`` "auto", CT-CT uses normalised correlation, because HU
    match between scanners, and MR-MR and CT-MR use Mattes mutual information,
    because MR intensities depend on scanner and sequence. Change a field afterwards
    with ``dataclasses.replace``.

    Parameters
    ----------
    modality_pair
        "CT-CT", "MR-MR" or "CT-MR" (either order).
    settings
        User settings; the defaults of ``RegistrationSettings`` when ``None``.
    current_modality
        For CT-MR, the modality of the current (fixed) volume, which decides which
        body mask goes with which image; "CT" when ``None``.

    Returns
    -------
    RegistrationOptions

    Raises
    ------
    ValueError
        When the pair, the metric, an initialisation or the level lists are invalid,
        or correlation is asked for a CT-MR pair.
    """
    pair = normalise_modality_pair(modality_pair)
    settings = settings or RegistrationSettings()
    if len(settings.shrink_factors) != len(settings.smoothing_sigmas_mm):
        raise ValueError(
            f"registration settings: shrink_factors has {len(settings.shrink_factors)} "
            f"levels and smoothing_sigmas_mm {len(settings.smoothing_sigmas_mm)}, "
            "expected the same number"
        )

    # ITK takes the seed as unsigned 32-bit and reads 0 as "seed from the clock", which
    # would break the promise of identical runs with one thread.
    if not 1 <= settings.seed <= 2**32 - 1:
        raise ValueError(f"registration settings: seed {settings.seed} is invalid, "
                         "expected 1 to 4294967295")
    if settings.threads < 1:
        raise ValueError(f"registration settings: threads {settings.threads} is invalid, "
                         "expected 1 or more")

    requested_metric = settings.metric.strip().lower()
    if requested_metric not in METRICS:
        raise ValueError(
            f"registration settings: metric {settings.metric!r} is not supported, "
            f"expected one of {', '.join(METRICS)}"
        )
    initialisations = _names(settings.initialisations, INITIALISATIONS, "initialisations")

    if pair == "CT-CT":
        metric, current_mask, prior_mask = "correlation", "ct", "ct"
        min_ncc, min_nmi = settings.min_ncc, None
    elif pair == "MR-MR":
        metric, current_mask, prior_mask = "mattes", "mr", "mr"
        min_ncc, min_nmi = settings.mr_min_ncc, None
    else:
        current_is_mr = (current_modality or "CT").upper() == "MR"
        metric = "mattes"
        current_mask, prior_mask = ("mr", "ct") if current_is_mr else ("ct", "mr")
        min_ncc, min_nmi = None, CT_MR_MIN_NMI
    if requested_metric != "auto":
        if pair == "CT-MR" and requested_metric == "correlation":
            raise ValueError(
                "registration settings: metric 'correlation' does not suit a CT-MR pair, "
                "whose intensities are not linearly related; expected 'auto' or 'mattes'"
            )
        metric = requested_metric

    return RegistrationOptions(
        modality_pair=pair,
        metric=metric,
        histogram_bins=settings.histogram_bins,
        sampling_fraction=settings.sampling_fraction,
        min_samples_per_level=MIN_SAMPLES_PER_LEVEL,
        max_samples_per_level=MAX_SAMPLES_PER_LEVEL,
        seed=settings.seed,
        threads=settings.threads,
        iterations=settings.iterations,
        shrink_factors=tuple(settings.shrink_factors),
        smoothing_sigmas_mm=tuple(settings.smoothing_sigmas_mm),
        learning_rate=LEARNING_RATE_VOXELS,
        min_step=MIN_STEP_MM,
        relaxation_factor=RELAXATION_FACTOR,
        initialisations=initialisations,
        si_start_offsets_mm=tuple(settings.si_start_offsets_mm) or (0.0,),
        affine=settings.affine,
        bspline=settings.bspline,
        bspline_mesh_spacing_mm=settings.bspline_mesh_spacing_mm,
        bspline_iterations=settings.bspline_iterations,
        inverse_consistency=settings.inverse_consistency,
        body_mask=current_mask,
        prior_body_mask=prior_mask,
        min_overlap_fraction=settings.min_overlap_fraction,
        min_ncc=min_ncc,
        min_nmi=min_nmi,
    )
