"""The main job on two real hospital CDs of one person (MR lumbar spine).

The 2018-01-07 study is on both CDs under different Patient IDs and UIDs; CD a's
DICOMDIR also lists 269 images whose files are not on the CD. The change model is
trained for chest CT, so these MR pairs get the registered-subtraction baseline.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pydicom
import pytest

from priors.config import load_settings
from priors.distributed import run_prepare_job

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def spine_job(shared_data, ray_session, tmp_path_factory):
    """Run the job once on both CDs; return the report, folders and captured log text."""
    home = tmp_path_factory.mktemp("spine-home")
    out_dir = tmp_path_factory.mktemp("spine-out")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("PRIORS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PRIORS_CONFIG", raising=False)
    records: list[str] = []
    handler = _ListHandler(records)
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        report = run_prepare_job(
            [shared_data / "spine-cd-a", shared_data / "spine-cd-b"], out_dir=out_dir,
            settings=load_settings(), job_name="spine", use_ray=True)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        monkeypatch.undo()
    return report, home, out_dir, "\n".join(records)


class _ListHandler(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


def _pair(report, current_series: str, prior_series: str) -> dict:
    for pair in report.pairs:
        if (pair["current_series"].startswith(f"#{current_series} ")
                and pair["prior_series"].startswith(f"#{prior_series} ")):
            return pair
    raise AssertionError(f"no pair {current_series} <- {prior_series} in {report.pairs}")


def test_spine_counts_add_up(spine_job):
    report, *_ = spine_job
    counts = report.counts
    assert report.counts_add_up
    assert counts["found"] == 192
    assert counts["absent"] == 269
    assert counts["rejected"] == 0
    assert counts["used"] > 0


def test_spine_one_person_two_studies(spine_job):
    report, *_ = spine_job
    assert len(report.persons) == 1
    assert report.persons[0]["records"] == 2
    assert report.persons[0]["studies"] == 2


def test_spine_t2_pair_uses_baseline(spine_job):
    report, *_ = spine_job
    pair = _pair(report, "4001", "6")
    assert pair["current_date"] == "2018-01-13"
    assert pair["prior_date"] == "2018-01-07"
    assert pair["status"] == "finished", pair
    assert pair["method"] == "baseline"
    assert "model not applicable" in pair["reason"]


def test_spine_t1_pair_paired_and_judged(spine_job):
    report, *_ = spine_job
    pair = _pair(report, "5001", "7")
    assert pair["prior_date"] == "2018-01-07"
    # Across 0.3 T and 1.5 T the T1 pair sits near the NCC floor: it either finishes
    # with the baseline or is held back with the quality figures that failed.
    if pair["status"] == "finished":
        assert pair["method"] == "baseline"
    else:
        assert pair["status"] == "held back"
        assert "quality checks" in pair["reason"]


def test_spine_pair_runs_in_mlflow(spine_job):
    import mlflow
    from mlflow.tracking import MlflowClient

    report, home, *_ = spine_job
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    pair = _pair(report, "4001", "6")
    run = client.get_run(pair["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == report.parent_run_id
    assert run.data.tags["priors.change.method"] == "baseline"
    inputs = {item.tags[0].value if item.tags else "": item.dataset
              for item in run.inputs.dataset_inputs}
    assert set(inputs) == {"current", "prior"}
    for dataset in inputs.values():
        assert len(dataset.digest) == 32
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"provenance.json", "transform.tfm", "preview.png"} <= artifacts
    del mlflow


def test_spine_provenance_names_every_instance(spine_job):
    report, _, out_dir, _ = spine_job
    pair = _pair(report, "4001", "6")
    provenance_files = list(Path(out_dir).rglob("provenance.json"))
    assert provenance_files
    records = [json.loads(path.read_text()) for path in provenance_files]
    record = next(item for item in records
                  if any(instance["series_instance_uid"] == pair["current_series_instance_uid"]
                         for instance in item["instances"]["current"]))
    assert set(record["instances"]) == {"current", "prior"}
    instances = record["instances"]["current"] + record["instances"]["prior"]
    assert len(instances) >= 2 * 11
    for instance in instances:
        assert len(instance["file_sha256"]) == 64
        assert len(instance["pixel_sha256"]) == 64
        assert Path(instance["location"]).is_file()


def _first_image(folder: Path) -> pydicom.Dataset:
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.upper() == "DICOMDIR":
            continue
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        if "PatientName" in dataset:
            return dataset
    raise AssertionError(f"no DICOM image with a patient name under {folder}")


def _identifying_values(shared_data: Path) -> set[bytes]:
    """Read every encoding of the name, Patient ID and birth date from the CDs' files."""
    values: set[bytes] = set()
    for cd in ("spine-cd-a", "spine-cd-b"):
        dataset = _first_image(shared_data / cd)
        raw_name = bytes(dataset.get_item(0x00100010).value)
        values.add(raw_name)
        values.update(group.strip() for group in raw_name.split(b"=") if len(group.strip()) >= 4)
        name = dataset.PatientName
        for group in (name.alphabetic, name.ideographic, name.phonetic):
            for part in group.replace("^", " ").replace("\u3000", " ").split():
                if len(part) >= 2:
                    values.add(part.encode("utf-8"))
        values.add(str(dataset.PatientID).encode())
        birth = str(dataset.PatientBirthDate)
        values.add(birth.encode())
        values.add(f"{birth[:4]}-{birth[4:6]}-{birth[6:]}".encode())
    return {value for value in values if value}


def test_spine_identified_dicom_only_in_package(spine_job):
    _, home, out_dir, _ = spine_job
    identified = list(Path(out_dir).glob("*/dicom/*/*.dcm"))
    logged = list((home / "mlartifacts").rglob("*.dcm"))
    assert identified
    assert len(logged) >= len(identified)


def test_spine_no_identifiers_in_mlflow_or_logs(spine_job, shared_data):
    _, home, out_dir, log_text = spine_job
    values = _identifying_values(shared_data)
    assert len(values) >= 6
    # The context package keeps identified DICOM outputs in <package>/dicom/ for
    # storing back into a PACS; everything else in it, and all of MLflow, must not.
    package_files = [p for p in Path(out_dir).rglob("*") if p.is_file()
                     and p.relative_to(out_dir).parts[1] != "dicom"]
    stores = [home / "mlflow.db", *(p for p in (home / "mlartifacts").rglob("*") if p.is_file()),
              *package_files]
    with sqlite3.connect(home / "mlflow.db") as connection:
        connection.execute("PRAGMA wal_checkpoint(FULL)")
    for path in stores:
        data = path.read_bytes()
        for value in values:
            assert value not in data, f"an identifying value appears in {path}"
    for value in values:
        assert value.decode("utf-8", "replace") not in log_text
