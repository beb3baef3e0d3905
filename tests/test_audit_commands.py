"""``priors audit`` verify, trace and report against a real job on a small cohort.

One job runs for the module (about 20 s on two shared cores): one person, two time
points, 48 x 48 pixel slices, so two pairs.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pydicom
import pytest

from priors.audit_command import report_command, trace_command, verify_command
from priors.cli import main
from priors.config import load_settings
from priors.distributed import REGISTERED_MODEL_NAME, run_prepare_job
from priors.provenance.digests import file_sha256
from priors.provenance.lineage import (
    LINEAGE_ARTIFACT,
    PROVENANCE_ARTIFACT,
    load_run_json,
    model_chain,
    open_client,
)
from priors.synthetic import write_cohort
from priors.synthetic.cohort import MASK_FOLDER

ENVIRONMENT = {"PRIORS_PSEUDONYM_KEY": "audit-test-key"}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Run the job once; yield its report, settings and a function that sets the env."""
    root = tmp_path_factory.mktemp("audit")
    cohort = root / "cohort"
    write_cohort(cohort, seed=5, n_patients=1, n_timepoints=2, matrix=48, coverage_mm=100.0)
    sources = sorted(p for p in cohort.iterdir() if p.is_dir() and p.name != MASK_FOLDER)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("PRIORS_HOME", str(root / "home"))
    monkeypatch.setenv("PRIORS_PSEUDONYM_KEY", ENVIRONMENT["PRIORS_PSEUDONYM_KEY"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PRIORS_CONFIG", raising=False)
    try:
        settings = load_settings()
        report = run_prepare_job(sources, out_dir=root / "out", settings=settings,
                                 job_name="audit-test", use_ray=False)
        yield report, settings, root
    finally:
        monkeypatch.undo()


def _pair_run_ids(report) -> list[str]:
    return [row["run_id"] for row in report.pairs if row["status"] == "finished"]


def _record(settings, run_id: str) -> dict:
    return load_run_json(open_client(settings.mlflow_tracking_uri), run_id, PROVENANCE_ARTIFACT)


def _verify(settings, run_id: str) -> tuple[int, str]:
    stream = io.StringIO()
    status = verify_command(run_id, settings=settings, stream=stream)
    return status, stream.getvalue()


def _flip_pixel_byte(path: Path) -> None:
    """Invert one byte in the middle of the file's Pixel Data value."""
    pixels = pydicom.dcmread(path).PixelData
    raw = bytearray(path.read_bytes())
    start = raw.rfind(pixels)
    assert start > 0, f"{path}: Pixel Data value not found verbatim in the file"
    raw[start + len(pixels) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_job_logged_two_pairs(job):
    report, _, _ = job
    assert len(_pair_run_ids(report)) == 2


def test_verify_cli_unchanged_exits_zero(job, monkeypatch, capsys):
    report, settings, root = job
    monkeypatch.setenv("PRIORS_HOME", str(root / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_id = _pair_run_ids(report)[0]
    status = main(["audit", "verify", run_id])
    output = capsys.readouterr().out
    assert status == 0
    assert "0 changed, 0 missing" in output
    assert "volume digests match the instances" in output
    assert output.count("unchanged ") == len(_record(settings, run_id)["instances"]["current"]
                                            + _record(settings, run_id)["instances"]["prior"])


def test_verify_flipped_pixel_byte_changed(job):
    report, settings, _ = job
    run_id = _pair_run_ids(report)[0]
    instance = _record(settings, run_id)["instances"]["prior"][3]
    path = Path(instance["location"])
    original = path.read_bytes()
    try:
        _flip_pixel_byte(path)
        status, output = _verify(settings, run_id)
    finally:
        path.write_bytes(original)
    assert status == 1
    changed = [line for line in output.splitlines() if line.startswith("changed")]
    assert len(changed) == 1
    assert instance["sop_instance_uid"] in changed[0]
    assert f"expected {instance['file_sha256']}" in changed[0]
    assert "1 changed, 0 missing" in output


def test_verify_deleted_file_missing(job):
    report, settings, root = job
    run_id = _pair_run_ids(report)[1]
    instance = _record(settings, run_id)["instances"]["current"][0]
    path = Path(instance["location"])
    aside = root / "aside.dcm"
    shutil.move(path, aside)
    try:
        status, output = _verify(settings, run_id)
    finally:
        shutil.move(aside, path)
    assert status == 1
    missing = [line for line in output.splitlines() if line.startswith("missing")]
    assert len(missing) == 1
    assert instance["sop_instance_uid"] in missing[0]
    assert "0 changed, 1 missing" in output


def test_verify_unknown_run_exits_two(job):
    _, settings, _ = job
    status, _ = _verify(settings, "0" * 32)
    assert status == 2


def test_lineage_index_lists_instances_and_outputs(job):
    report, settings, _ = job
    client = open_client(settings.mlflow_tracking_uri)
    run_id = _pair_run_ids(report)[0]
    index = load_run_json(client, run_id, LINEAGE_ARTIFACT)
    record = _record(settings, run_id)
    uids = {item["sop_instance_uid"] for items in record["instances"].values() for item in items}
    assert {item["sop_instance_uid"] for item in index["instances"]} == uids
    outputs = {item["path"]: item["sha256"] for item in index["outputs"]}
    assert PROVENANCE_ARTIFACT in outputs
    assert "preview.png" in outputs
    assert all(len(value) == 64 for value in outputs.values())
    run = client.get_run(run_id)
    assert run.data.tags["priors.instance_count"] == str(len(uids))
    # Instance lists are artifacts, not parameters: a handful of parameters per pair.
    assert len(run.data.params) < 50


@pytest.mark.parametrize("use_catalog", [True, False])
def test_trace_finds_only_the_run_that_used_it(job, use_catalog):
    report, settings, _ = job
    first, second = _pair_run_ids(report)
    instance = _record(settings, first)["instances"]["current"][2]
    stream = io.StringIO()
    status = trace_command(instance["sop_instance_uid"], settings=settings,
                           use_catalog=use_catalog, stream=stream)
    output = stream.getvalue()
    assert status == 0
    assert "used by 1 pair runs" in output
    assert f"run {first} FINISHED" in output
    assert second not in output
    assert instance["file_sha256"] in output
    assert "output preview.png sha256" in output


def test_trace_by_series_option(job):
    report, settings, _ = job
    run_id = _pair_run_ids(report)[1]
    instance = _record(settings, run_id)["instances"]["prior"][0]
    stream = io.StringIO()
    status = trace_command(instance["sop_instance_uid"], settings=settings,
                           series_instance_uids=[instance["series_instance_uid"]],
                           use_catalog=False, stream=stream)
    assert status == 0
    assert f"run {run_id} FINISHED" in stream.getvalue()
    assert "as prior" in stream.getvalue()


def test_trace_unknown_instance_exits_one(job):
    _, settings, _ = job
    stream = io.StringIO()
    status = trace_command("1.2.3.4.5.6.7", settings=settings, use_catalog=False, stream=stream)
    assert status == 1
    assert "used by 0 pair runs" in stream.getvalue()


def test_report_markdown_lists_lineage(job, tmp_path):
    report, settings, _ = job
    run_id = _pair_run_ids(report)[0]
    record = _record(settings, run_id)
    out = tmp_path / "lineage.md"
    assert report_command(run_id, settings=settings, out_path=out) == 0
    text = out.read_text()
    total = len(record["instances"]["current"]) + len(record["instances"]["prior"])
    for heading in ("## Sources", "## Instances", "## Identity link decisions",
                    "## Prior selection", "## Volumes", "## Registration", "## Change model",
                    "### Registered model and training", "## Outputs",
                    "## Code and libraries", "## Preview"):
        assert heading in text
    assert f"{total} instances" in text
    assert record["instances"]["prior"][0]["file_sha256"] in text
    assert record["instances"]["prior"][0]["pixel_sha256"] in text
    assert f"{REGISTERED_MODEL_NAME} version" in text
    assert f"Verdict: {record['registrations'][0]['verdict']}" in text
    assert record["software"]["libraries"]["pydicom"] in text
    assert "![preview of the pair](lineage.preview.png)" in text
    assert (tmp_path / "lineage.preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_html_embeds_preview(job, tmp_path):
    report, settings, _ = job
    run_id = _pair_run_ids(report)[1]
    out = tmp_path / "lineage.html"
    assert report_command(run_id, settings=settings, fmt="html", out_path=out) == 0
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert 'src="data:image/png;base64,iVBORw0KGgo' in text
    assert "<h2>Instances</h2>" in text
    assert not (tmp_path / "lineage.preview.png").exists()


def test_pair_runs_reach_model_training_record(job):
    report, settings, _ = job
    client = open_client(settings.mlflow_tracking_uri)
    for run_id in _pair_run_ids(report):
        run = client.get_run(run_id)
        assert run.data.tags["priors.model.name"] == REGISTERED_MODEL_NAME
        chain = model_chain(client, REGISTERED_MODEL_NAME, run.data.tags["priors.model.version"])
        assert chain["weights_sha256"] == run.data.params["model.weights_sha256"]
        assert chain["source_run_id"]
        source_run = client.get_run(chain["source_run_id"])
        assert source_run.info.status == "FINISHED"
        provenance = _record(settings, run_id)
        assert provenance["models"][0]["weights_sha256"] == chain["weights_sha256"]
        # The bundle's training record names the data generator, seed and training run.
        assert chain["generator_version"]
        assert chain["seed"]
        assert chain["training_run_id"]


def test_model_import_records_generator_and_seed(tmp_path):
    """A bundle whose metadata names its training data makes a navigable chain."""
    from priors.provenance.tracking import JobTracker

    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"weights for the chain test")
    metadata = {
        "version": "0.0.1",
        "training": {"generator": "priors.synthetic.pairs", "generator_version": "9.9",
                     "seed": 42, "mlflow_run_id": "abc123",
                     "held_out": {"metrics": {"dice": 0.5}}},
    }
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with JobTracker(tracking_uri=uri, experiment="chain", artifact_root=tmp_path / "artifacts",
                    job_name="chain", config={}, sources=[]) as tracker:
        info = tracker.ensure_registered_model(bundle, metadata, name="chain-model")
    chain = model_chain(open_client(uri), "chain-model", info["version"])
    assert chain["source_run_kind"] == "model_import"
    assert chain["generator_version"] == "9.9"
    assert chain["seed"] == "42"
    assert chain["training_run_id"] == "abc123"
    assert chain["training_run_in_store"] is False
    assert chain["weights_sha256"] == info["weights_sha256"]


def test_record_outputs_carry_sha256(job):
    report, settings, _ = job
    record = _record(settings, _pair_run_ids(report)[0])
    outputs = {item["name"]: item for item in record["outputs"]}
    assert "preview" in outputs
    for output in outputs.values():
        assert output["sha256"] is not None, output["name"]
        assert file_sha256(output["path"]) == output["sha256"]
