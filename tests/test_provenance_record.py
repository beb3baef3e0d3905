"""The provenance record, its JSON Schema and its PROV-JSON export."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from priors.provenance.audit import verify_record
from priors.provenance.digests import series_digest
from priors.provenance.record import ProvenanceRecord
from priors.provenance.schema import PROVENANCE_SCHEMA, validate_provenance

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def make_instances(series_uid: str, count: int, *, study_uid: str) -> list[dict]:
    instances = []
    for number in range(1, count + 1):
        sop_uid = f"{series_uid}.{number}"
        instances.append(
            {
                "sop_instance_uid": sop_uid,
                "series_instance_uid": series_uid,
                "study_instance_uid": study_uid,
                "source_id": "folder:site-a",
                "location": f"/data/site-a/{number:04d}.dcm",
                "transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
                "file_sha256": hashlib.sha256(f"file {sop_uid}".encode()).hexdigest(),
                "pixel_sha256": hashlib.sha256(f"pixels {sop_uid}".encode()).hexdigest(),
            }
        )
    return instances


def make_record() -> ProvenanceRecord:
    record = ProvenanceRecord(job_id="job-1", person_pseudonym="P-0123456789abcdef")
    record.add_source({"kind": "folder", "id": "site-a", "root": "/data/site-a"})
    current = make_instances("1.2.826.0.1.3.1", 3, study_uid="1.2.826.0.1.3")
    prior = make_instances("1.2.826.0.1.2.1", 2, study_uid="1.2.826.0.1.2")
    record.add_instances("current", current)
    record.add_instances("prior", prior)
    record.add_link_decisions(
        [{"records": ["r1", "r2"], "evidence": "pixel match", "linked": True}]
    )
    record.add_selection(["same modality family", {"study": "1.2.826.0.1.2", "reason": "latest"}])
    for role, instances in (("current", current), ("prior", prior)):
        digest = series_digest({i["sop_instance_uid"]: i["pixel_sha256"] for i in instances})
        record.add_volume(
            role,
            series_instance_uid=instances[0]["series_instance_uid"],
            decisions=["sorted by position along the normal"],
            metadata={"size": (64, 64, len(instances)), "spacing_mm": (0.7, 0.7, 5.0)},
            digest=digest,
        )
    record.add_registration({"seed": 1, "matrix": [[1, 0, 0], [0, 1, 0]], "ncc": float("nan")})
    record.add_model({"name": "ct_chest_change", "version": "0.1.0", "weights_sha256": "0" * 64})
    record.add_output("registered_prior", "pairs/0/prior.nii.gz", activity="registration")
    record.add_output("change_probability", "pairs/0/change.nii.gz", sha256="1" * 64)
    record.add_step("registration", 2.5)
    return record


def test_record_written_json_validates(tmp_path: Path) -> None:
    path = tmp_path / "provenance.json"

    sha256 = make_record().write_json(path)

    document = json.loads(path.read_text())
    validate_provenance(document)
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert document["registrations"][0]["ncc"] is None
    assert document["software"]["libraries"]["mlflow"]


def test_schema_rejects_missing_instance_hash(tmp_path: Path) -> None:
    document = make_record().to_dict()
    del document["instances"]["current"][0]["file_sha256"]

    with pytest.raises(ValueError, match="instances/current/0"):
        validate_provenance(document)


def test_docs_schema_matches_code() -> None:
    written = json.loads((REPO_ROOT / "docs" / "provenance.schema.json").read_text())

    assert written == PROVENANCE_SCHEMA


def test_record_rejects_identifying_keys() -> None:
    record = ProvenanceRecord(job_id="job-1", person_pseudonym="P-0123456789abcdef")

    with pytest.raises(ValueError, match="'PatientID' names an identifying attribute"):
        record.add_source({"kind": "folder", "filter": {"PatientID": "anything"}})
    with pytest.raises(ValueError, match="'patient_birth_date'"):
        record.add_link_decisions([{"patient_birth_date": "anything"}])


def test_record_rejects_incomplete_instance() -> None:
    record = ProvenanceRecord(job_id="job-1", person_pseudonym="P-0123456789abcdef")
    instance = make_instances("1.2.3", 1, study_uid="1.2")[0]
    del instance["pixel_sha256"]

    with pytest.raises(ValueError, match=r"current instance 1\.2\.3\.1: missing pixel_sha256"):
        record.add_instances("current", [instance])


def test_prov_json_has_instance_hashes() -> None:
    record = make_record()

    prov = record.to_prov_json()

    instances = record.to_dict()["instances"]["current"] + record.to_dict()["instances"]["prior"]
    for instance in instances:
        entity = prov["entity"][f"oid:{instance['sop_instance_uid']}"]
        assert entity["priors:file_sha256"] == instance["file_sha256"]
        assert entity["priors:pixel_sha256"] == instance["pixel_sha256"]
        assert entity["prov:location"] == instance["location"]


def test_prov_json_links_volumes_to_instances() -> None:
    prov = make_record().to_prov_json()

    derivations = [
        (relation["prov:generatedEntity"], relation["prov:usedEntity"])
        for relation in prov["wasDerivedFrom"].values()
    ]
    volume = "priors:volume/current/1.2.826.0.1.3.1"
    assert (volume, "oid:1.2.826.0.1.3.1.1") in derivations
    assert len([pair for pair in derivations if pair[0] == volume]) == 3
    assert set(prov["activity"]) >= {"priors:registration/job-1", "priors:inference/job-1"}
    assert "priors:model/ct_chest_change/0.1.0" in prov["agent"]
    generated = {
        relation["prov:entity"]: relation["prov:activity"]
        for relation in prov["wasGeneratedBy"].values()
    }
    assert generated["priors:output/registered_prior"] == "priors:registration/job-1"
    assert generated["priors:output/change_probability"] == "priors:job/job-1"


def record_with_files(tmp_path: Path) -> dict:
    document = make_record().to_dict()
    for instance in document["instances"]["current"]:
        path = tmp_path / f"{instance['sop_instance_uid']}.dcm"
        path.write_bytes(f"file {instance['sop_instance_uid']}".encode())
        instance["location"] = str(path)
    output = tmp_path / "pairs" / "0" / "change.nii.gz"
    output.parent.mkdir(parents=True)
    output.write_bytes(b"map")
    document["outputs"][1]["sha256"] = hashlib.sha256(b"map").hexdigest()
    return document


def test_audit_passes_untouched_files(tmp_path: Path) -> None:
    report = verify_record(record_with_files(tmp_path), package_dir=tmp_path)

    assert report.problems == []
    assert report.instances_checked == 3
    assert report.instances_unreachable == 2
    assert report.outputs_checked == 1


def test_audit_finds_changed_instance(tmp_path: Path) -> None:
    document = record_with_files(tmp_path)
    changed = Path(document["instances"]["current"][1]["location"])
    changed.write_bytes(b"edited")

    report = verify_record(document, package_dir=tmp_path)

    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{changed}: current instance")


def test_audit_finds_wrong_volume_digest(tmp_path: Path) -> None:
    document = record_with_files(tmp_path)
    document["volumes"][0]["digest"] = "0" * 64

    report = verify_record(document)

    assert not report.ok
    assert "volume of series 1.2.826.0.1.3.1: digest of its instances" in report.problems[0]
