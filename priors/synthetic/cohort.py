"""Write a deterministic multi-site longitudinal chest-CT cohort as real DICOM.

Each person is scanned at several time points, 200 to 700 days apart, at two or
more of three invented institutions (`_sites.SITES`). Every institution has its own
folder, Patient ID, Issuer of Patient ID, way of writing the name, scanner, field
of view, slice thickness, reconstruction kernels and pixel storage, and one site
scans feet first. Birth date and sex agree everywhere. The patient lies a little
differently at every visit: each scan samples the phantom of `anatomy` through a
rigid motion of 3 to 7 degrees and 4 to 15 mm.

A study has four series: a coronal localizer, a thin lung-kernel axial series,
a 5 mm soft-tissue axial series and an X-Ray Radiation Dose SR. All instances
are Explicit VR Little Endian, uncompressed, with File Meta Information. The
earliest study of the first person is delivered as CD media instead of in its
site folder. Layout of `out_dir`::

    <site>/ST000001/SE000002/IM000001.dcm   one folder per study, then per series
    cd/DICOMDIR, cd/DICOM/PT000000/...      the CD media File-set
    ground_truth.json                       the answers, described below
    ground_truth_masks/person00_tp0.nii.gz  lesion labels per study

Lesions in the lungs appear, grow, shrink or resolve between time points. Per
person, ``ground_truth.json`` lists the (issuer, Patient ID) records that are one
person, each study's UIDs, date, delivery and pose, for every pair of time points
the 4x4 LPS transform from the current scan's frame to the prior's, and every
lesion event (``new``, ``grown``, ``shrunk``, ``resolved`` or ``stable``) with its
centre and diameters. A mask has the thin series' geometry and labels each voxel
with its lesion id. The same seed and sizes give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from priors.synthetic import _dicom_writer as writer
from priors.synthetic._geometry import RigidMotion, current_to_prior, draw_motions, rounded
from priors.synthetic._lesions import lesion_events, lesions_at, plan_lesions
from priors.synthetic._render import ScanSizes, render_study
from priors.synthetic._sites import SITES, Site, draw_person, patient_id, patient_name
from priors.synthetic.anatomy import random_anatomy

__all__ = ["CohortInfo", "write_cohort"]

logger = logging.getLogger(__name__)

GROUND_TRUTH_SCHEMA = "priors.synthetic.ground_truth/1"
MEDIA_FOLDER = "cd"
MASK_FOLDER = "ground_truth_masks"


@dataclass(frozen=True)
class CohortInfo:
    """Paths of a cohort written by `write_cohort`.

    Attributes
    ----------
    root : Path
        The output folder.
    site_dirs : dict of str to Path
        One folder per institution that has studies, keyed by the site's folder name.
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
        Output folder. It must be missing, empty or hold an earlier cohort (a
        ``ground_truth.json``), whose folders are then replaced.
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
    FileExistsError
        If `out_dir` contains files but no earlier cohort.
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
    _prepare_output(root)
    sizes = ScanSizes(matrix, n_slices, slice_spacing_mm, coverage_mm)
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
            "the prior onto the current grid. patient_pose maps the phantom frame to a scan's."
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
        site_dirs={s.folder: root / s.folder for s in SITES if (root / s.folder).is_dir()},
        media_dir=media_dir,
        ground_truth=ground_truth,
        file_count=file_count,
    )


def _prepare_output(root: Path) -> None:
    if root.is_dir() and any(root.iterdir()):
        if not (root / "ground_truth.json").is_file():
            raise FileExistsError(
                f"{root}: output folder is not empty and contains no ground_truth.json of an "
                "earlier cohort; expected a missing or empty folder"
            )
        owned = [MEDIA_FOLDER, MASK_FOLDER, *(site.folder for site in SITES)]
        for name in owned:
            if (root / name).is_dir():
                shutil.rmtree(root / name)
        logger.info("replacing the earlier cohort in %s", root)
    root.mkdir(parents=True, exist_ok=True)


def _write_person(
    root: Path,
    rng: np.random.Generator,
    *,
    seed: int,
    person_index: int,
    n_timepoints: int,
    sizes: ScanSizes,
    used_ids: set[tuple[str, str]],
    site_counters: dict[str, int],
    media_datasets: list[Dataset],
) -> tuple[dict[str, Any], int]:
    baseline = dt.date(int(rng.integers(2014, 2019)), 1, 1)
    baseline += dt.timedelta(days=int(rng.integers(0, 365)))
    person = draw_person(rng, baseline.year)
    anatomy = random_anatomy(rng)
    tracks = plan_lesions(anatomy, rng, n_timepoints)
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
        study, datasets, mask = render_study(
            scan_rng, seed=seed, person=person, site=site,
            patient=records[site.folder], date=dates[timepoint],
            anatomy=dataclasses.replace(anatomy, lesions=lesions_at(tracks, timepoint)),
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
                "center_lps": rounded(_pose(motions[timepoint], track.largest.center_mm)),
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
        "lesion_events": lesion_events(tracks),
    }
    return truth, file_count


def _unique_patient_id(site: Site, rng: np.random.Generator, used: set[tuple[str, str]]) -> str:
    while True:
        value = patient_id(site, rng)
        if (site.folder, value) not in used:
            used.add((site.folder, value))
            return value


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
                    "current_to_prior_lps": [rounded(row) for row in matrix],
                }
            )
    return pairs


def _pose(motion: RigidMotion, point: tuple[float, float, float]) -> np.ndarray:
    return motion.rotation @ np.asarray(point) + motion.translation_mm
