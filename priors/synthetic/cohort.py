"""Write a deterministic multi-site longitudinal chest-CT cohort as real DICOM.

Each person is scanned at several time points, years apart, at two or more of
three invented institutions (`_sites.SITES`). Every institution has its own folder,
Patient ID, Issuer of Patient ID, way of writing the name, scanner, field of view,
slice thickness, reconstruction kernels and, at one site, feet-first positioning.
The patient lies a little differently at every visit: each scan samples the
phantom of `anatomy` through a rigid motion of a few degrees and millimetres.

A study holds four series: a coronal localizer, a thin lung-kernel axial series,
a thick soft-tissue axial series and an X-Ray Radiation Dose SR. The earliest
study of the first person is delivered as CD media (``cd/DICOMDIR`` with files
under ``cd/DICOM/``) and not in its site folder.

Lesions in the lungs appear, grow, shrink or resolve between time points.
``ground_truth.json`` records which (issuer, Patient ID) records are one person,
each study's UIDs and date, the rigid transform between every pair of time points
and every lesion event, and ``ground_truth_masks/`` holds a lesion label mask per
study in the geometry of its thin series. The same seed and sizes give
byte-identical files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from scipy import ndimage

from priors.synthetic import _dicom_writer as writer
from priors.synthetic._geometry import (
    RigidMotion,
    ScanGrid,
    axial_grid,
    current_to_prior,
    draw_motions,
)
from priors.synthetic._sites import (
    SITES,
    Person,
    Site,
    accession_number,
    draw_person,
    patient_id,
    patient_name,
)
from priors.synthetic.anatomy import (
    Anatomy,
    Lesion,
    lesion_index,
    random_anatomy,
    random_lung_lesion,
    sample_hu,
)

__all__ = ["CohortInfo", "write_cohort"]

logger = logging.getLogger(__name__)

GROUND_TRUTH_SCHEMA = "priors.synthetic.ground_truth/1"
MEDIA_FOLDER = "cd"
MASK_FOLDER = "ground_truth_masks"
THICK_SLICE_MM = 5.0
# Sub-planes averaged across a thick slice to imitate its partial-volume blur.
THICK_SUBPLANES = 3
# Image noise (HU, one standard deviation): sharp lung kernels are noisier.
THIN_NOISE_HU = 25.0
THICK_NOISE_HU = 8.0
# Lesion equivalent diameter at its largest, and the window of phantom z that keeps
# every lesion inside the thin series of the smallest default coverage.
LESION_MAX_DIAMETER_MM = (14.0, 26.0)
LESION_Z_LIMIT_MM = 40.0
# Diameter ratios between time points that count as growth or shrinkage.
GROWN_RATIO = 1.2
SHRUNK_RATIO = 0.8
LOCALIZER_WIDTH_MM = 480.0
LOCALIZER_DEPTH_SAMPLES = 32


@dataclass(frozen=True)
class CohortInfo:
    """Paths of a cohort written by `write_cohort`.

    Attributes
    ----------
    root : Path
        The output folder.
    site_dirs : dict of str to Path
        One folder per institution, keyed by the site's folder name.
    media_dir : Path
        The CD media folder holding ``DICOMDIR`` and ``DICOM/``.
    ground_truth : Path
        ``ground_truth.json``.
    file_count : int
        Number of DICOM files written, DICOMDIR included.
    """

    root: Path
    site_dirs: dict[str, Path]
    media_dir: Path
    ground_truth: Path
    file_count: int


@dataclass(frozen=True)
class _LesionTrack:
    lesion_id: int
    largest: Lesion
    # Radius scale per time point, None where the lesion is absent.
    scales: tuple[float | None, ...]

    def at(self, timepoint: int) -> Lesion | None:
        scale = self.scales[timepoint]
        if scale is None:
            return None
        radii = tuple(r * scale for r in self.largest.radii_mm)
        return dataclasses.replace(self.largest, radii_mm=radii)


@dataclass(frozen=True)
class _ScanSizes:
    matrix: int
    n_slices: int | None
    slice_spacing_mm: float | None
    coverage_mm: float


def write_cohort(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_patients: int = 3,
    n_timepoints: int = 3,
    matrix: int = 128,
    n_slices: int | None = None,
    slice_spacing_mm: float | None = None,
    coverage_mm: float = 180.0,
) -> CohortInfo:
    """Write a synthetic multi-site longitudinal chest-CT cohort as DICOM files.

    Parameters
    ----------
    out_dir : str or Path
        Output folder; created if missing. Existing files of the same names are
        overwritten, other files are left alone.
    seed : int
        Fixes everything: persons, dates, anatomy, lesions, motion, noise and UIDs.
    n_patients : int
        Number of persons, at least 1.
    n_timepoints : int
        Studies per person, at least 2 so that every person is seen at two sites.
    matrix : int
        Rows and columns of the axial images.
    n_slices : int, optional
        Slices of the thin series. By default ``coverage_mm`` divided by the spacing.
    slice_spacing_mm : float, optional
        Spacing of the thin series. By default the site's thin slice thickness.
    coverage_mm : float
        Length along z covered by the thin series when `n_slices` is not given.

    Returns
    -------
    CohortInfo
        The folders and ground-truth file written.

    Raises
    ------
    ValueError
        If a size is out of range.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients is {n_patients}, expected at least 1")
    if n_timepoints < 2:
        raise ValueError(f"n_timepoints is {n_timepoints}, expected at least 2")
    if matrix < 16:
        raise ValueError(f"matrix is {matrix}, expected at least 16")
    if n_slices is not None and n_slices < 1:
        raise ValueError(f"n_slices is {n_slices}, expected at least 1")

    started = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    sizes = _ScanSizes(matrix, n_slices, slice_spacing_mm, coverage_mm)
    used_ids: set[tuple[str, str]] = set()
    site_counters = {site.folder: 0 for site in SITES}
    media_datasets: list[Dataset] = []
    persons_truth = []
    file_count = 0

    for person_index in range(n_patients):
        rng = np.random.default_rng([seed, 1, person_index])
        truth, written = _write_person(
            root, rng, seed=seed, person_index=person_index, n_timepoints=n_timepoints,
            sizes=sizes, used_ids=used_ids, site_counters=site_counters,
            media_datasets=media_datasets,
        )  # fmt: skip
        persons_truth.append(truth)
        file_count += written

    media_dir = root / MEDIA_FOLDER
    writer.write_media(
        media_datasets,
        media_dir,
        file_set_uid=writer.make_uid(seed, "file-set"),
        file_set_id="PRIORSCD",
    )
    file_count += len(media_datasets) + 1

    ground_truth = root / "ground_truth.json"
    document = {
        "schema": GROUND_TRUTH_SCHEMA,
        "seed": seed,
        "parameters": dataclasses.asdict(sizes) | {"n_timepoints": n_timepoints},
        "transform_convention": (
            "current_to_prior_lps maps a point of the current scan's patient frame (LPS mm) "
            "to the prior scan's patient frame, as a SimpleITK transform that resamples "
            "the prior onto the current grid; patient_pose maps the phantom frame to a scan's"
        ),
        "persons": persons_truth,
    }
    ground_truth.write_text(json.dumps(document, indent=1) + "\n")
    logger.info(
        "wrote a synthetic cohort of %d persons, %d files, in %.1f s",
        n_patients, file_count, time.perf_counter() - started,
    )  # fmt: skip
    return CohortInfo(
        root=root,
        site_dirs={site.folder: root / site.folder for site in SITES},
        media_dir=media_dir,
        ground_truth=ground_truth,
        file_count=file_count,
    )


