"""Registered current-versus-prior pairs with known change, for the change model.

A pair is two samplings of a chest phantom (``priors.synthetic.anatomy``) on the same
voxel grid. Between the two time points lesions appear, disappear, grow or shrink,
and the prior is degraded the way a real registered prior is: a residual rigid
misregistration, a smooth breathing-like deformation, and its own reconstruction
kernel, noise and slice thickness.

The labels are defined in the current frame by the true correspondence (the phantom
frame), not by the misregistered prior image. A voxel is 1 (new or grown) where a
lesion is present now and was not before. It is 2 (resolved or shrunk) where a
lesion was present before and is not now, and 0 elsewhere.

Arrays are in SimpleITK's axis order (z, y, x); spacing is ``(sx, sy, sz)`` mm; the
grid's axes are aligned with the phantom's LPS axes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from priors.synthetic.anatomy import (
    Anatomy,
    Lesion,
    Tissue,
    lesion_index,
    random_anatomy,
    sample_hu,
    tissue_labels,
)

__all__ = [
    "GENERATOR_VERSION",
    "HELD_OUT_STREAM",
    "TRAINING_STREAM",
    "VALIDATION_STREAM",
    "TrainingPair",
    "held_out_pairs",
    "make_pair",
    "training_pairs",
    "validation_pairs",
]

logger = logging.getLogger(__name__)

# Bump when a change alters the pairs that a given seed produces.
GENERATOR_VERSION = "1.0"

# First words of the seed sequences: held-out, training and validation pairs draw from
# different streams, so no training or validation seed can reproduce a held-out pair.
HELD_OUT_STREAM = 0x4E1D
TRAINING_STREAM = 0x7A17
VALIDATION_STREAM = 0x5A1D

NO_CHANGE_FRACTION = 0.25
CHANGE_KINDS = ("new", "resolved", "grown", "shrunk")

# Lesion diameters, mm. Sampled log-uniformly, so small lesions are as common per
# octave as large ones.
LESION_DIAMETER_MM = (3.0, 30.0)

# Grown and shrunk lesions change radius by this factor (smaller over larger) and by
# at least MIN_RADIUS_CHANGE_MM, so the change is wider than one voxel.
RADIUS_RATIO = (0.35, 0.75)
MIN_RADIUS_CHANGE_MM = 1.5

# Lesion attenuation. Lung nodules are solid or part-solid. Soft-tissue lesions
# differ from their surroundings by 40-150 HU either way (cysts, metastases, enhancing
# lesions), so they stand above the noise of a diagnostic CT.
LUNG_LESION_HU = (-250.0, 60.0)
SOFT_TISSUE_CONTRAST_HU = (40.0, 150.0)

# HU ranges that classify a candidate lesion centre.
LUNG_HU = (-950.0, -600.0)
SOFT_TISSUE_HU = (-150.0, 150.0)

# Nuisances of the prior relative to the current.
MAX_TRANSLATION_MM = 2.0
MAX_ROTATION_DEG = 3.0
MAX_BREATHING_MM = 3.0
BREATHING_WIDTH_MM = (40.0, 90.0)

# Reconstruction of each time point: in-plane kernel blur (Gaussian sigma, mm), slice
# thickness as a multiple of the slice spacing, and noise standard deviation (HU).
KERNEL_SIGMA_MM = (0.3, 1.0)
SLICE_THICKNESS_FACTOR = (1.0, 2.0)
NOISE_SIGMA_HU = (5.0, 25.0)

# FWHM of a Gaussian over its standard deviation.
FWHM_PER_SIGMA = 2.3548


@dataclass(frozen=True)
class TrainingPair:
    """One registered pair with its true change labels.

    Attributes
    ----------
    current, prior
        (z, y, x) float32 HU; the prior is "registered" onto the current grid with
        the residual errors listed in ``nuisances``.
    labels
        (z, y, x) uint8: 0 no change, 1 new or grown, 2 resolved or shrunk.
    spacing
        ``(sx, sy, sz)`` mm.
    origin_lps
        Phantom-frame LPS position (mm) of voxel (0, 0, 0); the grid axes are the
        LPS axes.
    nuisances
        What was applied: the changes, the misregistration, the breathing field and
        each time point's kernel, slice thickness and noise.
    """

    current: np.ndarray
    prior: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    nuisances: dict[str, Any] = field(default_factory=dict)

    @property
    def has_change(self) -> bool:
        """Whether any voxel is labelled as change."""
        return bool(self.labels.any())


def _grid_points(shape: Sequence[int], spacing: Sequence[float], origin: np.ndarray) -> np.ndarray:
    """Return the (N, 3) LPS mm centres of a (z, y, x) grid, in C order."""
    axes = [origin[axis] + np.arange(shape[2 - axis]) * spacing[axis] for axis in range(3)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)


def _candidate_points(
    anatomy: Anatomy, rng: np.random.Generator, low: np.ndarray, high: np.ndarray, count: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    points = rng.uniform(low, high, size=(count, 3))
    return points, sample_hu(anatomy, points)


def _pick_lesion_site(
    base: Anatomy,
    rng: np.random.Generator,
    low: np.ndarray,
    high: np.ndarray,
) -> tuple[np.ndarray, str, float] | None:
    """Choose a lesion centre in lung or soft tissue, with the tissue's HU there."""
    points, hu = _candidate_points(base, rng, low, high)
    lung = (hu > LUNG_HU[0]) & (hu < LUNG_HU[1])
    soft = (hu > SOFT_TISSUE_HU[0]) & (hu < SOFT_TISSUE_HU[1])
    preferred = "lung" if rng.random() < 0.5 else "soft_tissue"
    order = [preferred, "soft_tissue" if preferred == "lung" else "lung"]
    for tissue in order:
        chosen = np.flatnonzero(lung if tissue == "lung" else soft)
        if len(chosen):
            index = int(rng.choice(chosen))
            return points[index], tissue, float(hu[index])
    return None


