"""A ``priors prepare`` process killed between persons, then run again.

The job opens a RUNNING run for every pair before the work starts and logs a
person's pairs when that person is done. Killed after the first person, it leaves
the second person's pair runs RUNNING. The next job must mark them KILLED, redo
their pairs and leave exactly one FINISHED run per pair key.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from priors.config import load_settings
from priors.distributed import run_prepare_job
from priors.synthetic import write_cohort
from priors.synthetic.cohort import MASK_FOLDER

REPO_ROOT = Path(__file__).resolve().parents[1]
# The first person's pairs are logged about 20 s after start on two shared cores;
# this leaves room for a busy machine.
FIRST_PERSON_TIMEOUT_S = 240.0
POLL_INTERVAL_S = 0.2

FINISHED_PAIRS = """
    SELECT count(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid
    WHERE tags.key = 'priors.kind' AND tags.value = 'pair' AND runs.status = 'FINISHED'
"""


def _finished_pair_runs(database: Path) -> int:
    if not database.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1.0) as connection:
            return connection.execute(FINISHED_PAIRS).fetchone()[0]
    except sqlite3.OperationalError:
        # Tables not created yet, or the store is locked by the job for a moment.
        return 0


@pytest.mark.slow
def test_killed_job_rerun_one_finished_per_pair(tmp_path, monkeypatch):
    cohort = tmp_path / "cohort"
    write_cohort(cohort, seed=7, n_patients=2, n_timepoints=2, matrix=48, coverage_mm=100.0)
    sources = sorted(p for p in cohort.iterdir() if p.is_dir() and p.name != MASK_FOLDER)
    home = tmp_path / "home"
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("MLFLOW_TRACKING_URI", "PRIORS_CONFIG")}
    environment.update({"PRIORS_HOME": str(home), "PRIORS_PSEUDONYM_KEY": "interrupt-key"})
    database = home / "mlflow.db"

    command = [sys.executable, "-m", "priors.cli", "prepare", *map(str, sources),
               "--out", str(tmp_path / "out"), "--no-ray", "--job-name", "killed"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + FIRST_PERSON_TIMEOUT_S
        # Two FINISHED runs: the first person's pairs are logged, the second's are not.
        while _finished_pair_runs(database) < 2:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no pair run FINISHED in time"
            time.sleep(POLL_INTERVAL_S)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        process.stderr.close()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("priors")
    killed_job = client.search_runs([experiment.experiment_id],
                                    "tags.`priors.kind` = 'job'")[0]
    pairs_before = client.search_runs([experiment.experiment_id],
                                      "tags.`priors.kind` = 'pair'")
    statuses = Counter(run.info.status for run in pairs_before)
    assert set(statuses) == {"FINISHED", "RUNNING"}, f"kill did not land between: {statuses}"
    left_running = [run for run in pairs_before if run.info.status == "RUNNING"]

    monkeypatch.setenv("PRIORS_HOME", str(home))
    monkeypatch.setenv("PRIORS_PSEUDONYM_KEY", "interrupt-key")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PRIORS_CONFIG", raising=False)
    report = run_prepare_job(sources, out_dir=tmp_path / "out", settings=load_settings(),
                             job_name="rerun", use_ray=False)

    rerun_statuses = Counter(row["status"] for row in report.pairs)
    assert rerun_statuses == {"skipped": statuses["FINISHED"], "finished": len(left_running)}
    pairs_after = client.search_runs([experiment.experiment_id], "tags.`priors.kind` = 'pair'")
    finished = {run.data.tags["priors.pair_key"]: run.info.run_id for run in pairs_after
                if run.info.status == "FINISHED"}
    finished_count = Counter(run.data.tags["priors.pair_key"] for run in pairs_after
                             if run.info.status == "FINISHED")
    assert len(finished) == len(pairs_before)
    assert set(finished_count.values()) == {1}

    for run in left_running:
        stale = client.get_run(run.info.run_id)
        assert stale.info.status == "KILLED"
        assert "has exited" in stale.data.tags["priors.stale_reason"]
        assert stale.data.tags["priors.superseded_by"] == finished[run.data.tags["priors.pair_key"]]
    assert client.get_run(killed_job.info.run_id).info.status == "KILLED"
    assert not [run for run in pairs_after if run.info.status == "RUNNING"]
