"""Bad input does not stop the main job: every such file ends with a reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLossless

from priors.catalog import Catalog
from priors.config import load_settings
from priors.distributed import run_prepare_job
from priors.synthetic import write_cohort
from priors.synthetic.cohort import MASK_FOLDER


def _series_files(folder: Path, series_instance_uid: str) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "DICOMDIR":
            dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if dataset.get("SeriesInstanceUID") == series_instance_uid:
                files.append(path)
    return files


def _make_undecodable(path: Path) -> None:
    """Re-encode one instance as JPEG Lossless whose stream is garbage."""
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = JPEGLossless
    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(range(256)) * 4])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def bad_job(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    cohort = root / "cohort"
    write_cohort(cohort, seed=5, n_patients=1, n_timepoints=2, matrix=48, coverage_mm=100.0)
    truth = json.loads((cohort / "ground_truth.json").read_text())
    prior = truth["persons"][0]["studies"][0]
    current = truth["persons"][0]["studies"][1]
    site = cohort / current["path"]

    # Next to the current study's files: a text file, an empty file, a DICOM file cut
    # in its header and one cut in its pixel data.
    (site / "notes.txt").write_text("scanned at the front desk\n")
    (site / "empty.dcm").write_bytes(b"")
    thick = _series_files(site, current["series"]["thick"])
    shutil.copy(thick[0], site / "cut-header.dcm")
    (site / "cut-header.dcm").write_bytes(thick[0].read_bytes()[:300])
    (site / "cut-pixels.dcm").write_bytes(thick[1].read_bytes()[:-2000])
    # One slice in the middle of the prior's thin series that cannot be decoded.
    thin = _series_files(cohort / prior["path"], prior["series"]["thin"])
    broken = thin[len(thin) // 2]
    _make_undecodable(broken)

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("PRIORS_HOME", str(root / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sources = sorted(p for p in cohort.iterdir() if p.is_dir() and p.name != MASK_FOLDER)
    try:
        settings = load_settings()
        report = run_prepare_job(sources, out_dir=root / "out", settings=settings,
                                 job_name="bad-input", use_ray=True)
    finally:
        monkeypatch.undo()
    return report, settings, site, broken


def _reason(report, path: Path) -> tuple[str, str]:
    for item in report.file_reasons:
        if Path(item["location"]) == path:
            return item["outcome"], item["reason"]
    raise AssertionError(f"{path} is not listed in the job report")


def test_bad_input_counts_add_up(bad_job):
    report, *_ = bad_job
    assert report.counts_add_up
    assert report.counts["rejected"] >= 3


def test_bad_input_pairs_still_run(bad_job):
    report, *_ = bad_job
    assert report.pairs
    assert all(pair["status"] in ("finished", "held back") for pair in report.pairs)


@pytest.mark.parametrize(
    ("name", "outcome", "words"),
    [
        ("notes.txt", "skipped", "not DICOM"),
        ("empty.dcm", "skipped", "not DICOM"),
        ("cut-header.dcm", "rejected", "truncated"),
        ("cut-pixels.dcm", "rejected", "truncated"),
    ],
)
def test_bad_input_file_listed(bad_job, name, outcome, words):
    report, _, site, _ = bad_job
    found_outcome, reason = _reason(report, site / name)
    assert found_outcome == outcome
    assert words.lower() in reason.lower()


def test_undecodable_instance_rejected(bad_job):
    report, settings, _, broken = bad_job
    outcome, reason = _reason(report, broken)
    assert outcome == "rejected"
    assert "decod" in reason.lower()
    catalog = Catalog(settings.catalog_url)
    job_rows = {item.location: item for item in catalog.job_outcomes(report.job_id)}
    assert job_rows[str(broken)].outcome == "rejected"
    assert job_rows[str(broken)].reason == reason
