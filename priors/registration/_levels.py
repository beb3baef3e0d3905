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


def build_pyramid(image: sitk.Image, options: RegistrationOptions) -> list[Level]:
    """Smooth and shrink ``image`` for each level, coarsest first.

    Level k targets voxels of ``options.shrink_factors[k]`` times the finest spacing.
    A volume of more than ``LARGE_IMAGE_VOXELS`` voxels is shrunk before it is
    smoothed. Its levels count from ``LARGE_IMAGE_MIN_LEVEL_MM`` when that is
    coarser than its finest spacing: 6, 3 and 1.5 mm with the default factors 4, 2
    and 1, so no two levels share a grid.
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    large = image.GetNumberOfPixels() > LARGE_IMAGE_VOXELS
    finest = min(image.GetSpacing())
    if large:
        finest = max(finest, LARGE_IMAGE_MIN_LEVEL_MM)
    levels = []
    for factor, sigma in zip(options.shrink_factors, options.smoothing_sigmas_mm, strict=True):
        target = factor * finest
        factors = tuple(max(1, int(round(target / s))) for s in image.GetSpacing())
        if large:
            shrunk = sitk.BinShrink(image, factors) if max(factors) > 1 else image
            level = sitk.SmoothingRecursiveGaussian(shrunk, sigma) if sigma > 0 else shrunk
        else:
            smoothed = sitk.SmoothingRecursiveGaussian(image, sigma) if sigma > 0 else image
            level = sitk.BinShrink(smoothed, factors) if max(factors) > 1 else smoothed
        levels.append(Level(level, factors, float(sigma)))
    return levels


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


def configure(
    fixed: sitk.Image,
    options: RegistrationOptions,
    *,
    moving: sitk.Image,
    fixed_mask: sitk.Image,
    moving_mask: sitk.Image | None,
    learning_rate: float,
) -> sitk.ImageRegistrationMethod:
    """Return a registration method set up for one level (metric, sampling, optimiser)."""
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
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=options.min_step,
        numberOfIterations=options.iterations,
        relaxationFactor=options.relaxation_factor,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetNumberOfThreads(options.threads)
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
    method = configure(
        fixed,
        options,
        moving=moving,
        fixed_mask=fixed_mask,
        moving_mask=moving_mask,
        learning_rate=EVALUATION_STEP_MM,
    )
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=EVALUATION_STEP_MM,
        minStep=EVALUATION_STEP_MM / 10.0,
        numberOfIterations=1,
        relaxationFactor=options.relaxation_factor,
        gradientMagnitudeTolerance=0.0,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(transform.__class__(transform), inPlace=True)
    try:
        method.Execute(fixed, moving)
    except RuntimeError as err:
        if _is_overlap_error(err):
            raise _overlap_error(err) from err
        raise
    return float(method.GetMetricValue())


def optimise(
    fixed_levels: list[Level],
    moving_levels: list[Level],
    start: sitk.Transform,
    options: RegistrationOptions,
    *,
    fixed_mask: sitk.Image,
    moving_mask: sitk.Image | None,
) -> tuple[sitk.Transform, dict]:
    """Optimise ``start`` level by level, coarsest first.

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
    for fixed, moving in zip(fixed_levels, moving_levels, strict=True):
        # The first step scales with the level's voxel size, so each level starts
        # with moves of about a voxel or two.
        learning_rate = options.learning_rate * min(fixed.image.GetSpacing())
        method = configure(
            fixed.image,
            options,
            moving=moving.image,
            fixed_mask=fixed_mask,
            moving_mask=moving_mask,
            learning_rate=learning_rate,
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
