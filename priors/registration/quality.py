"""Quality checks of a registration: overlap, NCC and mutual information, verdict."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from priors.registration.presets import RegistrationOptions

__all__ = [
    "QUALITY_BINS",
    "body_displacement_mm",
    "jacobian_determinant",
    "judge",
    "level_shift_ncc",
    "overlap_fraction",
    "similarity_in_overlap",
]

# Joint-histogram bins for the mutual information of the quality check. 32 bins over
# a few thousand to a million overlap voxels keep the histogram well filled.
QUALITY_BINS = 32

# The metric after registration may be this much (relative) worse than before it
# before the verdict fails; random sampling makes a converged start wobble slightly.
METRIC_WORSENING_TOLERANCE = 0.01

# A Jacobian determinant at or below this means the deformation folds space there
# (or collapses it to nothing), which no anatomical motion does. Any such voxel in
# the overlap fails the verdict.
MAX_FOLDING_DETERMINANT = 0.0


def _mapped_mask(
    current_mask: sitk.Image, prior_mask: sitk.Image, transform: sitk.Transform
) -> np.ndarray:
    mapped = sitk.Resample(
        prior_mask, current_mask, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    return sitk.GetArrayFromImage(mapped).astype(bool)


def _voxel_volume(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing()))


def overlap_fraction(
    current_mask: sitk.Image, prior_mask: sitk.Image, transform: sitk.Transform
) -> float:
    """Return the body overlap as a fraction of the smaller body's volume.

    ``transform`` maps current points to prior points. 1.0 means the smaller body
    lies wholly inside the other. So a prior with half the current's field of view
    that covers that half fully scores 1.0, not 0.5.
    """
    current = sitk.GetArrayViewFromImage(current_mask).astype(bool)
    overlap_voxels = np.count_nonzero(current & _mapped_mask(current_mask, prior_mask, transform))
    overlap_mm3 = overlap_voxels * _voxel_volume(current_mask)
    current_mm3 = np.count_nonzero(current) * _voxel_volume(current_mask)
    prior_mm3 = np.count_nonzero(sitk.GetArrayViewFromImage(prior_mask)) * _voxel_volume(prior_mask)
    smaller = min(current_mm3, prior_mm3)
    return float(overlap_mm3 / smaller) if smaller > 0 else 0.0


def body_displacement_mm(transform: sitk.Transform, mask: sitk.Image) -> dict[str, float]:
    """Measure how far ``transform`` moves the points of a body, mm.

    The translation of the 4 x 4 matrix is the shift of the LPS origin, which can lie
    far from the body. In the tilted CT phantom pair the origin lies 700 to 780 mm
    below the phantom. There a turn of 0.11 deg about left-right moved the origin
    2.1 mm front to back, while no point of the phantom moved more than 1 mm. These
    figures describe the body itself.

    Parameters
    ----------
    transform
        Maps current points to prior points.
    mask
        Body mask of the current volume (any grid); its voxel centres are the points.

    Returns
    -------
    dict
        ``body_displacement_mm_mean``, ``_p95`` and ``_max`` of |T(p) - p| over the
        mask, and ``body_centroid_shift_mm_{x,y,z}``, T(c) - c at the mask's centroid
        (LPS). NaN when the mask is empty.
    """
    inside = sitk.GetArrayViewFromImage(mask) > 0
    keys = ("mean", "p95", "max")
    if not inside.any():
        return {f"body_displacement_mm_{k}": np.nan for k in keys} | {
            f"body_centroid_shift_mm_{axis}": np.nan for axis in "xyz"
        }
    # T(p) - p at every voxel centre of the mask grid, for any transform class.
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        mask.GetSize(),
        mask.GetOrigin(),
        mask.GetSpacing(),
        mask.GetDirection(),
    )
    displacement = sitk.GetArrayViewFromImage(field)[inside]
    distance = np.linalg.norm(displacement, axis=1)
    indices = np.argwhere(inside)[:, ::-1].mean(axis=0)
    centroid = mask.TransformContinuousIndexToPhysicalPoint(indices.tolist())
    shift = np.subtract(transform.TransformPoint(centroid), centroid)
    return {
        "body_displacement_mm_mean": float(distance.mean()),
        "body_displacement_mm_p95": float(np.percentile(distance, 95)),
        "body_displacement_mm_max": float(distance.max()),
    } | {f"body_centroid_shift_mm_{axis}": float(v) for axis, v in zip("xyz", shift, strict=True)}


def jacobian_determinant(
    transform: sitk.Transform, current_mask: sitk.Image, prior_mask: sitk.Image
) -> dict[str, float]:
    """Measure the Jacobian determinant of ``transform`` over the body overlap.

    The determinant is det(I + du/dp) of the displacement u(p) = T(p) - p, by central
    differences on the grid of ``current_mask`` (2 mm voxels), in physical
    coordinates whatever the grid's direction. 1 means volume kept, above 1 the prior
    is larger there, and at or below 0 the deformation folds.

    Returns
    -------
    dict
        ``jacobian_min``, ``jacobian_max`` and ``jacobian_folding_fraction`` (the
        fraction of overlap voxels at or below ``MAX_FOLDING_DETERMINANT``); NaN when
        the overlap is empty.
    """
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        current_mask.GetSize(),
        current_mask.GetOrigin(),
        current_mask.GetSpacing(),
        current_mask.GetDirection(),
    )
    displacement = sitk.GetArrayViewFromImage(field)  # (z, y, x, 3), LPS mm
    inside = sitk.GetArrayViewFromImage(current_mask).astype(bool) & _mapped_mask(
        current_mask, prior_mask, transform
    )
    if not inside.any():
        return {"jacobian_min": np.nan, "jacobian_max": np.nan, "jacobian_folding_fraction": np.nan}

    # Only the bounding box of the overlap, one voxel wider for the differences.
    box = tuple(slice(max(0, int(i.min()) - 1), int(i.max()) + 2) for i in np.nonzero(inside))
    displacement, inside = displacement[box], inside[box]

    # gradient[:, c, k]: derivative of component c along grid axis k (x, y, z), per mm.
    spacing = current_mask.GetSpacing()
    gradient = np.zeros((int(np.count_nonzero(inside)), 3, 3))
    for k, axis in enumerate((2, 1, 0)):
        if displacement.shape[axis] > 1:
            gradient[:, :, k] = np.gradient(displacement, spacing[k], axis=axis)[inside]
    # Grid axis k runs along column k of the direction matrix D, so du/dp = G D^T.
    direction = np.asarray(current_mask.GetDirection()).reshape(3, 3)
    jacobian = np.eye(3) + gradient @ direction.T
    determinant = np.linalg.det(jacobian)
    return {
        "jacobian_min": float(determinant.min()),
        "jacobian_max": float(determinant.max()),
        "jacobian_folding_fraction": float(np.mean(determinant <= MAX_FOLDING_DETERMINANT)),
    }


def similarity_in_overlap(
    current: sitk.Image,
    prior: sitk.Image,
    current_mask: sitk.Image,
    prior_mask: sitk.Image,
    transform: sitk.Transform,
) -> dict[str, float]:
    """Compute NCC, mutual information and normalised MI inside the body overlap.

    Both volumes are compared on the grid of ``current_mask`` (the coarse mask grid),
    so the figures describe structure of a few mm and up.

    Returns
    -------
    dict
        ``ncc_in_overlap``, ``mi_in_overlap`` (nats), ``nmi_in_overlap``
        ((H(A) + H(B)) / H(A, B)) and ``overlap_voxels``; the figures are NaN
        when fewer than 2 voxels overlap.
    """
    grid = current_mask
    fixed = sitk.Resample(current, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    moving = sitk.Resample(prior, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    inside = sitk.GetArrayViewFromImage(grid).astype(bool) & _mapped_mask(
        grid, prior_mask, transform
    )
    a = sitk.GetArrayViewFromImage(fixed)[inside].astype(np.float64)
    b = sitk.GetArrayViewFromImage(moving)[inside].astype(np.float64)
    figures = {"overlap_voxels": float(a.size)}
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return figures | {
            "ncc_in_overlap": np.nan,
            "mi_in_overlap": np.nan,
            "nmi_in_overlap": np.nan,
        }

    ncc = float(np.mean((a - a.mean()) * (b - b.mean())) / (a.std() * b.std()))
    joint, _, _ = np.histogram2d(a, b, bins=QUALITY_BINS)
    p_ab = joint / joint.sum()
    p_a, p_b = p_ab.sum(axis=1), p_ab.sum(axis=0)
    h_a = -np.sum(p_a[p_a > 0] * np.log(p_a[p_a > 0]))
    h_b = -np.sum(p_b[p_b > 0] * np.log(p_b[p_b > 0]))
    h_ab = -np.sum(p_ab[p_ab > 0] * np.log(p_ab[p_ab > 0]))
    return figures | {
        "ncc_in_overlap": ncc,
        "mi_in_overlap": float(h_a + h_b - h_ab),
        "nmi_in_overlap": float((h_a + h_b) / h_ab),
    }


def level_shift_ncc(
    current: sitk.Image,
    prior: sitk.Image,
    current_mask: sitk.Image,
    prior_mask: sitk.Image,
    transform: sitk.Transform,
    vertebral_level_mm: tuple[float, float],
) -> dict[str, float | None]:
    """Compute the NCC in the overlap with the registered prior moved one level along S-I.

    The shift is the middle of ``vertebral_level_mm`` (35 mm for 20 to 50 mm), up
    and down. A registration that locked onto the right level correlates better
    than both shifted copies; one a level off correlates better with one of them.

    Returns
    -------
    dict
        ``level_shift_mm`` and ``ncc_in_overlap_level_up`` / ``_level_down`` (None
        when the shifted copies overlap too little).
    """
    shift = sum(vertebral_level_mm) / 2.0
    figures: dict[str, float | None] = {"level_shift_mm": shift}
    for name, sign in (("up", 1.0), ("down", -1.0)):
        # The registered prior moved by d samples the prior at T(p - d); LPS z is superior.
        moved = sitk.CompositeTransform(
            [transform, sitk.TranslationTransform(3, (0.0, 0.0, -sign * shift))]
        )
        ncc = similarity_in_overlap(current, prior, current_mask, prior_mask, moved)
        value = ncc["ncc_in_overlap"]
        figures[f"ncc_in_overlap_level_{name}"] = float(value) if np.isfinite(value) else None
    return figures


def judge(metrics: dict, options: RegistrationOptions) -> tuple[str, str]:
    """Return the verdict ("pass" or "fail") and the reasons for a failure.

    Checks the overlap fraction, NCC (same-modality pairs), normalised MI (CT-MR),
    that the metric did not get worse than at the start and, after a deformable
    stage, that the deformation does not fold (``jacobian_folding_fraction``).
    """
    reasons = []
    overlap = metrics.get("overlap_fraction", 0.0)
    if not overlap >= options.min_overlap_fraction:
        reasons.append(
            f"body overlap is {overlap:.1%} of the smaller body, "
            f"below the minimum {options.min_overlap_fraction:.0%}"
        )
    ncc = metrics.get("ncc_in_overlap", np.nan)
    if options.min_ncc is not None and not ncc >= options.min_ncc:
        reasons.append(f"NCC in the overlap is {ncc:.3f}, below the minimum {options.min_ncc}")
    nmi = metrics.get("nmi_in_overlap", np.nan)
    if options.min_nmi is not None and not nmi >= options.min_nmi:
        reasons.append(
            f"normalised MI in the overlap is {nmi:.3f}, below the minimum {options.min_nmi}"
        )
    for name in ("up", "down"):
        shifted = metrics.get(f"ncc_in_overlap_level_{name}")
        if shifted is not None and np.isfinite(shifted) and not ncc > shifted:
            reasons.append(
                f"NCC in the overlap is {ncc:.3f}, not above {shifted:.3f} with the prior moved "
                f"{metrics['level_shift_mm']:.0f} mm {name}: the result may be a level off"
            )
    before, after = metrics.get("metric_before"), metrics.get("metric_after")
    if before is not None and after is not None:
        # Both ITK metrics are minimised and negative when images agree.
        if after > before + METRIC_WORSENING_TOLERANCE * abs(before):
            reasons.append(f"the metric got worse: {before:.4f} before, {after:.4f} after")
    folding = metrics.get("jacobian_folding_fraction")
    if folding is not None and np.isfinite(folding) and folding > 0.0:
        reasons.append(
            f"the deformation folds: Jacobian determinant {metrics['jacobian_min']:.3f} to "
            f"{metrics['jacobian_max']:.3f}, {folding:.2%} of the overlap at or below "
            f"{MAX_FOLDING_DETERMINANT}, expected none"
        )
    return ("fail", "; ".join(reasons)) if reasons else ("pass", "")