def _write_person(
    root: Path,
    rng: np.random.Generator,
    *,
    seed: int,
    person_index: int,
    n_timepoints: int,
    sizes: _ScanSizes,
    used_ids: set[tuple[str, str]],
    site_counters: dict[str, int],
    media_datasets: list[Dataset],
) -> tuple[dict[str, Any], int]:
    baseline = dt.date(int(rng.integers(2014, 2019)), 1, 1)
    baseline += dt.timedelta(days=int(rng.integers(0, 365)))
    person = draw_person(rng, baseline.year)
    anatomy = random_anatomy(rng)
    tracks = _plan_lesions(anatomy, rng, n_timepoints)
    motions = draw_motions(rng, n_timepoints)
    dates = [baseline]
    for _ in range(1, n_timepoints):
        dates.append(dates[-1] + dt.timedelta(days=int(rng.integers(200, 700))))

    # The first two visits are at different sites, so everyone is seen at two or more.
    order = rng.permutation(len(SITES))
    site_indices = [int(order[0]), int(order[1])]
    site_indices += [int(rng.integers(0, len(SITES))) for _ in range(2, n_timepoints)]
    records: dict[str, dict[str, str]] = {}
    for index in dict.fromkeys(site_indices):
        site = SITES[index]
        records[site.folder] = {
            "site": site.folder,
            "issuer": site.issuer_of_patient_id,
            "patient_id": _unique_patient_id(site, rng, used_ids),
            "patient_name": patient_name(person, site),
        }

    studies = []
    file_count = 0
    for timepoint in range(n_timepoints):
        site = SITES[site_indices[timepoint]]
        on_media = person_index == 0 and timepoint == 0
        if on_media:
            study_dir = root / MEDIA_FOLDER
        else:
            site_counters[site.folder] += 1
            study_dir = root / site.folder / f"ST{site_counters[site.folder]:06d}"
        scan_rng = np.random.default_rng([seed, 2, person_index, timepoint])
        study, datasets, mask = _render_study(
            scan_rng, seed=seed, person=person, site=site,
            patient=records[site.folder], date=dates[timepoint],
            anatomy=dataclasses.replace(anatomy, lesions=_lesions_at(tracks, timepoint)),
            lesion_ids=[t.lesion_id for t in tracks if t.scales[timepoint] is not None],
            motion=motions[timepoint], sizes=sizes,
            key=(person_index, timepoint),
        )  # fmt: skip
        if on_media:
            media_datasets.extend(datasets)
        else:
            for ds in datasets:
                path = study_dir / f"SE{ds.SeriesNumber:06d}" / f"IM{ds.InstanceNumber:06d}.dcm"
                writer.write_instance(ds, path)
            file_count += len(datasets)
        mask_path = root / MASK_FOLDER / f"person{person_index:02d}_tp{timepoint}.nii.gz"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(mask, str(mask_path), useCompression=True)

        study["delivery"] = "media" if on_media else "folder"
        study["path"] = study_dir.relative_to(root).as_posix()
        study["lesion_mask"] = mask_path.relative_to(root).as_posix()
        study["lesions"] = [
            {
                "lesion_id": track.lesion_id,
                "center_lps": _rounded(_pose(motions[timepoint], track.largest.center_mm)),
                "diameter_mm": round(lesion.diameter_mm, 3),
            }
            for track in tracks
            if (lesion := track.at(timepoint)) is not None
        ]
        study["timepoint"] = timepoint
        studies.append(study)
        logger.info(
            "wrote study %s (%s, %d instances)", study["study_instance_uid"], site.folder,
            len(datasets),
        )  # fmt: skip

    truth = {
        "person": f"person{person_index:02d}",
        "birth_date": person.birth_date,
        "sex": person.sex,
        "records": list(records.values()),
        "studies": studies,
        "pairs": _pairs(studies, motions),
        "lesion_events": _lesion_events(tracks),
    }
    return truth, file_count


