"""MLflow tracking against a real SQLite store: datasets, re-runs, stale runs, models."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from priors.provenance.digests import pair_key, series_digest
from priors.provenance.tracking import (
    TAG_PAIR_KEY,
    TAG_STALE_REASON,
    TAG_SUPERSEDED_BY,
    TAG_WEIGHTS_SHA256,
    DatasetRef,
    JobTracker,
    PairLog,
    flatten_params,
)

mlflow = pytest.importorskip("mlflow")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store per module: creating its tables takes seconds."""
    return tmp_path_factory.mktemp("mlflow-store")


@pytest.fixture
def experiment() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def make_tracker(store: Path, experiment: str, *, job_name: str = "job") -> JobTracker:
    return JobTracker(
        tracking_uri=f"sqlite:///{store / 'mlflow.db'}",
        experiment=experiment,
        artifact_root=store / "mlartifacts",
        job_name=job_name,
        config={"registration": {"seed": 7, "levels": [4, 2, 1]}, "pseudonym_key": "k3y-vAlue"},
        sources=[{"kind": "folder", "id": "site-a", "root": "/data/site-a"}],
    )


def client(store: Path) -> mlflow.MlflowClient:
    uri = f"sqlite:///{store / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def digests(label: str) -> tuple[str, str]:
    current = series_digest({"1.2.3.1": hashlib.sha256(f"{label} current".encode()).hexdigest()})
    prior = series_digest({"1.2.4.1": hashlib.sha256(f"{label} prior".encode()).hexdigest()})
    return current, prior


def make_pair(tmp_path: Path, label: str, *, finished: bool = True) -> PairLog:
    current, prior = digests(label)
    key = pair_key(current, prior, registration_config={"seed": 7}, model_version="0.1.0")
    artifacts = tmp_path / f"artifacts-{label}"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "provenance.json").write_text(json.dumps({"label": label}))
    return PairLog(
        pair_key=key,
        run_name=f"pair {label}",
        tags={"priors.person": "P-0123456789abcdef", "priors.registration_verdict": "accepted"},
        params={"registration.seed": 7, "model.version": "0.1.0"},
        metrics={"registration.ncc": 0.93, "change.lesions": 2},
        inputs=[
            DatasetRef(
                name="current:1.2.3",
                source="folder:site-a@/data/site-a#series=1.2.3",
                digest=current,
                context="current",
                profile={"instances": 1, "modality": "CT"},
            ),
            DatasetRef(
                name="prior:1.2.4",
                source="folder:site-a@/data/site-a#series=1.2.4",
                digest=prior,
                context="prior",
                profile={"instances": 1, "modality": "CT"},
            ),
        ],
        artifacts_dir=artifacts,
        finished=finished,
    )


