"""Render one synthetic CT study: its images, dose report and lesion mask."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from scipy import ndimage

from priors.synthetic import _dicom_writer as writer
from priors.synthetic._dose_report import SpiralScan, dose_report
from priors.synthetic._geometry import RigidMotion, ScanGrid, axial_grid, rounded
from priors.synthetic._sites import SITES, Person, Site, accession_number
from priors.synthetic.anatomy import Anatomy, lesion_index, sample_hu

THICK_SLICE_MM = 5.0
# Sub-planes averaged across a thick slice to imitate its partial-volume blur.
THICK_SUBPLANES = 3
# Image noise (HU, one standard deviation): sharp lung kernels are noisier.
THIN_NOISE_HU = 25.0
THICK_NOISE_HU = 8.0
LOCALIZER_WIDTH_MM = 480.0
# Default display windows (center, width) in HU, as reading rooms use them.
LUNG_WINDOW = (-600.0, 1500.0)
SOFT_TISSUE_WINDOW = (40.0, 400.0)
LOCALIZER_DEPTH_SAMPLES = 32


@dataclass(frozen=True)
class ScanSizes:
    """Image and series sizes requested of `write_cohort`."""

    matrix: int
    n_slices: int | None
    slice_spacing_mm: float | None
    coverage_mm: float


def render_study(
    rng: np.random.Generator,
    *,
    seed: int,
    person: Person,
    site: Site,
    patient: dict[str, str],
    date: dt.date,
    anatomy: Anatomy,
    lesion_ids: list[int],
    motion: RigidMotion,
    sizes: ScanSizes,
    key: tuple[int, int],
) -> tuple[dict[str, Any], list[Dataset], sitk.Image]:
    """Build every instance of one study and the lesion mask of its thin series.

    Returns the study's ground-truth entry, its datasets in series order and the mask.
    """
    study_uid = writer.make_uid(seed, "study", *key)
    hour, minute = int(rng.integers(7, 19)), int(rng.integers(0, 60))
    study = writer.StudyContext(
        person=person,
        site=site,
        patient_name=patient["patient_name"],
        patient_id=patient["patient_id"],
        accession_number=accession_number(site, rng),
        referring_physician=str(rng.choice(site.referring_physicians)),
        study_instance_uid=study_uid,
        study_id=str(int(rng.integers(1000, 99999))),
        study_date=date.strftime("%Y%m%d"),
        study_time=f"{hour:02d}{minute:02d}00",
        frame_of_reference_uid=writer.make_uid(seed, "frame-of-reference", *key),
        device_serial_number=str(70000 + 37 * SITES.index(site)),
    )
    localizer_number, thin_number, thick_number, dose_number = site.series_numbers

    def series(number: int, description: str, seconds: int) -> writer.SeriesContext:
        uid = writer.make_uid(seed, "series", *key, number)
        return writer.SeriesContext(uid, number, description, seconds)

    spacing = sizes.slice_spacing_mm or site.thin_slice_thickness_mm
    n_slices = sizes.n_slices or max(1, round(sizes.coverage_mm / spacing))
    center = np.array([rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(-5, 5)])
    thin_grid = axial_grid(
        center_lps=center, field_of_view_mm=site.field_of_view_mm, matrix=sizes.matrix,
        slice_spacing_mm=spacing, n_slices=n_slices, feet_first=site.feet_first,
    )  # fmt: skip
    n_thick = max(1, round(n_slices * spacing / THICK_SLICE_MM))
    thick_grid = dataclasses.replace(
        thin_grid,
        spacing_mm=(*thin_grid.spacing_mm[:2], THICK_SLICE_MM),
        size=(*thin_grid.size[:2], n_thick),
    )
    # Keep the thick series centred on the same point as the thin series.
    shift = thin_grid.center_lps - thick_grid.center_lps
    thick_grid = dataclasses.replace(thick_grid, origin_lps=thick_grid.origin_lps + shift)

    datasets: list[Dataset] = []
    localizer_series = series(localizer_number, "Topogram", 0)
    datasets.append(_localizer(study, localizer_series, anatomy, motion, thin_grid, sizes))

    thin_series = series(thin_number, site.thin_series_description, 120)
    thin_points = motion.to_phantom(thin_grid.all_points())
    shape = (n_slices, sizes.matrix, sizes.matrix)
    thin_hu = sample_hu(anatomy, thin_points).reshape(shape)
    thin_hu += rng.normal(0.0, THIN_NOISE_HU, shape).astype(np.float32)
    for k in range(n_slices):
        datasets.append(
            writer.axial_image(
                study, thin_series, grid=thin_grid, slice_index=k, hu=thin_hu[k],
                slice_thickness_mm=site.thin_slice_thickness_mm, kernel=site.thin_kernel,
                image_type=("ORIGINAL", "PRIMARY", "AXIAL"), window=LUNG_WINDOW,
            )
        )  # fmt: skip

    thick_series = series(thick_number, site.thick_series_description, 150)
    thick_hu = _thick_slices(anatomy, motion, thick_grid)
    thick_hu += rng.normal(0.0, THICK_NOISE_HU, thick_hu.shape).astype(np.float32)
    for k in range(n_thick):
        datasets.append(
            writer.axial_image(
                study, thick_series, grid=thick_grid, slice_index=k, hu=thick_hu[k],
                slice_thickness_mm=THICK_SLICE_MM, kernel=site.thick_kernel,
                image_type=("ORIGINAL", "PRIMARY", "AXIAL"), window=SOFT_TISSUE_WINDOW,
            )
        )  # fmt: skip

    dose_series = series(dose_number, "Dose Report", 200)
    ctdi = round(float(rng.uniform(6.0, 14.0)), 2)
    length_mm = n_slices * spacing
    scan = SpiralScan(
        ctdi_vol_mgy=ctdi,
        dlp_mgy_cm=round(ctdi * (length_mm / 10.0 + 4.0), 1),
        scanning_length_mm=round(length_mm + 40.0, 1),
        kvp=site.kvp,
        tube_current_ma=180.0,
        exposure_time_s=round((length_mm + 40.0) / 38.4 * 0.5, 2),
    )
    datasets.append(dose_report(study, dose_series, scan=scan))

    mask = _lesion_mask(anatomy, lesion_ids, thin_points, thin_grid)
    truth = {
        "site": site.folder,
        "issuer": site.issuer_of_patient_id,
        "patient_id": patient["patient_id"],
        "study_instance_uid": study_uid,
        "study_date": study.study_date,
        "accession_number": study.accession_number,
        "frame_of_reference_uid": study.frame_of_reference_uid,
        "series": {
            "localizer": localizer_series.series_instance_uid,
            "thin": thin_series.series_instance_uid,
            "thick": thick_series.series_instance_uid,
            "dose_report": dose_series.series_instance_uid,
        },
        "patient_pose": [rounded(row) for row in motion.matrix],
    }
    return truth, datasets, mask


def _thick_slices(anatomy: Anatomy, motion: RigidMotion, grid: ScanGrid) -> np.ndarray:
    offsets = (np.arange(THICK_SUBPLANES) + 0.5) / THICK_SUBPLANES - 0.5
    columns, rows, n = grid.size
    total = np.zeros((n, rows, columns), dtype=np.float32)
    for offset in offsets:
        points = np.concatenate([grid.slice_points(k + offset) for k in range(n)])
        total += sample_hu(anatomy, motion.to_phantom(points)).reshape(n, rows, columns)
    # Soft-tissue kernels are smoother in plane than lung kernels.
    return ndimage.gaussian_filter(total / THICK_SUBPLANES, sigma=(0.0, 0.8, 0.8))


def _localizer(
    study: writer.StudyContext,
    series: writer.SeriesContext,
    anatomy: Anatomy,
    motion: RigidMotion,
    grid: ScanGrid,
    sizes: ScanSizes,
) -> Dataset:
    # A coronal projection: the mean HU along y of a slab through the scan's centre.
    pixel = LOCALIZER_WIDTH_MM / sizes.matrix
    length = grid.size[2] * grid.spacing_mm[2] + 120.0
    rows, columns = max(2, round(length / pixel)), sizes.matrix
    center = grid.center_lps
    x = center[0] + (np.arange(columns) - (columns - 1) / 2) * pixel
    z = center[2] + ((rows - 1) / 2 - np.arange(rows)) * pixel
    y = np.linspace(-150.0, 150.0, LOCALIZER_DEPTH_SAMPLES)
    zz, xx, yy = np.meshgrid(z, x, y, indexing="ij")
    points = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
    hu = sample_hu(anatomy, motion.to_phantom(points)).reshape(rows, columns, -1).mean(axis=2)
    origin = np.array([x[0], 0.0, z[0]])
    return writer.localizer_image(
        study, series, origin_lps=origin, spacing_mm=(pixel, pixel), hu=hu
    )


def _lesion_mask(
    anatomy: Anatomy, lesion_ids: list[int], points_phantom: np.ndarray, grid: ScanGrid
) -> sitk.Image:
    columns, rows, n = grid.size
    index = lesion_index(anatomy, points_phantom)
    ids = np.array([0, *lesion_ids], dtype=np.uint8)
    labels = ids[index].reshape(n, rows, columns)
    image = sitk.GetImageFromArray(labels)
    image.SetOrigin(tuple(float(v) for v in grid.origin_lps))
    image.SetSpacing(tuple(float(v) for v in grid.spacing_mm))
    image.SetDirection(tuple(float(v) for v in grid.direction.ravel()))
    return image
