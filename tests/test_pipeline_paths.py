"""Instances whose location is not a local path: archive members and PACS copies.

The pipeline reads each instance from its local copy and reports it by its location
in the source, so a series fetched from a PACS or found in a ZIP builds like a folder.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from priors.dicom.volume import build_volumes
from priors.pipeline import InstanceRef, SeriesRef, VolumeError, _unused_files, _volume_for
from priors.synthetic import write_cohort

PACS_PREFIX = "dicomweb:site@http://127.0.0.1:1/dicom-web/studies/"


def _thin_series(root: Path) -> list[Path]:
    cohort = write_cohort(root, seed=5, n_patients=1, n_timepoints=2, matrix=32, n_slices=12)
    folders = [folder for site in cohort.site_dirs.values() for folder in site.rglob("SE*")]
    by_size = sorted(folders, key=lambda folder: len(list(folder.iterdir())))
    return sorted(by_size[-1].iterdir())


def _series(paths: list[Path]) -> SeriesRef:
    refs = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        refs.append(InstanceRef(
            sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
            study_instance_uid=ds.StudyInstanceUID, source_id="dicomweb:site",
            location=f"{PACS_PREFIX}{ds.StudyInstanceUID}/instances/{ds.SOPInstanceUID}",
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), file_sha256="",
            pixel_sha256=None, path=str(path)))
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return SeriesRef(series_instance_uid=first.SeriesInstanceUID,
                     study_instance_uid=first.StudyInstanceUID, study_date="",
                     modality="CT", body_part="CHEST", series_description="",
                     series_number=None, instances=tuple(refs))


def test_series_reads_local_copies(tmp_path: Path) -> None:
    paths = _thin_series(tmp_path / "cohort")
    series = _series(paths)

    volume, info = _volume_for(series, build_volumes)

    assert len(volume.sop_instance_uids) == len(paths)
    assert info["rejected_files"] == []
    assert _unused_files(series, volume) == []


def test_unreadable_copy_reported_by_location(tmp_path: Path) -> None:
    paths = _thin_series(tmp_path / "cohort")
    paths[0].write_bytes(b"not DICOM at all")
    series = _series(paths[1:])
    broken = InstanceRef(
        sop_instance_uid="1.2.3.4", series_instance_uid=series.series_instance_uid,
        study_instance_uid=series.study_instance_uid, source_id="dicomweb:site",
        location=f"{PACS_PREFIX}broken", transfer_syntax_uid="", file_sha256="",
        pixel_sha256=None, path=str(paths[0]))
    series = SeriesRef(**{**series.__dict__, "instances": (broken, *series.instances)})

    volume, info = _volume_for(series, build_volumes)

    assert [row["location"] for row in info["rejected_files"]] == [f"{PACS_PREFIX}broken"]
    assert [row["location"] for row in _unused_files(series, volume)] == [
        f"{PACS_PREFIX}broken"]


def test_missing_copy_fails_the_series(tmp_path: Path) -> None:
    paths = _thin_series(tmp_path / "cohort")
    series = _series(paths[:1])
    for path in paths:
        path.unlink()

    with pytest.raises(VolumeError) as caught:
        _volume_for(series, build_volumes)
    assert caught.value.rejected_files[0]["location"].startswith(PACS_PREFIX)