def _random_lesion(
    rng: np.random.Generator, center: np.ndarray, tissue: str, tissue_hu: float
) -> Lesion:
    diameter = float(np.exp(rng.uniform(*np.log(LESION_DIAMETER_MM))))
    # Up to 25 % elongation per axis, at the drawn equivalent-sphere diameter.
    aspect = rng.uniform(0.8, 1.25, size=3)
    radii = diameter / 2 * aspect / np.cbrt(np.prod(aspect))
    if tissue == "lung":
        hu = float(rng.uniform(*LUNG_LESION_HU))
    else:
        hu = tissue_hu + float(rng.choice([-1.0, 1.0]) * rng.uniform(*SOFT_TISSUE_CONTRAST_HU))
    return Lesion(
        center_mm=tuple(float(c) for c in center),
        radii_mm=tuple(float(r) for r in radii),
        hu=hu,
        lobulation=float(rng.uniform(0.0, 0.4)),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def _scaled(lesion: Lesion, rng: np.random.Generator) -> Lesion:
    """Return a smaller version of ``lesion``, the other end of a growth or shrinkage."""
    largest = max(lesion.radii_mm)
    ratio = float(rng.uniform(*RADIUS_RATIO))
    ratio = min(ratio, (largest - MIN_RADIUS_CHANGE_MM) / largest)
    ratio = max(ratio, 0.2)
    return dataclasses.replace(lesion, radii_mm=tuple(r * ratio for r in lesion.radii_mm))


def _fits_tissue(base: Anatomy, lesion: Lesion, tissue: str) -> bool:
    """Tell whether a lung lesion's outline stays in lung, where it is visible.

    A lung nodule reaching into the chest wall would be labelled where it has
    nearly the wall's attenuation; soft-tissue lesions differ from all neighbours.
    """
    if tissue != "lung":
        return True
    center = np.asarray(lesion.center_mm)
    reach = np.asarray(lesion.radii_mm) * (1.0 + lesion.lobulation)
    probes = np.vstack([center, center + np.diag(reach), center - np.diag(reach)])
    return bool(np.all(tissue_labels(base, probes) == Tissue.LUNG))


def _new_lesion(
    base: Anatomy, rng: np.random.Generator, low: np.ndarray, high: np.ndarray, tries: int = 6
) -> tuple[Lesion, str] | None:
    """Draw a lesion in lung or soft tissue of the field of view, or None when none fits."""
    for _ in range(tries):
        site = _pick_lesion_site(base, rng, low, high)
        if site is None:
            return None
        lesion = _random_lesion(rng, *site)
        if _fits_tissue(base, lesion, site[1]):
            return lesion, site[1]
    return None


def _plan_changes(
    base: Anatomy, rng: np.random.Generator, low: np.ndarray, high: np.ndarray, *, no_change: bool
) -> tuple[list[Lesion], list[Lesion], list[dict]]:
    """Choose the lesions of each time point; return (current, prior, change records)."""
    current: list[Lesion] = []
    prior: list[Lesion] = []
    records: list[dict] = []

    # Stable lesions, present unchanged at both time points, teach the model that a
    # lesion alone is not a change.
    for _ in range(int(rng.integers(0, 3))):
        drawn = _new_lesion(base, rng, low, high)
        if drawn is not None:
            lesion, tissue = drawn
            current.append(lesion)
            prior.append(lesion)
            records.append({"kind": "stable", "tissue": tissue, "diameter_mm": lesion.diameter_mm})
    if no_change:
        return current, prior, records

    for _ in range(int(rng.integers(1, 4))):
        drawn = _new_lesion(base, rng, low, high)
        if drawn is None:
            continue
        lesion, tissue = drawn
        kind = str(rng.choice(CHANGE_KINDS))
        record = {
            "kind": kind,
            "tissue": tissue,
            "diameter_mm": lesion.diameter_mm,
            "hu": lesion.hu,
        }
        if kind == "new":
            current.append(lesion)
        elif kind == "resolved":
            prior.append(lesion)
        else:
            smaller = _scaled(lesion, rng)
            record["other_diameter_mm"] = smaller.diameter_mm
            current.append(lesion if kind == "grown" else smaller)
            prior.append(smaller if kind == "grown" else lesion)
        records.append(record)
    return current, prior, records


def _prior_sampling_points(
    points: np.ndarray, rng: np.random.Generator, center: np.ndarray
) -> tuple[np.ndarray, dict]:
    """Map current-grid points to where the misregistered prior samples the phantom."""
    direction = rng.normal(size=3)
    translation = direction / np.linalg.norm(direction) * rng.uniform(0.0, MAX_TRANSLATION_MM)
    angles = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, size=3)
    rotation = Rotation.from_euler("xyz", angles, degrees=True)
    moved = rotation.apply(points - center) + center + translation

    # Breathing: a smooth bump of displacement, mostly superior-inferior, partly
    # anterior-posterior, as the diaphragm and chest wall move.
    amplitude = rng.uniform(0.0, MAX_BREATHING_MM)
    width = rng.uniform(*BREATHING_WIDTH_MM)
    bump_center = center + rng.uniform(-40.0, 40.0, size=3)
    weight = np.exp(-np.sum((points - bump_center) ** 2, axis=1) / (2 * width**2))
    bump_direction = np.array([0.0, rng.uniform(-0.5, 0.5), 1.0])
    bump_direction /= np.linalg.norm(bump_direction)
    moved += (amplitude * weight)[:, None] * bump_direction

    nuisances = {
        "translation_mm": [float(t) for t in translation],
        "misregistration_mm": float(np.linalg.norm(translation)),
        "rotation_deg": [float(a) for a in angles],
        "breathing_amplitude_mm": float(amplitude),
        "breathing_width_mm": float(width),
    }
    return moved, nuisances


