"""`ray job submit` runs the main job's entry point against a real local Ray head."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from priors.synthetic import write_cohort

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Starting a head and its dashboard takes about 10 s here; the job itself about 30 s.
SUBMIT_TIMEOUT_S = 600
AGENT_WAIT_ATTEMPTS = 24
AGENT_WAIT_S = 5


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """Start a Ray head bound to 127.0.0.1 with token authentication; stop it after."""
    import secrets

    # A token of this test's own, passed to the head and to `ray job submit`.
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    gcs_port, dashboard_port = _free_port(), _free_port()
    temp_dir = Path("/tmp") / f"ray-test-{os.getpid()}"
    start = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
             "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dashboard_port), "--num-cpus", "2",
             "--include-dashboard", "true", "--temp-dir", str(temp_dir), "--disable-usage-stats",
             # The suite's own local Ray already uses the default agent ports.
             "--dashboard-agent-listen-port", str(_free_port()),
             "--dashboard-agent-grpc-port", str(_free_port()),
             "--runtime-env-agent-port", str(_free_port()),
             "--metrics-export-port", str(_free_port())]
    subprocess.run(start, check=True, env=env, cwd=REPO_ROOT, capture_output=True, timeout=180)
    try:
        yield env, f"http://127.0.0.1:{dashboard_port}"
    finally:
        # `ray stop` would also end the suite's own local Ray, so end only the
        # processes of this head: those whose command line names its temp folder.
        _stop_processes_mentioning(str(temp_dir))


def _stop_processes_mentioning(text: str) -> None:
    import signal

    def matching() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry.name))
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in matching():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while matching() and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.mark.slow
def test_ray_job_submit_prepares_pairs(ray_head, tmp_path):
    env, address = ray_head
    cohort = write_cohort(tmp_path / "cohort", seed=9, n_patients=1, n_timepoints=2,
                          matrix=48, coverage_mm=100.0)
    home = tmp_path / "home"
    report_path = tmp_path / "report.json"
    sources = [str(path) for path in sorted(cohort.root.iterdir())
               if path.is_dir() and path.name != "ground_truth_masks"]
    runtime_env = {"env_vars": {"PRIORS_HOME": str(home), "PRIORS_PSEUDONYM_KEY": "submit-test"}}
    command = [str(BIN / "ray"), "job", "submit", "--address", address,
               "--runtime-env-json", json.dumps(runtime_env), "--",
               sys.executable, "jobs/prepare_priors.py", *sources,
               "--out", str(tmp_path / "out"), "--report", str(report_path)]
    # The head accepts connections before its dashboard agent can take jobs, and Ray
    # then rejects the submission with "No available agent", asking for a retry.
    for _ in range(AGENT_WAIT_ATTEMPTS):
        result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=SUBMIT_TIMEOUT_S)
        if "No available agent" not in result.stdout + result.stderr:
            break
        time.sleep(AGENT_WAIT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout + result.stderr

    report = json.loads(report_path.read_text())
    assert report["counts_add_up"]
    assert report["pairs"]
    assert {pair["status"] for pair in report["pairs"]} <= {"finished", "held back"}
    assert (home / "mlflow.db").is_file()
