"""The main job on a small synthetic cohort, run twice: pairs, MLflow runs, re-runs.

The cohort's ground truth gives the true rigid transform of every pair, so the
registration of each finished pair is scored here too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from priors.config import load_settings
from priors.distributed import REGISTERED_MODEL_NAME, run_prepare_job
from priors.synthetic import write_cohort
from priors.synthetic.cohort import MASK_FOLDER

# Registration error allowed at lesion centres, mm: a few voxels of the small cohort.
MAX_LESION_CENTRE_ERROR_MM = 2.0


@pytest.fixture(scope="module")
def demo_runs(ray_session, tmp_path_factory):
    """Write a small cohort, run the job on it twice, return both reports."""
    root = tmp_path_factory.mktemp("demo")
    cohort = root / "cohort"
    write_cohort(cohort, seed=3, matrix=64, coverage_mm=120.0)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("PRIORS_HOME", str(root / "home"))
    monkeypatch.setenv("PRIORS_PSEUDONYM_KEY", "demo-test-key")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PRIORS_CONFIG", raising=False)
    sources = sorted(p for p in cohort.iterdir() if p.is_dir() and p.name != MASK_FOLDER)
    try:
        settings = load_settings()
        first = run_prepare_job(sources, out_dir=root / "out", settings=settings,
                                job_name="demo-test", use_ray=True)
        second = run_prepare_job(sources, out_dir=root / "out", settings=settings,
                                 job_name="demo-test", use_ray=True)
    finally:
        monkeypatch.undo()
    truth = json.loads((cohort / "ground_truth.json").read_text())
    return first, second, root, truth, settings


def _client(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'home' / 'mlflow.db'}")


def test_demo_every_person_has_pairs(demo_runs):
    first, _, _, truth, _ = demo_runs
    assert first.ok
    assert len(first.persons) == len(truth["persons"])
    assert {row["status"] for row in first.pairs} == {"finished"}
    persons_with_pairs = {row["person"] for row in first.pairs}
    assert len(persons_with_pairs) == len(truth["persons"])


def test_demo_counts_add_up(demo_runs):
    first, *_ = demo_runs
    counts = first.counts
    assert counts["found"] == (counts["used"] + counts["indexed"] + counts["skipped"]
                               + counts["rejected"])
    assert counts["rejected"] == 0
    assert counts["used"] > 0
    assert counts["skipped"] > 0  # localizers and dose reports are not paired


def test_demo_in_scope_pairs_use_model(demo_runs):
    first, *_ = demo_runs
    assert {row["method"] for row in first.pairs} == {"model"}
    assert first.registered_model["name"] == REGISTERED_MODEL_NAME


def test_demo_registration_matches_truth(demo_runs):
    first, _, root, truth, _ = demo_runs
    expected = {}
    for person in truth["persons"]:
        for pair in person["pairs"]:
            key = (pair["current_study_instance_uid"], pair["prior_study_instance_uid"])
            expected[key] = np.array(pair["current_to_prior_lps"])
    checked = 0
    for manifest_path in (root / "out").rglob("manifest.json"):
        manifest = json.loads(manifest_path.read_text())
        for pair in manifest["pairs"]:
            key = (manifest["current"]["study_instance_uid"],
                   pair["prior"]["study_instance_uid"])
            found = np.array(pair["registration"]["matrix_lps"])
            true = expected[key]
            # Points spread over the chest, in the current scan's frame (LPS mm).
            points = np.array([[x, y, z, 1.0] for x in (-100, 100) for y in (-60, 60)
                               for z in (-50, 50)])
            error = np.linalg.norm((points @ found.T - points @ true.T)[:, :3], axis=1)
            assert error.max() < MAX_LESION_CENTRE_ERROR_MM, (key, error.max())
            checked += 1
    assert checked == len(first.pairs)


def test_demo_pair_runs_have_datasets(demo_runs):
    first, _, root, *_ = demo_runs
    client = _client(root)
    for row in first.pairs:
        run = client.get_run(row["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["priors.model.name"] == REGISTERED_MODEL_NAME
        digests = [item.dataset.digest for item in run.inputs.dataset_inputs]
        assert len(digests) == 2
        assert all(len(digest) == 32 for digest in digests)


def test_demo_rerun_skips_finished_pairs(demo_runs):
    first, second, root, *_ = demo_runs
    assert {row["status"] for row in second.pairs} == {"skipped"}
    assert len(second.pairs) == len(first.pairs)
    assert second.counts["used"] == first.counts["used"]
    client = _client(root)
    experiment = client.get_experiment_by_name("priors")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string="attributes.status = 'FINISHED'", max_results=1000)
    keys = [run.data.tags.get("priors.pair_key") for run in runs
            if run.data.tags.get("priors.pair_key")]
    assert len(keys) == len(first.pairs)
    assert len(set(keys)) == len(keys)