def _unique_patient_id(site: Site, rng: np.random.Generator, used: set[tuple[str, str]]) -> str:
    while True:
        value = patient_id(site, rng)
        if (site.folder, value) not in used:
            used.add((site.folder, value))
            return value


def _plan_lesions(anatomy: Anatomy, rng: np.random.Generator, n: int) -> list[_LesionTrack]:
    # One lesion grows at every step, one is new at the second time point, one shrinks
    # and has resolved by the last, and half of the persons have one stable lesion.
    grow = tuple(1.3 ** (t - (n - 1)) for t in range(n))
    new = (None,) + (1.0,) * (n - 1)
    shrink = tuple(0.6**t for t in range(n - 1)) + (None,)
    schedules: list[tuple[float | None, ...]] = [grow, new, shrink]
    if rng.random() < 0.5:
        schedules.append((1.0,) * n)

    tracks: list[_LesionTrack] = []
    for lesion_id, scales in enumerate(schedules, start=1):
        lesion = _place_lesion(anatomy, rng, [t.largest for t in tracks])
        tracks.append(_LesionTrack(lesion_id, lesion, scales))
    return tracks


def _place_lesion(anatomy: Anatomy, rng: np.random.Generator, others: list[Lesion]) -> Lesion:
    for _ in range(200):
        lesion = random_lung_lesion(anatomy, rng, diameter_mm=LESION_MAX_DIAMETER_MM)
        if abs(lesion.center_mm[2]) > LESION_Z_LIMIT_MM:
            continue
        apart = all(
            np.linalg.norm(np.subtract(lesion.center_mm, other.center_mm))
            > 1.3 * (max(lesion.radii_mm) + max(other.radii_mm)) + 5.0
            for other in others
        )
        if apart:
            return lesion
    raise ValueError(
        f"could not place {len(others) + 1} separate lung lesions within z of "
        f"+-{LESION_Z_LIMIT_MM} mm; expected lungs of adult size"
    )