def pair_runs(store: Path, experiment: str, key: str) -> list:
    mlflow_client = client(store)
    experiment_id = mlflow_client.get_experiment_by_name(experiment).experiment_id
    return mlflow_client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_PAIR_KEY}` = '{key}'"
    )


def test_datasets_use_digest_prefix(store: Path, experiment: str, tmp_path: Path) -> None:
    pair = make_pair(tmp_path, "datasets")
    with make_tracker(store, experiment) as tracker:
        run_id = tracker.log_pair(pair)

    run = client(store).get_run(run_id)
    inputs = {
        {tag.key: tag.value for tag in item.tags}["mlflow.data.context"]: item
        for item in run.inputs.dataset_inputs
    }
    assert set(inputs) == {"current", "prior"}
    for ref in pair.inputs:
        logged = inputs[ref.context]
        assert logged.dataset.digest == ref.digest[:32]
        assert json.loads(logged.dataset.source)["uri"] == ref.source
        assert {tag.key: tag.value for tag in logged.tags}["priors.series_digest"] == ref.digest
    assert run.info.status == "FINISHED"
    assert run.data.metrics["registration.ncc"] == pytest.approx(0.93)
    assert run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    artifacts = [item.path for item in client(store).list_artifacts(run_id)]
    assert artifacts == ["lineage.json", "provenance.json"]


def test_rerun_skips_finished_pair(store: Path, experiment: str, tmp_path: Path) -> None:
    pair = make_pair(tmp_path, "rerun")
    with make_tracker(store, experiment, job_name="first") as first:
        first_run = first.log_pair(pair)

    with make_tracker(store, experiment, job_name="second") as second:
        finished = second.finished_pair_keys()
        assert finished == {pair.pair_key: first_run}
        second.log_skipped_pair(pair.pair_key, finished[pair.pair_key])
        # A caller that logs anyway still gets no second FINISHED run.
        assert second.log_pair(pair) == first_run
        assert len(second.skipped_pairs) == 2

    runs = pair_runs(store, experiment, pair.pair_key)
    assert [run.info.status for run in runs] == ["FINISHED"]
    second_job = client(store).get_run(second.parent_run_id)
    assert second_job.data.metrics["pairs_skipped"] == 2


def test_datasets_equal_across_jobs(store: Path, experiment: str, tmp_path: Path) -> None:
    pair = make_pair(tmp_path, "across")
    with make_tracker(store, experiment) as tracker:
        first = tracker.log_pair(pair)
    other_experiment = f"{experiment}-other"
    with make_tracker(store, other_experiment) as tracker:
        second = tracker.log_pair(pair)

    def digests_of(run_id: str) -> dict[str, str]:
        run = client(store).get_run(run_id)
        return {item.dataset.name: item.dataset.digest for item in run.inputs.dataset_inputs}

    assert first != second
    assert digests_of(first) == digests_of(second)


def test_failed_pair_redone_and_marked(store: Path, experiment: str, tmp_path: Path) -> None:
    failed = make_pair(tmp_path, "failed", finished=False)
    with make_tracker(store, experiment) as tracker:
        failed_run = tracker.log_pair(failed)
        assert tracker.finished_pair_keys() == {}

    redo = make_pair(tmp_path, "failed")
    with make_tracker(store, experiment) as tracker:
        new_run = tracker.log_pair(redo)

    old = client(store).get_run(failed_run)
    assert old.info.status == "FAILED"
    assert old.data.tags[TAG_SUPERSEDED_BY] == new_run
    assert client(store).get_run(new_run).info.status == "FINISHED"


KILLED_JOB_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from priors.provenance.tracking import JobTracker

    store, experiment, key = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    tracker = JobTracker(
        tracking_uri=f"sqlite:///{store / 'mlflow.db'}",
        experiment=experiment,
        artifact_root=store / "mlartifacts",
        job_name="killed",
        config={},
        sources=[],
    )
    tracker.__enter__()
    print(tracker.start_pair(key, run_name="pair in flight"), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_killed_job_pair_marked_and_redone(store: Path, experiment: str, tmp_path: Path) -> None:
    pair = make_pair(tmp_path, "killed")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_JOB_SCRIPT, str(store), experiment, pair.pair_key],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    stale_run = killed.stdout.strip()
    assert client(store).get_run(stale_run).info.status == "RUNNING"

    with make_tracker(store, experiment) as tracker:
        assert tracker.finished_pair_keys() == {}
        new_run = tracker.log_pair(pair)

    stale = client(store).get_run(stale_run)
    assert stale.info.status == "KILLED"
    assert "has exited" in stale.data.tags[TAG_STALE_REASON]
    assert stale.data.tags[TAG_SUPERSEDED_BY] == new_run
    statuses = sorted(run.info.status for run in pair_runs(store, experiment, pair.pair_key))
    assert statuses == ["FINISHED", "KILLED"]


def test_live_job_pair_not_marked(store: Path, experiment: str, tmp_path: Path) -> None:
    pair = make_pair(tmp_path, "live")
    with make_tracker(store, experiment, job_name="live") as live:
        running = live.start_pair(pair.pair_key, run_name="in flight")
        with make_tracker(store, experiment, job_name="other") as other:
            assert other.mark_stale_pair_runs() == 0
        assert client(store).get_run(running).info.status == "RUNNING"
        assert live.log_pair(pair) == running

    assert client(store).get_run(running).info.status == "FINISHED"


def test_crash_inside_job_fails_runs(store: Path, experiment: str, tmp_path: Path) -> None:
    pair = make_pair(tmp_path, "crash")
    with pytest.raises(RuntimeError, match="simulated"):
        with make_tracker(store, experiment) as tracker:
            started = tracker.start_pair(pair.pair_key, run_name="in flight")
            raise RuntimeError("simulated crash")

    assert client(store).get_run(tracker.parent_run_id).info.status == "FAILED"
    assert client(store).get_run(started).info.status == "FAILED"


def test_job_report_and_config(store: Path, experiment: str) -> None:
    with make_tracker(store, experiment) as tracker:
        tracker.log_job_report({"files": {"found": 5, "used": 3}}, counts={"found": 5, "used": 3})

    run = client(store).get_run(tracker.parent_run_id)
    assert run.data.params["registration.seed"] == "7"
    assert run.data.params["pseudonym_key"] == "<redacted>"
    assert run.data.metrics["count.used"] == 3
    local = Path(client(store).download_artifacts(tracker.parent_run_id, "config.json"))
    assert json.loads(local.read_text())["pseudonym_key"] == "<redacted>"
    experiment_row = client(store).get_experiment_by_name(experiment)
    assert experiment_row.artifact_location == (store / "mlartifacts").resolve().as_uri()


def make_bundle(root: Path, *, weights: bytes = b"weights v1") -> tuple[Path, dict]:
    bundle = root / "ct_chest_change"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    (bundle / "models" / "model.pt").write_bytes(weights)
    metadata = {
        "version": "0.1.0",
        "training": {
            "generator_version": "1",
            "seed": 11,
            "mlflow_run_id": "0123456789abcdef0123456789abcdef",
            "held_out_metrics": {"lesion_f1_5mm": 0.92, "per_class": {"new": 0.95}},
        },
    }
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return bundle, metadata


def test_registered_model_idempotent(store: Path, experiment: str, tmp_path: Path) -> None:
    bundle, metadata = make_bundle(tmp_path)
    name = f"model-{experiment}"

    with make_tracker(store, experiment) as tracker:
        first = tracker.ensure_registered_model(bundle, metadata, name=name)
        again = tracker.ensure_registered_model(bundle, metadata, name=name)
    with make_tracker(store, experiment) as tracker:
        later = tracker.ensure_registered_model(bundle, metadata, name=name)

    assert first == again == later
    versions = client(store).search_model_versions(f"name = '{name}'")
    assert len(versions) == 1
    weights_sha256 = hashlib.sha256(b"weights v1").hexdigest()
    assert versions[0].tags[TAG_WEIGHTS_SHA256] == weights_sha256
    import_run = client(store).get_run(first["run_id"])
    assert import_run.info.run_name == "model import"
    assert import_run.data.params["training.seed"] == "11"
    assert import_run.data.tags["priors.training_run_id"] == metadata["training"]["mlflow_run_id"]
    assert import_run.data.metrics["held_out_metrics.lesion_f1_5mm"] == pytest.approx(0.92)
    logged = [item.path for item in client(store).list_artifacts(first["run_id"], "bundle")]
    assert logged == ["bundle/configs", "bundle/models"]


def test_new_weights_get_new_version(store: Path, experiment: str, tmp_path: Path) -> None:
    name = f"model-{experiment}"
    first_bundle, metadata = make_bundle(tmp_path / "a")
    second_bundle, _ = make_bundle(tmp_path / "b", weights=b"weights v2")

    with make_tracker(store, experiment) as tracker:
        first = tracker.ensure_registered_model(first_bundle, metadata, name=name)
        second = tracker.ensure_registered_model(second_bundle, metadata, name=name)

    assert (first["version"], second["version"]) == ("1", "2")


def test_registered_model_checks_stated_sha(store: Path, experiment: str, tmp_path: Path) -> None:
    bundle, metadata = make_bundle(tmp_path)
    metadata["weights_sha256"] = "f" * 64

    with make_tracker(store, experiment) as tracker:
        with pytest.raises(ValueError, match="SHA-256 is .* but configs/metadata.json states"):
            tracker.ensure_registered_model(bundle, metadata, name=f"model-{experiment}")


def test_store_holds_no_identifiers(store: Path, experiment: str, tmp_path: Path) -> None:
    from test_provenance_record import make_record

    from priors.pseudonym import Pseudonymizer

    identifiers = {
        "patient_name": "Testperson^Quintessa",
        "patient_id": "QX-551-20931",
        "birth_date": "19610317",
        "accession_number": "ACQZ88120",
    }
    pseudonymizer = Pseudonymizer(b"fixture-key-for-tests")
    person = pseudonymizer.person([("site-a", identifiers["patient_id"])])
    record = make_record()
    record.person_pseudonym = person
    pair = make_pair(tmp_path, "privacy")
    record.write_json(pair.artifacts_dir / "provenance.json")
    pair.tags = {**pair.tags, "priors.person": person}
    bundle, metadata = make_bundle(tmp_path)

    with make_tracker(store, experiment) as tracker:
        tracker.log_pair(pair)
        tracker.ensure_registered_model(bundle, metadata, name=f"model-{experiment}")
        tracker.log_job_report({"person": person}, counts={"pairs": 1})

    stored = b""
    for path in [*store.glob("mlflow.db*"), *(store / "mlartifacts").rglob("*")]:
        if path.is_file():
            stored += path.read_bytes()
    assert person.encode() in stored
    assert b"k3y-vAlue" not in stored
    for field, value in identifiers.items():
        assert value.encode() not in stored, field


def test_flatten_params_redacts_and_cuts() -> None:
    params = flatten_params(
        {"a": {"b": [1, 2]}, "api_token": "t0ken", "empty_key": "", "long": "x" * 7000},
        redact_secrets=True,
    )

    assert params["a.b"] == "[1, 2]"
    assert params["api_token"] == "<redacted>"
    assert params["empty_key"] == ""
    assert len(params["long"]) == 6000
    assert params["long"].endswith("...")


def test_tracker_outside_with_raises(store: Path, experiment: str, tmp_path: Path) -> None:
    tracker = make_tracker(store, experiment)

    with pytest.raises(RuntimeError, match="outside its 'with' block"):
        tracker.log_pair(make_pair(tmp_path, "outside"))


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX process ids only")
def test_pid_check_sees_own_process() -> None:
    from priors.provenance._processes import process_exists, process_start_ticks

    assert process_exists(os.getpid())
    if Path("/proc/self/stat").exists():
        assert process_start_ticks(os.getpid()) is not None
