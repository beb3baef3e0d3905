"""Image pyramids and one optimisation per pyramid level.

SimpleITK's built-in pyramid shrinks every axis by the same factor, which leaves a
sagittal series of 11 slices 4.5 mm apart with 3 slices at the coarse level. Here
each axis is shrunk only as far as the target voxel size of the level needs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from priors.registration._fields import has_bspline, sampled_transform
from priors.registration.presets import RegistrationOptions

# Substrings of ITK's errors when too few samples land inside the moving image or
# mask (Mattes: "Joint PDF summed to zero"; v4 metrics: "Too many samples map outside
# moving image buffer", "... do not sufficiently overlap").
OVERLAP_ERROR_MARKERS = ("joint pdf summed to zero", "samples map outside", "sufficiently overlap")


# Mattes samples per joint-histogram bin, on average. With 32 x 32 bins filled by a
# few thousand to 40,000 masked samples, the metric's gradient on a uniform MR
# phantom pointed away from the optimum. Measured from five 20 mm starts on that
# phantom: at 10 per bin the result stalled 3 to 23 mm off, and at 50 per bin it
# ended 0.3 to 0.7 mm off. At 100 per bin (8 to 20 bins) every start ended within
# 0.29 mm. At 200 per bin (8 bins) every start settled on a 0.7 mm bias.
SAMPLES_PER_BIN = 100
MIN_HISTOGRAM_BINS = 8

# Levels larger than this (voxels) get image gradients at the sampled points only, by
# central differences, instead of ITK's default smoothed gradient image of every voxel,
# built anew at every level and start. On a 512 x 512 x 200 CT (52 M voxels) 5
# iterations took 11.6 s with gradient images and 0.7 s without. On the noisy MR phantom
# of the table-moved pair (0.3 M voxels) central differences ended 0.8 mm off instead of
# 0.2 mm, so small levels, where the image costs little, keep it.
GRADIENT_IMAGE_MAX_VOXELS = 4_000_000

# Step of the single iteration with which ``evaluate`` reads the metric, mm: far
# below any figure a caller compares, so the value is the metric at the start.
EVALUATION_STEP_MM = 1e-9


# Volumes of more than this many voxels (a 512 x 512 x 16 CT) are shrunk before they
# are smoothed, because a Gaussian of every voxel of a 512 x 512 x 200 CT took 2.5 s
# per level and volume. Their metric also runs on voxels of at least
# LARGE_IMAGE_MIN_LEVEL_MM, because a 52 M voxel level spent more time on cache misses
# than a 13 M voxel one (40 iterations, 100,000 samples: 3.9 s against 2.8 s). A
# 1.5 mm level still gave TRE p95 0.11 mm on that CT. Resampling and the quality
# figures use the volumes as given.
LARGE_IMAGE_VOXELS = 4_000_000
LARGE_IMAGE_MIN_LEVEL_MM = 1.5


class OverlapError(RuntimeError):
    """Too few metric samples fall where both images (and masks) have data."""


@dataclass(frozen=True)
class Level:
    """One pyramid level of a volume."""

    image: sitk.Image
    shrink_factors: tuple[int, ...]
    sigma_mm: float
    # Built from a volume of more than LARGE_IMAGE_VOXELS voxels.
    large: bool = False


def build_pyramid(image: sitk.Image, options: RegistrationOptions) -> list[Level]:
    """Smooth and shrink ``image`` for each level, coarsest first.

    Level k targets voxels of ``options.shrink_factors[k]`` times the finest spacing.
    A volume of more than ``LARGE_IMAGE_VOXELS`` voxels is shrunk before it is
    smoothed. Its levels count from ``LARGE_IMAGE_MIN_LEVEL_MM`` when that is
    coarser than its finest spacing: 6, 3 and 1.5 mm with the default factors 4, 2
    and 1, so no two levels share a grid.
    """
    large = image.GetNumberOfPixels() > LARGE_IMAGE_VOXELS
    finest = min(image.GetSpacing())
    if large:
        finest = max(finest, LARGE_IMAGE_MIN_LEVEL_MM)
    factors_per_level = [
        tuple(max(1, int(round(factor * finest / s))) for s in image.GetSpacing())
        for factor in options.shrink_factors
    ]
    if large:
        shrunk = _shrink_finest_first(image, factors_per_level)
    else:
        image = sitk.Cast(image, sitk.sitkFloat32)
    levels = []
    for index, sigma in enumerate(options.smoothing_sigmas_mm):
        factors = factors_per_level[index]
        if large:
            level = shrunk[index]
            level = sitk.SmoothingRecursiveGaussian(level, sigma) if sigma > 0 else level
        else:
            smoothed = sitk.SmoothingRecursiveGaussian(image, sigma) if sigma > 0 else image
            level = sitk.BinShrink(smoothed, factors) if max(factors) > 1 else smoothed
        levels.append(Level(level, factors, float(sigma), large))
    return levels


def _shrink_finest_first(image: sitk.Image, factors_per_level: list[tuple[int, ...]]) -> list:
    """Return float32 bin-shrunk copies of ``image``, one per level, in level order.

    The finest level is shrunk from ``image`` in its own pixel type (an integer image
    averages to whole values, 1 HU for CT), then cast, and each coarser level is
    shrunk from the next finer one where the factors divide. A 512 x 512 x 200 CT is
    then read whole once instead of once per level and cast never at full size.
    """
    order = sorted(range(len(factors_per_level)), key=lambda i: max(factors_per_level[i]))
    shrunk: dict[int, sitk.Image] = {}
    source, source_factors = image, (1,) * image.GetDimension()
    for index in order:
        factors = factors_per_level[index]
        if all(f % g == 0 for f, g in zip(factors, source_factors, strict=True)):
            relative = [f // g for f, g in zip(factors, source_factors, strict=True)]
            base = source
        else:
            relative, base = list(factors), image
        level = sitk.BinShrink(base, relative) if max(relative) > 1 else base
        level = sitk.Cast(level, sitk.sitkFloat32)
        shrunk[index] = level
        source, source_factors = level, factors
    return [shrunk[index] for index in range(len(factors_per_level))]


def sampling_fraction(image: sitk.Image, options: RegistrationOptions) -> float:
    """Return the metric sampling fraction of a level.

    ``options.sampling_fraction`` of the voxels, but at least
    ``options.min_samples_per_level`` and at most ``options.max_samples_per_level``
    samples, and never more than every voxel.
    """
    voxels = image.GetNumberOfPixels()
    samples = options.sampling_fraction * voxels
    samples = min(max(samples, options.min_samples_per_level), options.max_samples_per_level)
    return min(1.0, samples / voxels)


def expected_samples(image: sitk.Image, mask: sitk.Image, options: RegistrationOptions) -> float:
    """Estimate how many metric samples of a level fall inside the fixed mask."""
    mask_mm3 = np.count_nonzero(sitk.GetArrayViewFromImage(mask)) * math.prod(mask.GetSpacing())
    image_mm3 = image.GetNumberOfPixels() * math.prod(image.GetSpacing())
    inside = min(1.0, mask_mm3 / image_mm3)
    return sampling_fraction(image, options) * image.GetNumberOfPixels() * inside


def histogram_bins(samples: float, options: RegistrationOptions) -> int:
    """Return the Mattes bins for a level: ``options.histogram_bins`` or fewer.

    The joint histogram has bins squared cells, so the bins are capped at
    sqrt(samples / SAMPLES_PER_BIN).
    """
    affordable = int(math.sqrt(max(samples, 0.0) / SAMPLES_PER_BIN))
    return max(MIN_HISTOGRAM_BINS, min(options.histogram_bins, affordable))


def uses_gradient_image(image: sitk.Image) -> bool:
    """Return whether the metric gets a whole gradient image of ``image`` (small levels)."""
    return image.GetNumberOfPixels() <= GRADIENT_IMAGE_MAX_VOXELS


def configure_metric(
    fixed: sitk.Image,
    options: RegistrationOptions,
    *,
    moving: sitk.Image,
    fixed_mask: sitk.Image,
    moving_mask: sitk.Image | None,
) -> sitk.ImageRegistrationMethod:
    """Return a registration method with the metric, sampling and masks of one level."""
    method = sitk.ImageRegistrationMethod()
    if options.metric == "correlation":
        method.SetMetricAsCorrelation()
    elif options.metric == "mattes":
        bins = histogram_bins(expected_samples(fixed, fixed_mask, options), options)
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    else:
        raise ValueError(
            f"registration metric {options.metric!r} is not supported, "
            "expected 'correlation' or 'mattes'"
        )
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling_fraction(fixed, options), options.seed)
    method.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetMetricUseFixedImageGradientFilter(uses_gradient_image(fixed))
    method.SetMetricUseMovingImageGradientFilter(uses_gradient_image(moving))
    method.SetNumberOfThreads(options.threads)
    return method


def configure(
    fixed: sitk.Image,
    options: RegistrationOptions,
    *,
    moving: sitk.Image,
    fixed_mask: sitk.Image,
    moving_mask: sitk.Image | None,
    learning_rate: float,
    min_step: float | None = None,
) -> sitk.ImageRegistrationMethod:
    """Return a registration method set up for one level (metric, sampling, optimiser).

    ``min_step`` (mm) ends the level; ``options.min_step`` when ``None``.
    """
    method = configure_metric(
        fixed, options, moving=moving, fixed_mask=fixed_mask, moving_mask=moving_mask
    )
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=options.min_step if min_step is None else min_step,
        numberOfIterations=options.iterations,
        relaxationFactor=options.relaxation_factor,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    return method


def _is_overlap_error(err: RuntimeError) -> bool:
    text = str(err).lower()
    return any(marker in text for marker in OVERLAP_ERROR_MARKERS)


def _overlap_error(err: RuntimeError) -> OverlapError:
    # ITK prefixes the class name and address, then gives several sentences of
    # advice; keep the first sentence of the message itself.
    text = " ".join(str(err).split())
    match = re.search(r"\(0x[0-9a-f]+\):\s*(.*?\.)(\s|$)", text)
    return OverlapError(match.group(1) if match else text)


def evaluate(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    options: RegistrationOptions,
    *,
    fixed_mask: sitk.Image,
    moving_mask: sitk.Image | None,
) -> float:
    """Return the metric of ``transform`` on one level, without optimising.

    Raises
    ------
    OverlapError
        When ITK finds too few samples inside both images.
    """
    # MetricEvaluate would use every voxel (4 s on a 512 x 512 x 200 CT) instead of
    # the optimiser's samples. One iteration with a negligible step reports the metric
    # at the start, on the same random samples as ``optimise``.
    method = configure_metric(
        fixed, options, moving=moving, fixed_mask=fixed_mask, moving_mask=moving_mask
    )
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=EVALUATION_STEP_MM,
        minStep=EVALUATION_STEP_MM / 10.0,
        numberOfIterations=1,
        relaxationFactor=options.relaxation_factor,
        gradientMagnitudeTolerance=0.0,
    )
    # A B-spline is read through its sampled field: stepping it, the one way ITK 5.4
    # can evaluate it, costs samples x parameters (4 s on a 512 x 512 x 200 CT).
    fixed_part, optimised = _split_for_evaluation(sampled_transform(transform, fixed))
    if fixed_part is not None:
        method.SetMovingInitialTransform(fixed_part)
    method.SetInitialTransform(optimised, inPlace=True)
    # Unit scales: estimating them costs a metric evaluation per parameter, and a
    # step of EVALUATION_STEP_MM leaves the transform where it is whatever the scales.
    method.SetOptimizerScales([1.0] * optimised.GetNumberOfParameters())
    try:
        method.Execute(fixed, moving)
    except RuntimeError as err:
        if _is_overlap_error(err):
            raise _overlap_error(err) from err
        raise
    return float(method.GetMetricValue())


def _split_for_evaluation(
    transform: sitk.Transform,
) -> tuple[sitk.Transform | None, sitk.Transform]:
    """Split ``transform`` into a part held fixed and a copy of the part ITK steps.

    A transform without a B-spline is held fixed whole, before an identity
    translation. A composite ending in a B-spline keeps the B-spline as the stepped
    part, because ITK's metrics need the Jacobian with respect to position of a
    fixed moving transform, which ITK 5.4 does not implement for B-splines.
    """
    if not has_bspline(transform):
        return transform, sitk.TranslationTransform(3)
    if not isinstance(transform, sitk.CompositeTransform):
        return None, transform.Downcast().__class__(transform.Downcast())
    count = transform.GetNumberOfTransforms()
    last = transform.GetNthTransform(count - 1).Downcast()
    head = [transform.GetNthTransform(n).Downcast() for n in range(count - 1)]
    fixed_part = sitk.CompositeTransform(head) if head else None
    return fixed_part, last.__class__(last)


def optimise(
    fixed_levels: list[Level],
    moving_levels: list[Level],
    start: sitk.Transform,
    options: RegistrationOptions,
    *,
    fixed_mask: sitk.Image,
    moving_mask: sitk.Image | None,
    levels: range | None = None,
) -> tuple[sitk.Transform, dict]:
    """Optimise ``start`` level by level, coarsest first.

    ``levels`` selects pyramid levels by index (all when ``None``). The finest level
    of the pyramid stops at a step of ``options.fine_min_step_voxels`` of its voxels.
    The coarser levels of a large volume (``Level.large``) stop at
    ``options.coarse_min_step_voxels``. No level stops below ``options.min_step`` mm.

    Returns
    -------
    transform, info
        The optimised transform (same class as ``start``) and per-level iterations,
        stop conditions and learning rates, plus the final metric value.

    Raises
    ------
    OverlapError
        When ITK finds too few samples inside both images at some level.
    """
    transform = start
    info: dict = {"iterations_per_level": [], "stop_conditions": [], "learning_rates": []}
    finest = len(fixed_levels) - 1
    for index in levels if levels is not None else range(len(fixed_levels)):
        fixed, moving = fixed_levels[index], moving_levels[index]
        # The first step scales with the level's voxel size, so each level starts
        # with moves of about a voxel or two.
        voxel = min(fixed.image.GetSpacing())
        learning_rate = options.learning_rate * voxel
        if index == finest:
            fraction = options.fine_min_step_voxels
        else:
            # NOTE: small volumes keep options.min_step at coarse levels. On the
            # table-moved MR phantom (96 x 96 x 30) a coarse stop of 0.02 to 0.1 voxel
            # left one of six starts 0.5 to 5.3 mm off, because the finest level then
            # crawled along S-I. A stop of 0.01 voxel and below did not.
            fraction = options.coarse_min_step_voxels if fixed.large else 0.0
        min_step = max(options.min_step, fraction * voxel)
        method = configure(
            fixed.image,
            options,
            moving=moving.image,
            fixed_mask=fixed_mask,
            moving_mask=moving_mask,
            learning_rate=learning_rate,
            min_step=min_step,
        )
        # Optimise a copy in place: with inPlace=False, Execute returns a composite
        # transform, and the caller expects the class it passed in.
        transform = transform.__class__(transform)
        method.SetInitialTransform(transform, inPlace=True)
        try:
            method.Execute(fixed.image, moving.image)
        except RuntimeError as err:
            if _is_overlap_error(err):
                raise _overlap_error(err) from err
            raise
        info["iterations_per_level"].append(int(method.GetOptimizerIteration()))
        info["stop_conditions"].append(method.GetOptimizerStopConditionDescription())
        info["learning_rates"].append(learning_rate)
        info["metric"] = float(method.GetMetricValue())
    return transform, info
