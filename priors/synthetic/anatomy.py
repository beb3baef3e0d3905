"""An analytic chest-CT phantom that can be sampled at any point.

The phantom lives in its own frame: LPS millimetres (x towards the patient's left,
y towards posterior, z towards the head), centred on the chest and covering about
z in [-150, 150] mm. It is built from ellipses, cylinders and ellipsoids, so
`sample_hu` evaluates any set of points without a voxel grid, and a scan with any
geometry or patient motion is sampled straight from it.

Each point gets one tissue class (`Tissue`), painted in a fixed order so that
later structures cover earlier ones: air, body fat, soft tissue, lungs, liver and
stomach domes, heart, aorta, sternum, ribs, spine. Lesions are painted last and
only inside the body.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Anatomy",
    "Lesion",
    "Tissue",
    "lesion_index",
    "random_anatomy",
    "random_lung_lesion",
    "sample_hu",
    "tissue_labels",
]

logger = logging.getLogger(__name__)

AIR_HU = -1000.0

# Lobulation directions per lesion: enough low-order lobes for a visibly irregular
# outline, few enough that the outline stays smooth at a few-millimetre voxel size.
LOBE_COUNT = 5

# Margin between a random lung lesion and the lung edge, so the whole lesion,
# including its lobulated outline, sits in lung tissue.
LUNG_LESION_MARGIN_MM = 4.0


# The 26 directions to the faces, edges and corners of a cube, as unit vectors.
_PROBE_DIRECTIONS = np.array(
    [
        (i, j, k)
        for i in (-1, 0, 1)
        for j in (-1, 0, 1)
        for k in (-1, 0, 1)
        if (i, j, k) != (0, 0, 0)
    ],
    dtype=np.float64,
)
_PROBE_DIRECTIONS /= np.linalg.norm(_PROBE_DIRECTIONS, axis=1, keepdims=True)


class Tissue(enum.IntEnum):
    """Tissue class of a phantom point. The value is the label that `tissue_labels` returns."""

    AIR = 0
    FAT = 1
    SOFT_TISSUE = 2
    LUNG = 3
    LIVER = 4
    HEART = 5
    AORTA = 6
    CANCELLOUS_BONE = 7
    CORTICAL_BONE = 8
    DISC = 9
    CSF = 10


@dataclass(frozen=True)
class Lesion:
    """An ellipsoidal lesion, optionally with a lobulated outline.

    Attributes
    ----------
    center_mm : tuple of float
        Centre in the phantom frame (LPS, mm).
    radii_mm : tuple of float
        Ellipsoid semi-axes along x, y and z (mm).
    hu : float
        Lesion attenuation (HU), e.g. 20 to 80 in lung.
    lobulation : float
        Relative depth of the lobes: 0 is a plain ellipsoid, about 0.3 an irregular outline.
    seed : int
        Seed of the lobe directions, frequencies and phases.
    """

    center_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    hu: float
    lobulation: float = 0.0
    seed: int = 0

    @property
    def diameter_mm(self) -> float:
        """Equivalent-sphere diameter of the underlying ellipsoid (mm)."""
        return float(2.0 * np.cbrt(np.prod(self.radii_mm)))


@dataclass(frozen=True)
class Anatomy:
    """A chest-CT-like phantom: body outline, lungs, spine, heart, aorta, ribs optional.

    All lengths are in mm, all attenuations in HU. Lateral offsets are distances
    from the midline, and anterior-posterior positions are y values (negative is
    anterior).
    """

    body_radii_mm: tuple[float, float] = (165.0, 115.0)
    # Relative narrowing of the body ellipse at z = +-150 mm.
    body_taper: float = 0.08
    fat_thickness_mm: float = 15.0
    lung_radii_mm: tuple[float, float, float] = (62.0, 80.0, 125.0)
    lung_offset_x_mm: float = 82.0
    lung_center_y_mm: float = 10.0
    lung_center_z_mm: float = 15.0
    heart_center_mm: tuple[float, float, float] = (25.0, -30.0, -45.0)
    heart_radii_mm: tuple[float, float, float] = (58.0, 45.0, 55.0)
    aorta_radius_mm: float = 11.0
    aortic_arch_z_mm: float = 65.0
    liver_center_mm: tuple[float, float, float] = (-45.0, 0.0, -175.0)
    liver_radii_mm: tuple[float, float, float] = (105.0, 85.0, 95.0)
    stomach_center_mm: tuple[float, float, float] = (60.0, -10.0, -185.0)
    stomach_radii_mm: tuple[float, float, float] = (70.0, 70.0, 80.0)
    spine_center_y_mm: float = 55.0
    vertebra_radius_mm: float = 17.0
    vertebra_height_mm: float = 24.0
    disc_height_mm: float = 6.0
    ribs: bool = True
    rib_spacing_mm: float = 26.0
    rib_thickness_mm: float = 9.0
    # Rib height change per mm from posterior to anterior, since ribs slope downward.
    rib_slope: float = 0.35
    fat_hu: float = -100.0
    soft_tissue_hu: float = 40.0
    lung_hu: float = -850.0
    liver_hu: float = 60.0
    heart_hu: float = 130.0
    aorta_hu: float = 170.0
    cancellous_bone_hu: float = 450.0
    cortical_bone_hu: float = 900.0
    disc_hu: float = 90.0
    csf_hu: float = 15.0
    lesions: tuple[Lesion, ...] = field(default=())


def _inside_ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, center, radii) -> np.ndarray:
    # Evaluate only the points within the ellipsoid's z extent: most structures are short.
    cx, cy, cz = center
    rx, ry, rz = radii
    inside = np.zeros(x.shape, dtype=bool)
    near = np.flatnonzero(np.abs(z - cz) <= rz)
    distance = ((x[near] - cx) / rx) ** 2 + ((y[near] - cy) / ry) ** 2 + ((z[near] - cz) / rz) ** 2
    inside[near[distance <= 1.0]] = True
    return inside


def _inside_ellipse_xy(x: np.ndarray, y: np.ndarray, cx, cy, rx, ry) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def tissue_labels(anatomy: Anatomy, points_mm: np.ndarray) -> np.ndarray:
    """Classify points of the phantom frame by tissue, ignoring lesions.

    Parameters
    ----------
    anatomy : Anatomy
        The phantom.
    points_mm : numpy.ndarray
        (N, 3) array of points in the phantom frame (LPS, mm).

    Returns
    -------
    numpy.ndarray
        (N,) uint8 array of `Tissue` values.
    """
    points = _as_points(points_mm)
    # float32 halves the memory traffic and still resolves 0.1 um at 1 m.
    x, y, z = (np.ascontiguousarray(points[:, axis], dtype=np.float32) for axis in range(3))
    labels = np.full(len(points), Tissue.AIR, dtype=np.uint8)
    a = anatomy

    # Body outline: an ellipse in x-y that narrows towards the ends of the chest.
    scale = 1.0 - a.body_taper * np.clip(z / 150.0, -1.0, 1.0) ** 2
    body_rx, body_ry = a.body_radii_mm[0] * scale, a.body_radii_mm[1] * scale
    in_body = _inside_ellipse_xy(x, y, 0.0, 0.0, body_rx, body_ry)
    labels[in_body] = Tissue.FAT
    inner_rx = body_rx - a.fat_thickness_mm
    inner_ry = body_ry - a.fat_thickness_mm
    labels[in_body & _inside_ellipse_xy(x, y, 0.0, 0.0, inner_rx, inner_ry)] = Tissue.SOFT_TISSUE

    for side in (-1.0, 1.0):
        center = (side * a.lung_offset_x_mm, a.lung_center_y_mm, a.lung_center_z_mm)
        labels[in_body & _inside_ellipsoid(x, y, z, center, a.lung_radii_mm)] = Tissue.LUNG

    # The liver and stomach domes push up into the lung bases like the diaphragm.
    labels[in_body & _inside_ellipsoid(x, y, z, a.liver_center_mm, a.liver_radii_mm)] = Tissue.LIVER
    stomach = _inside_ellipsoid(x, y, z, a.stomach_center_mm, a.stomach_radii_mm)
    labels[in_body & stomach] = Tissue.SOFT_TISSUE
    labels[_inside_ellipsoid(x, y, z, a.heart_center_mm, a.heart_radii_mm)] = Tissue.HEART
    labels[_inside_aorta(a, x, y, z)] = Tissue.AORTA

    # Sternum: an anterior plate of bone in front of the heart.
    sternum_y = -(a.body_radii_mm[1] - a.fat_thickness_mm - 8.0)
    sternum = (np.abs(x) < 14.0) & (np.abs(y - sternum_y) < 6.0) & (z > -95.0) & (z < 85.0)
    labels[sternum] = Tissue.CORTICAL_BONE

    if a.ribs:
        labels[_inside_ribs(a, x, y, z, inner_rx, inner_ry)] = Tissue.CORTICAL_BONE
    _paint_spine(a, labels, x, y, z, inner_ry)
    return labels


def _inside_aorta(a: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    # Ascending aorta above the heart, descending aorta left of the spine, joined by
    # an arch: half a torus whose axis runs along x.
    r = a.aorta_radius_mm
    ascending_y = a.heart_center_mm[1] + 10.0
    descending_x = 22.0
    descending_y = a.spine_center_y_mm - a.vertebra_radius_mm - r - 4.0
    arch_z = a.aortic_arch_z_mm
    ascending = ((x - 5.0) ** 2 + (y - ascending_y) ** 2 <= r**2) & (z > a.heart_center_mm[2])
    ascending &= z <= arch_z
    descending = ((x - descending_x) ** 2 + (y - descending_y) ** 2 <= r**2) & (z <= arch_z)
    arch_center_y = 0.5 * (ascending_y + descending_y)
    arch_radius = 0.5 * (descending_y - ascending_y)
    ring = np.sqrt((y - arch_center_y) ** 2 + (z - arch_z) ** 2) - arch_radius
    arch = (ring**2 + (x - 0.5 * (5.0 + descending_x)) ** 2 <= r**2) & (z > arch_z)
    return ascending | descending | arch


def _inside_ribs(a: Anatomy, x, y, z, inner_rx, inner_ry) -> np.ndarray:
    # Ribs are bands of an elliptic shell just inside the soft-tissue boundary,
    # repeating along z and sloping down towards anterior.
    outer = _inside_ellipse_xy(x, y, 0.0, 0.0, inner_rx - 4.0, inner_ry - 4.0)
    inner = _inside_ellipse_xy(x, y, 0.0, 0.0, inner_rx - 14.0, inner_ry - 14.0)
    shell = outer & ~inner
    sloped_z = z - a.rib_slope * y
    phase = np.mod(sloped_z, a.rib_spacing_mm)
    band = phase < a.rib_thickness_mm
    thoracic = (z > -120.0) & (z < 135.0)
    # Costal cartilage near the anterior midline is not bone.
    cartilage = (y < 0.0) & (np.abs(x) < 35.0)
    return shell & band & thoracic & ~cartilage


def _paint_spine(a: Anatomy, labels: np.ndarray, x, y, z, inner_ry) -> None:
    period = a.vertebra_height_mm + a.disc_height_mm
    in_disc = np.mod(z, period) >= a.vertebra_height_mm
    radial = np.hypot(x, y - a.spine_center_y_mm)
    body = radial <= a.vertebra_radius_mm
    labels[body & in_disc] = Tissue.DISC
    labels[body & ~in_disc] = Tissue.CORTICAL_BONE
    labels[(radial <= a.vertebra_radius_mm - 2.5) & ~in_disc] = Tissue.CANCELLOUS_BONE

    # Posterior arch: a bony ring around the spinal canal, and the spinous process.
    canal_y = a.spine_center_y_mm + a.vertebra_radius_mm + 9.0
    canal_radial = np.hypot(x, y - canal_y)
    arch = (canal_radial <= 14.0) & ~in_disc
    spinous_end_y = np.minimum(canal_y + 30.0, inner_ry - 3.0)
    spinous = (np.abs(x) < 4.0) & (y > canal_y) & (y < spinous_end_y) & ~in_disc
    labels[arch | spinous] = Tissue.CORTICAL_BONE
    labels[canal_radial <= 8.0] = Tissue.CSF


def _tissue_hu_table(anatomy: Anatomy) -> np.ndarray:
    table = np.empty(len(Tissue), dtype=np.float32)
    table[Tissue.AIR] = AIR_HU
    table[Tissue.FAT] = anatomy.fat_hu
    table[Tissue.SOFT_TISSUE] = anatomy.soft_tissue_hu
    table[Tissue.LUNG] = anatomy.lung_hu
    table[Tissue.LIVER] = anatomy.liver_hu
    table[Tissue.HEART] = anatomy.heart_hu
    table[Tissue.AORTA] = anatomy.aorta_hu
    table[Tissue.CANCELLOUS_BONE] = anatomy.cancellous_bone_hu
    table[Tissue.CORTICAL_BONE] = anatomy.cortical_bone_hu
    table[Tissue.DISC] = anatomy.disc_hu
    table[Tissue.CSF] = anatomy.csf_hu
    return table


def sample_hu(anatomy: Anatomy, points_mm: np.ndarray) -> np.ndarray:
    """Sample the phantom's attenuation at points of its frame.

    Parameters
    ----------
    anatomy : Anatomy
        The phantom, with its lesions.
    points_mm : numpy.ndarray
        (N, 3) array of points in the phantom frame (LPS, mm).

    Returns
    -------
    numpy.ndarray
        (N,) float32 array of HU: -1000 outside the body, lesions as given where they
        lie inside the body.
    """
    points = _as_points(points_mm)
    labels = tissue_labels(anatomy, points)
    hu = _tissue_hu_table(anatomy)[labels]
    index = lesion_index(anatomy, points)
    inside = (index > 0) & (labels != Tissue.AIR)
    lesion_hu = np.array([lesion.hu for lesion in anatomy.lesions] or [0.0], dtype=np.float32)
    hu[inside] = lesion_hu[index[inside] - 1]
    return hu


def lesion_index(anatomy: Anatomy, points_mm: np.ndarray) -> np.ndarray:
    """Return which lesion of the anatomy covers each point.

    Parameters
    ----------
    anatomy : Anatomy
        The phantom.
    points_mm : numpy.ndarray
        (N, 3) array of points in the phantom frame (LPS, mm).

    Returns
    -------
    numpy.ndarray
        (N,) int16 array: 0 where no lesion, ``i + 1`` inside ``anatomy.lesions[i]``.
        Where lesions overlap the later one wins.
    """
    points = _as_points(points_mm)
    index = np.zeros(len(points), dtype=np.int16)
    z = np.ascontiguousarray(points[:, 2])
    for i, lesion in enumerate(anatomy.lesions):
        # Test only points in the lesion's bounding box: most points are far away.
        center = np.asarray(lesion.center_mm, dtype=np.float64)
        reach = np.asarray(lesion.radii_mm, dtype=np.float64) * (1.0 + abs(lesion.lobulation))
        candidates = np.flatnonzero(np.abs(z - center[2]) <= reach[2])
        near = np.all(np.abs(points[candidates] - center) <= reach, axis=1)
        candidates = candidates[near]
        if candidates.size == 0:
            continue
        inside = _inside_lesion(lesion, points[candidates])
        index[candidates[inside]] = i + 1
    return index


def _inside_lesion(lesion: Lesion, points: np.ndarray) -> np.ndarray:
    scaled = (points - np.asarray(lesion.center_mm)) / np.asarray(lesion.radii_mm)
    rho = np.linalg.norm(scaled, axis=1)
    if lesion.lobulation == 0.0:
        return rho <= 1.0

    # The outline radius is 1 + lobulation * f(direction), where f is a normalised sum
    # of sines of the direction's projection on a few random axes: smooth on the
    # sphere, within [-1, 1] and fixed by the seed.
    rng = np.random.default_rng(lesion.seed)
    axes = rng.normal(size=(LOBE_COUNT, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    frequencies = rng.uniform(1.5, 3.5, size=LOBE_COUNT)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=LOBE_COUNT)
    weights = rng.uniform(0.5, 1.0, size=LOBE_COUNT)
    weights /= weights.sum()
    direction = scaled / np.maximum(rho, 1e-9)[:, None]
    modulation = np.sin(np.pi * frequencies * (direction @ axes.T) + phases) @ weights
    return rho <= 1.0 + lesion.lobulation * modulation


def _as_points(points_mm: np.ndarray) -> np.ndarray:
    points = np.asarray(points_mm, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points_mm has shape {points.shape}, expected (N, 3)")
    return points


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw a phantom with plausible adult variation of size, shape and contrast.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness; the same generator state gives the same anatomy.

    Returns
    -------
    Anatomy
        A phantom without lesions.
    """
    body_lr = rng.uniform(145.0, 185.0)
    body_ap = rng.uniform(100.0, 130.0)
    fat = rng.uniform(8.0, 25.0)
    chest_lr = body_lr - fat
    chest_ap = body_ap - fat
    lung_lr = chest_lr * rng.uniform(0.36, 0.42)
    lung_ap = chest_ap * rng.uniform(0.72, 0.82)
    heart_scale = rng.uniform(0.85, 1.15)
    return Anatomy(
        body_radii_mm=(body_lr, body_ap),
        body_taper=rng.uniform(0.04, 0.12),
        fat_thickness_mm=fat,
        lung_radii_mm=(lung_lr, lung_ap, rng.uniform(110.0, 135.0)),
        lung_offset_x_mm=chest_lr - lung_lr - rng.uniform(14.0, 22.0),
        lung_center_y_mm=rng.uniform(0.0, 15.0),
        lung_center_z_mm=rng.uniform(5.0, 25.0),
        heart_center_mm=(rng.uniform(15.0, 35.0), -chest_ap * 0.3, rng.uniform(-60.0, -30.0)),
        heart_radii_mm=(58.0 * heart_scale, 45.0 * heart_scale, 55.0 * heart_scale),
        aorta_radius_mm=rng.uniform(9.0, 14.0),
        aortic_arch_z_mm=rng.uniform(55.0, 80.0),
        spine_center_y_mm=chest_ap - 45.0,
        vertebra_radius_mm=rng.uniform(15.0, 19.0),
        vertebra_height_mm=rng.uniform(21.0, 27.0),
        disc_height_mm=rng.uniform(4.0, 8.0),
        rib_spacing_mm=rng.uniform(23.0, 29.0),
        rib_thickness_mm=rng.uniform(7.0, 11.0),
        rib_slope=rng.uniform(0.25, 0.45),
        fat_hu=rng.uniform(-120.0, -80.0),
        soft_tissue_hu=rng.uniform(30.0, 55.0),
        lung_hu=rng.uniform(-880.0, -820.0),
        liver_hu=rng.uniform(50.0, 110.0),
        heart_hu=rng.uniform(100.0, 200.0),
        aorta_hu=rng.uniform(140.0, 300.0),
        cancellous_bone_hu=rng.uniform(380.0, 500.0),
        cortical_bone_hu=rng.uniform(800.0, 1000.0),
    )