def _lesions_at(tracks: list[_LesionTrack], timepoint: int) -> tuple[Lesion, ...]:
    return tuple(lesion for t in tracks if (lesion := t.at(timepoint)) is not None)


def _lesion_events(tracks: list[_LesionTrack]) -> list[dict[str, Any]]:
    events = []
    for track in tracks:
        for later in range(1, len(track.scales)):
            before, after = track.scales[later - 1], track.scales[later]
            if before is None and after is None:
                continue
            if before is None:
                kind = "new"
            elif after is None:
                kind = "resolved"
            elif after / before >= GROWN_RATIO:
                kind = "grown"
            elif after / before <= SHRUNK_RATIO:
                kind = "shrunk"
            else:
                kind = "stable"
            diameter = track.largest.diameter_mm
            events.append(
                {
                    "lesion_id": track.lesion_id,
                    "kind": kind,
                    "timepoints": [later - 1, later],
                    "center_mm": _rounded(track.largest.center_mm),
                    "diameter_mm": [
                        None if before is None else round(diameter * before, 3),
                        None if after is None else round(diameter * after, 3),
                    ],
                }
            )
    return events


def _pairs(studies: list[dict[str, Any]], motions: list[RigidMotion]) -> list[dict[str, Any]]:
    pairs = []
    for current in range(len(studies)):
        for prior in range(current):
            matrix = current_to_prior(motions[prior], motions[current])
            pairs.append(
                {
                    "prior_timepoint": prior,
                    "current_timepoint": current,
                    "prior_study_instance_uid": studies[prior]["study_instance_uid"],
                    "current_study_instance_uid": studies[current]["study_instance_uid"],
                    "current_to_prior_lps": [_rounded(row) for row in matrix],
                }
            )
    return pairs


def _render_study(
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
    sizes: _ScanSizes,
    key: tuple[int, int],
) -> tuple[dict[str, Any], list[Dataset], sitk.Image]:
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
    center = np.array([rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(-10, 10)])
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
                image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
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
                image_type=("DERIVED", "SECONDARY", "AXIAL"),
            )
        )  # fmt: skip

    dose_series = series(dose_number, "Dose Report", 200)
    ctdi = round(float(rng.uniform(6.0, 14.0)), 2)
    dlp = round(ctdi * (n_slices * spacing / 10.0 + 4.0), 1)
    datasets.append(writer.dose_report(study, dose_series, ctdi_vol_mgy=ctdi, dlp_mgy_cm=dlp))

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
        "patient_pose": [_rounded(row) for row in motion.matrix],
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
    sizes: _ScanSizes,
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


def _pose(motion: RigidMotion, point: tuple[float, float, float]) -> np.ndarray:
    return motion.rotation @ np.asarray(point) + motion.translation_mm


def _rounded(values: Any) -> list[float]:
    return [round(float(v), 6) for v in values]