def _reconstruct(
    volume: np.ndarray, rng: np.random.Generator, spacing: Sequence[float]
) -> tuple[np.ndarray, dict]:
    """Apply one time point's kernel, slice thickness and noise to a sampled volume."""
    kernel_mm = float(rng.uniform(*KERNEL_SIGMA_MM))
    thickness_mm = float(spacing[2] * rng.uniform(*SLICE_THICKNESS_FACTOR))
    noise_hu = float(rng.uniform(*NOISE_SIGMA_HU))
    sigma_voxels = (
        thickness_mm / FWHM_PER_SIGMA / spacing[2],
        kernel_mm / spacing[1],
        kernel_mm / spacing[0],
    )
    blurred = ndimage.gaussian_filter(volume, sigma=sigma_voxels, mode="nearest")

    # CT noise is correlated over about a voxel; smooth white noise, then restore its sigma.
    noise = ndimage.gaussian_filter(rng.normal(size=volume.shape), sigma=0.7)
    noise *= noise_hu / max(float(noise.std()), 1e-6)
    reconstructed = (blurred + noise).astype(np.float32)
    return reconstructed, {
        "kernel_sigma_mm": kernel_mm,
        "slice_thickness_mm": thickness_mm,
        "noise_sigma_hu": noise_hu,
    }


# Superior-inferior range of field-of-view centres (phantom z, mm): the thorax and
# the upper abdomen, where the phantom has lungs, heart, liver and spine.
FIELD_OF_VIEW_Z_MM = (-130.0, 120.0)


