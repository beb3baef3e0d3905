"""Measure the time the prepare job spends in MLflow per pair, against the pair's wall time.

Writes a synthetic cohort (the demo's by default) and runs the job in this process,
without Ray, on a fresh priors home folder. Prints per pair the wall time, the
MLflow time and their ratio. The MLflow time is that of ``JobTracker.start_pair``
and ``JobTracker.log_pair``: run creation, tags, parameters, metrics, datasets,
artifacts and the lineage index.

A pair's wall time is its person's ``prepare_person`` time divided by the person's
pair count, plus the pair's MLflow time. Job-level MLflow work (job run, model
registration, job report) is not counted; the job's total time is printed beside.

With ``--instances N`` it instead logs one pair whose ``provenance.json`` lists N
made-up instances, to time ``log_pair`` for series far larger than the demo's.

Usage::

    .venv/bin/python benchmarks/mlflow_overhead.py [--patients 3] [--timepoints 3]
    .venv/bin/python benchmarks/mlflow_overhead.py --instances 5000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3, help="persons in the cohort")
    parser.add_argument("--timepoints", type=int, default=3, help="studies per person")
    parser.add_argument("--matrix", type=int, default=None,
                        help="pixels per slice side (default: the generator's)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default: 0)")
    parser.add_argument("--workdir", help="folder for cohort, home and packages (default: temp)")
    parser.add_argument("--instances", type=int, default=0,
                        help="time log_pair alone for one pair with this many instances")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="priors-mlflow-overhead-"))
    os.environ["PRIORS_HOME"] = str(workdir / "home")
    os.environ.setdefault("PRIORS_PSEUDONYM_KEY", "benchmark-key")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("PRIORS_CONFIG", None)
    if args.instances:
        return time_large_pair(workdir, args.instances)

    import priors.pipeline
    import priors.provenance.tracking as tracking
    from priors.config import load_settings
    from priors.distributed import run_prepare_job
    from priors.synthetic import write_cohort
    from priors.synthetic.cohort import MASK_FOLDER

    cohort = workdir / "cohort"
    if not (cohort / "ground_truth.json").is_file():
        options: dict[str, Any] = {"n_patients": args.patients, "n_timepoints": args.timepoints}
        if args.matrix:
            options["matrix"] = args.matrix
        write_cohort(cohort, seed=args.seed, **options)
    sources = sorted(p for p in cohort.iterdir() if p.is_dir() and p.name != MASK_FOLDER)

    # Pair key -> its share of the person's prepare_person time, in seconds.
    compute_seconds: dict[str, float] = {}
    original_prepare = priors.pipeline.prepare_person

    def timed_prepare(task: Any, **kwargs: Any) -> Any:
        clock = time.perf_counter()
        result = original_prepare(task, **kwargs)
        share = (time.perf_counter() - clock) / max(len(task.pairs), 1)
        for pair in result.pairs:
            compute_seconds[pair.pair_key] = share
        return result

    trackers: list[tracking.JobTracker] = []
    original_enter = tracking.JobTracker.__enter__

    def recording_enter(self: tracking.JobTracker) -> tracking.JobTracker:
        trackers.append(self)
        return original_enter(self)

    priors.pipeline.prepare_person = timed_prepare  # type: ignore[assignment]
    tracking.JobTracker.__enter__ = recording_enter  # type: ignore[method-assign]

    report = run_prepare_job(sources, out_dir=workdir / "out", settings=load_settings(),
                             job_name="mlflow-overhead", use_ray=False)
    tracker = trackers[0]

    print(f"{'pair key':<18} {'wall s':>8} {'MLflow s':>9} {'ratio':>7}")
    total_wall = total_mlflow = 0.0
    for pair_key, mlflow_seconds in tracker.logging_seconds.items():
        wall = compute_seconds.get(pair_key, 0.0) + mlflow_seconds
        total_wall += wall
        total_mlflow += mlflow_seconds
        print(f"{pair_key[:16]:<18} {wall:8.2f} {mlflow_seconds:9.3f} "
              f"{mlflow_seconds / wall:7.2%}")
    if total_wall:
        print(f"{'all pairs':<18} {total_wall:8.2f} {total_mlflow:9.3f} "
              f"{total_mlflow / total_wall:7.2%}")
    pairs_seconds = report.timings.get("pairs_s", 0.0)
    print(f"job: {report.timings.get('total_s', 0.0):.1f} s in all, of which "
          f"{pairs_seconds:.1f} s computing and logging {len(report.pairs)} pairs")
    print(f"cohort, home and packages in {workdir}")
    return 0


def time_large_pair(workdir: Path, count: int) -> int:
    """Log one pair with ``count`` made-up instances and print the time of each step."""
    from priors.provenance.tracking import DatasetRef, JobTracker, PairLog

    artifacts = workdir / "pair"
    artifacts.mkdir(parents=True, exist_ok=True)
    instances = []
    for index in range(count):
        uid = f"2.25.{index + 1}"
        instances.append({
            "sop_instance_uid": uid, "series_instance_uid": "2.25.900",
            "study_instance_uid": "2.25.901", "source_id": "folder:/bench",
            "location": f"/bench/IM{index:06d}.dcm", "transfer_syntax_uid": "1.2.840.10008.1.2.1",
            "file_sha256": hashlib.sha256(f"file {uid}".encode()).hexdigest(),
            "pixel_sha256": hashlib.sha256(f"pixels {uid}".encode()).hexdigest(),
        })
    record = {"job_id": "bench", "instances": {"current": instances, "prior": []},
              "volumes": []}
    (artifacts / "provenance.json").write_text(json.dumps(record), encoding="utf-8")

    home = workdir / "home"
    with JobTracker(tracking_uri=f"sqlite:///{home / 'mlflow.db'}", experiment="overhead",
                    artifact_root=home / "mlartifacts", job_name="large pair", config={},
                    sources=[]) as tracker:
        digest = hashlib.sha256(b"series").hexdigest()
        pair = PairLog(
            pair_key=hashlib.sha256(f"large {count} {time.time()}".encode()).hexdigest(),
            run_name=f"{count} instances", tags={"priors.person": "P-bench"},
            params={"registration.seed": 1}, metrics={"registration.ncc": 0.9},
            inputs=[DatasetRef(name="current:2.25.900", source="folder:/bench#series=2.25.900",
                               digest=digest, context="current")],
            artifacts_dir=artifacts)
        clock = time.perf_counter()
        tracker.log_pair(pair)
        seconds = time.perf_counter() - clock
    size = (artifacts / "provenance.json").stat().st_size
    print(f"log_pair of one pair with {count} instances ({size / 1e6:.1f} MB provenance.json): "
          f"{seconds:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