def random_lung_lesion(
    anatomy: Anatomy,
    rng: np.random.Generator,
    *,
    diameter_mm: tuple[float, float] = (8.0, 30.0),
    hu: tuple[float, float] = (20.0, 80.0),
    max_lobulation: float = 0.3,
    max_tries: int = 200,
) -> Lesion:
    """Draw a lesion that lies inside one lung of the anatomy.

    Parameters
    ----------
    anatomy : Anatomy
        The phantom; its existing lesions are ignored.
    rng : numpy.random.Generator
        Source of randomness.
    diameter_mm : tuple of float
        Range of the equivalent-sphere diameter (mm).
    hu : tuple of float
        Range of the lesion attenuation (HU).
    max_lobulation : float
        Upper bound of the lobulation, drawn uniformly from [0, max_lobulation].
    max_tries : int
        Number of candidate centres tried before giving up.

    Returns
    -------
    Lesion
        A lesion whose centre and 26 probe points around its outline fall in lung.

    Raises
    ------
    ValueError
        If no candidate fits, e.g. because the requested diameter exceeds the lungs.
    """
    for _ in range(max_tries):
        diameter = rng.uniform(*diameter_mm)
        aspect = rng.uniform(0.8, 1.25, size=3)
        radii = 0.5 * diameter * aspect / np.cbrt(np.prod(aspect))
        lobulation = rng.uniform(0.0, max_lobulation)
        side = rng.choice([-1.0, 1.0])
        unit = rng.normal(size=3)
        unit *= rng.uniform(0.0, 0.8) / np.linalg.norm(unit)
        center = np.array(
            [side * anatomy.lung_offset_x_mm, anatomy.lung_center_y_mm, anatomy.lung_center_z_mm]
        ) + unit * np.asarray(anatomy.lung_radii_mm)

        # NOTE: only the centre and 26 points around the largest possible outline are
        # tested, so a lesion can still touch a structure that reaches between them.
        reach = radii * (1.0 + lobulation) + LUNG_LESION_MARGIN_MM
        probes = np.vstack([center, center + _PROBE_DIRECTIONS * reach])
        if np.all(tissue_labels(anatomy, probes) == Tissue.LUNG):
            return Lesion(
                center_mm=(float(center[0]), float(center[1]), float(center[2])),
                radii_mm=(float(radii[0]), float(radii[1]), float(radii[2])),
                hu=float(rng.uniform(*hu)),
                lobulation=float(lobulation),
                seed=int(rng.integers(0, 2**31 - 1)),
            )
    raise ValueError(
        f"no lung lesion with diameter in {diameter_mm} mm fits this anatomy "
        f"after {max_tries} tries; expected a diameter well below the lung size "
        f"{anatomy.lung_radii_mm} mm"
    )