def _field_of_view(base: Anatomy, rng: np.random.Generator, extent: np.ndarray) -> np.ndarray:
    """Return the LPS centre of a field of view on lung or soft tissue inside the body."""
    half_body = np.array([base.body_radii_mm[0], base.body_radii_mm[1]])
    half_xy = np.maximum(half_body - extent[:2] / 2, 1.0)
    for _ in range(16):
        points = np.column_stack(
            [
                rng.uniform(-half_xy[0], half_xy[0], size=64),
                rng.uniform(-half_xy[1], half_xy[1], size=64),
                rng.uniform(*FIELD_OF_VIEW_Z_MM, size=64),
            ]
        )
        hu = sample_hu(base, points)
        inside = np.flatnonzero((hu > LUNG_HU[0]) & (hu < SOFT_TISSUE_HU[1]))
        if len(inside):
            return points[int(rng.choice(inside))]
    return np.zeros(3)


def make_pair(
    rng: np.random.Generator,
    *,
    shape: Sequence[int] = (40, 80, 80),
    spacing: Sequence[float] = (1.5, 1.5, 2.0),
    anatomy: Anatomy | None = None,
    no_change_fraction: float = NO_CHANGE_FRACTION,
) -> TrainingPair:
    """Generate one registered pair with known change.

    Parameters
    ----------
    rng
        Source of every random choice; the same generator state gives the same pair.
    shape
        Grid shape (z, y, x).
    spacing
        Voxel size ``(sx, sy, sz)`` in mm.
    anatomy
        Phantom to use; a random one from ``random_anatomy(rng)`` when omitted.
    no_change_fraction
        Probability that the pair has no change at all (stable lesions only).

    Returns
    -------
    TrainingPair
    """
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    base = anatomy if anatomy is not None else random_anatomy(rng)
    extent = np.array([shape[2] * spacing[0], shape[1] * spacing[1], shape[0] * spacing[2]])
    center = _field_of_view(base, rng, extent)
    origin = center - extent / 2 + np.asarray(spacing) / 2
    # Lesion centres stay 8 mm inside the field of view so most of each change is seen.
    low = center - extent / 2 + 8.0
    high = center + extent / 2 - 8.0

    no_change = bool(rng.random() < no_change_fraction)
    current_lesions, prior_lesions, changes = _plan_changes(
        base, rng, low, high, no_change=no_change
    )
    current_anatomy = dataclasses.replace(
        base, lesions=tuple(base.lesions) + tuple(current_lesions)
    )
    prior_anatomy = dataclasses.replace(base, lesions=tuple(base.lesions) + tuple(prior_lesions))

    points = _grid_points(shape, spacing, origin)
    current_truth = lesion_index(current_anatomy, points) > 0
    prior_truth = lesion_index(prior_anatomy, points) > 0
    labels = np.zeros(len(points), dtype=np.uint8)
    labels[current_truth & ~prior_truth] = 1
    labels[prior_truth & ~current_truth] = 2

    prior_points, misregistration = _prior_sampling_points(points, rng, center)
    current_hu = sample_hu(current_anatomy, points).reshape(shape)
    prior_hu = sample_hu(prior_anatomy, prior_points).reshape(shape)
    current, current_recon = _reconstruct(current_hu, rng, spacing)
    prior, prior_recon = _reconstruct(prior_hu, rng, spacing)

    nuisances = {
        "generator_version": GENERATOR_VERSION,
        "no_change": no_change,
        "changes": changes,
        **misregistration,
        "current": current_recon,
        "prior": prior_recon,
    }
    return TrainingPair(
        current=current,
        prior=prior,
        labels=labels.reshape(shape),
        spacing=spacing,
        origin_lps=tuple(float(o) for o in origin),
        nuisances=nuisances,
    )


def _pairs(stream: int, seed: int, n: int, **options: Any) -> list[TrainingPair]:
    # Each pair has its own generator, so pair i is the same whatever n is.
    return [
        make_pair(np.random.default_rng([stream, seed, index]), **options) for index in range(n)
    ]


def held_out_pairs(seed: int, n: int, **options: Any) -> list[TrainingPair]:
    """Generate the deterministic held-out set: ``n`` pairs from the held-out stream.

    ``options`` go to ``make_pair``. Training pairs come from another stream, so they
    never repeat a held-out pair whatever the seeds.
    """
    return _pairs(HELD_OUT_STREAM, seed, n, **options)


def training_pairs(seed: int, n: int, *, first: int = 0, **options: Any) -> list[TrainingPair]:
    """Generate training pairs ``first`` to ``first + n - 1`` of the training stream."""
    return [
        make_pair(np.random.default_rng([TRAINING_STREAM, seed, index]), **options)
        for index in range(first, first + n)
    ]


def validation_pairs(seed: int, n: int, **options: Any) -> list[TrainingPair]:
    """Generate ``n`` pairs of the validation stream, for choosing settings after training.

    Neither training nor the held-out evaluation draws from this stream.
    """
    return _pairs(VALIDATION_STREAM, seed, n, **options)
