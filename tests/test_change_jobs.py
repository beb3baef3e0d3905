"""The training and evaluation jobs, run as users run them, on a few pairs and seconds.

The training job runs its work in a Ray task on a local Ray it starts itself, logs
to an MLflow store in the test's priors home and registers the bundle there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from priors.change.model import sha256_file

REPOSITORY = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(arguments: list[str], home: Path) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "PRIORS_HOME": str(home),
        "PRIORS_PSEUDONYM_KEY": "test-key-not-secret",
    }
    environment.pop("RAY_ADDRESS", None)
    environment.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    home = tmp_path_factory.mktemp("priors-home")
    bundle = tmp_path_factory.mktemp("bundle")
    result = _run(
        [
            "jobs/train_change_model.py",
            "--out", str(bundle),
            "--pairs", "6",
            "--minutes", "0.15",
            "--validation-pairs", "3",
            "--held-out-pairs", "3",
            "--threads", "1",
            "--ray", "on",
        ],
        home,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return home, bundle, json.loads(result.stdout)


def test_training_writes_a_loadable_bundle(trained):
    from priors.change.model import load_change_model

    _, bundle, record = trained
    model = load_change_model(bundle, device="cpu", torch_threads=1)

    assert model.weights_sha256 == sha256_file(bundle / "models" / "model.pt")
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["training"]["mlflow_run_id"] == record["mlflow_run_id"]
    assert metadata["training"]["pairs_seen"] >= 6
    assert metadata["training"]["streamed"] is True


def test_training_writes_the_chosen_postprocessing(trained):
    _, bundle, record = trained
    inference = json.loads((bundle / "configs" / "inference.json").read_text())

    chosen = record["postprocessing"]["chosen"]
    assert set(chosen) == {"change_threshold", "min_peak", "min_volume_mm3", "border_margin_mm"}
    for key, value in chosen.items():
        assert inference["postprocessing"][key] == value


def test_training_registers_the_bundle_in_mlflow(trained):
    import mlflow
    from mlflow import MlflowClient

    home, bundle, record = trained
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    try:
        client = MlflowClient()
        versions = client.search_model_versions("name='priors-ct-chest-change'")
        run = client.get_run(record["mlflow_run_id"])
    finally:
        mlflow.set_tracking_uri("")

    assert len(versions) == 1
    assert versions[0].run_id == record["mlflow_run_id"]
    assert versions[0].tags["weights_sha256"] == sha256_file(bundle / "models" / "model.pt")
    assert run.data.params["generator_version"]
    assert "train.loss" in run.data.metrics
    assert "held_out.model.lesion_f1_5mm" in run.data.metrics


def test_evaluation_writes_the_json_table(trained, tmp_path):
    home, bundle, _ = trained
    output = tmp_path / "evaluation.json"

    result = _run(
        [
            "jobs/evaluate_change_model.py",
            "--bundle", str(bundle),
            "--pairs", "3",
            "--threads", "1",
            "--json", str(output),
        ],
        home,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    reports = json.loads(output.read_text())
    assert set(reports) == {"model", "baseline"}
    for report in reports.values():
        assert 0.0 <= report["lesion_f1_5mm"] <= 1.0
        assert report["fp_per_no_change_pair"] >= 0.0
        assert set(report["per_class"]) == {"new_or_grown", "resolved_or_shrunk"}
    assert "lesion F1, changes >= 5 mm" in result.stdout


def test_training_without_steps_writes_nothing(tmp_path):
    bundle = tmp_path / "bundle"

    result = _run(
        [
            "jobs/train_change_model.py",
            "--out", str(bundle),
            "--pairs", "2",
            "--minutes", "1e-9",
            "--threads", "1",
            "--ray", "off",
            "--no-mlflow",
        ],
        tmp_path / "home",
    )

    assert result.returncode == 1
    assert "training ran no step" in result.stderr
    assert not (bundle / "models" / "model.pt").exists()
