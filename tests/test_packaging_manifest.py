"""Context package manifests: building, schema validation and writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from priors.packaging import ManifestError, build_manifest, write_manifest
from priors.packaging.schema import MANIFEST_SCHEMA

REPO_ROOT = Path(__file__).resolve().parents[1]
CURRENT_STUDY = "1.2.826.0.1.3"
CURRENT_SERIES = "1.2.826.0.1.3.1"

PAIR_PATHS = {
    "transform": "pairs/0/prior_to_current.tfm",
    "registered_prior": "pairs/0/registered_prior.nii.gz",
    "change_maps": ["pairs/0/change_probability.nii.gz", "pairs/0/change_labels.nii.gz"],
    "lesions": "pairs/0/lesions.json",
    "provenance": "provenance.json",
}


def make_pair(**overrides: object) -> dict:
    pair = {
        "pair_key": "a" * 64,
        "current_series_instance_uid": CURRENT_SERIES,
        "prior_study_instance_uid": "1.2.826.0.1.2",
        "prior_series_instance_uid": "1.2.826.0.1.2.1",
        "prior_study_date": "2019-05-02",
        "selection_reasons": ["latest CT of the chest before the current study"],
        "registration": {"verdict": "accepted", "figures": {"ncc": 0.91, "overlap": 0.97}},
        "change": {"method": "model"},
        "paths": dict(PAIR_PATHS),
    }
    pair.update(overrides)
    return pair


def build(pairs: list[dict]) -> dict:
    return build_manifest(
        person_pseudonym="P-0123456789abcdef",
        current_study_uid=CURRENT_STUDY,
        current_series=[{"series_instance_uid": CURRENT_SERIES, "modality": "CT"}],
        pairs=pairs,
        job_id="job-1",
    )


def write_pair_files(package: Path) -> None:
    for value in PAIR_PATHS.values():
        for relative in value if isinstance(value, list) else [value]:
            path = package / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"content")


def test_manifest_written_and_read_back(tmp_path: Path) -> None:
    write_pair_files(tmp_path)
    manifest = build([make_pair()])

    path = write_manifest(tmp_path, manifest)

    written = json.loads(path.read_text())
    assert path.name == "manifest.json"
    assert written["schema_version"] == "1.0"
    assert written["current"]["study_instance_uid"] == CURRENT_STUDY
    entry = written["pairs"][0]
    assert entry["prior"]["series_instance_uid"] == "1.2.826.0.1.2.1"
    assert entry["registration"]["verdict"] == "accepted"
    assert entry["paths"]["dicom_outputs"] == []
    assert entry["paths"]["provenance"] == "provenance.json"


def test_held_back_pair_has_null_paths(tmp_path: Path) -> None:
    held_back = make_pair(
        registration={"verdict": "held back: overlap 0.2 below 0.5"},
        change={},
        paths={"provenance": "provenance.json"},
    )
    (tmp_path / "provenance.json").write_text("{}")

    write_manifest(tmp_path, build([held_back]))

    entry = json.loads((tmp_path / "manifest.json").read_text())["pairs"][0]
    assert entry["paths"]["registered_prior"] is None
    assert entry["paths"]["change_maps"] == []
    assert entry["registration"]["figures"] == {}


def test_write_rejects_missing_file(tmp_path: Path) -> None:
    manifest = build([make_pair()])

    with pytest.raises(ManifestError, match="pair #0 names 'pairs/0/prior_to_current.tfm'"):
        write_manifest(tmp_path, manifest)
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize("bad_path", ["/etc/passwd", "../outside.nii.gz", "pairs\\0\\x.tfm"])
def test_build_rejects_unsafe_paths(bad_path: str) -> None:
    pair = make_pair(paths={**PAIR_PATHS, "transform": bad_path})

    with pytest.raises(ManifestError, match="must be relative to the package folder"):
        build([pair])


def test_build_requires_pair_fields() -> None:
    pair = make_pair()
    del pair["prior_series_instance_uid"]

    with pytest.raises(ManifestError, match="pair #0: missing prior_series_instance_uid"):
        build([pair])


def test_build_rejects_unknown_path_field() -> None:
    pair = make_pair(paths={**PAIR_PATHS, "overlay": "pairs/0/overlay.png"})

    with pytest.raises(ManifestError, match="unknown path fields overlay"):
        build([pair])


def test_schema_rejects_bad_uid() -> None:
    pair = make_pair(prior_study_instance_uid="not-a-uid")

    with pytest.raises(ManifestError, match="pairs/0/prior/study_instance_uid"):
        build([pair])


def test_docs_schema_matches_code() -> None:
    written = json.loads((REPO_ROOT / "docs" / "context-package.schema.json").read_text())

    assert written == MANIFEST_SCHEMA
