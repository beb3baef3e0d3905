"""The driver of a prepare job: plan, fan out per person on Ray, log, report.

Ray workers run :func:`priors.pipeline.prepare_person` and return its results; this
driver alone writes the catalog and MLflow, so SQLite never has two writers. Each
worker is an actor that loads the change model once and keeps it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from priors.config import Settings
from priors.pipeline import FAILED, SKIPPED, PersonResult, PersonTask, unused_reason
from priors.planning import resolve_bundle_dir
from priors.report import JobReport

__all__ = ["resolve_bundle_dir", "run_demo", "run_prepare_job"]

log = logging.getLogger(__name__)

REGISTERED_MODEL_NAME = "priors-ct-chest-change"


def run_demo(
    *,
    settings: Settings,
    seed: int = 0,
    cohort_dir: Path | None = None,
    out_dir: Path | None = None,
    use_ray: bool = True,
) -> JobReport:
    """Write the synthetic cohort once, then run the prepare job on all its sources."""
    from priors.synthetic import write_cohort

    demo_root = Path(settings.home) / "demo"
    cohort_dir = cohort_dir or demo_root / f"cohort-seed{seed}"
    out_dir = out_dir or demo_root / "packages"
    marker = cohort_dir / "ground_truth.json"
    if marker.is_file():
        log.info("reusing the synthetic cohort in %s", cohort_dir)
    else:
        started = time.perf_counter()
        write_cohort(cohort_dir, seed=seed)
        log.info("wrote the synthetic cohort to %s in %.1f s", cohort_dir,
                 time.perf_counter() - started)
    from priors.synthetic.cohort import MASK_FOLDER

    # Every folder of the cohort is a source except the ground-truth masks.
    sources = sorted(path for path in cohort_dir.iterdir()
                     if path.is_dir() and path.name != MASK_FOLDER)
    return run_prepare_job(sources, out_dir=out_dir, settings=settings,
                           job_name="demo", use_ray=use_ray)


def run_prepare_job(
    sources: Sequence[str | os.PathLike[str]],
    *,
    out_dir: Path,
    settings: Settings,
    issuers: Mapping[str, str] | None = None,
    job_name: str = "prepare",
    use_ray: bool = True,
    cross_reference: str | os.PathLike[str] | None = None,
) -> JobReport:
    """Run the main job over the sources and return its report.

    Parameters
    ----------
    sources
        Folders, ZIP files or DICOMDIR media folders.
    out_dir
        Where the context packages go, one folder per current study.
    settings
        Loaded settings (catalog, MLflow, registration, model).
    issuers
        Issuer of Patient ID per resolved source path, for sources without one.
    job_name
        Name of the MLflow parent run.
    use_ray
        Fan the per-person work out on Ray (local ``ray.init()`` unless
        ``RAY_ADDRESS`` or ``ray_address`` names a cluster); otherwise run it here.
    cross_reference
        CSV of (issuer_a, id_a, issuer_b, id_b) rows naming records of one person, as a
        PIX manager provides them; None for none.
    """
    from priors.planning import account_job, plan_job
    from priors.provenance.tracking import JobTracker

    job_id = uuid.uuid4().hex[:12]
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = Path(out_dir).resolve()
    bundle_dir = resolve_bundle_dir(settings)

    plan = plan_job(list(sources), settings=settings,
                    issuers=dict(issuers or {}), out_dir=out_dir, job_id=job_id,
                    cross_reference=Path(cross_reference) if cross_reference else None)
    timings["plan_s"] = time.perf_counter() - started
    report = JobReport(job_id=job_id, out_dir=str(out_dir),
                       mlflow_tracking_uri=settings.mlflow_tracking_uri,
                       mlflow_experiment=settings.mlflow_experiment,
                       warnings=list(plan.warnings), persons=plan.persons_summary)

    with JobTracker(tracking_uri=settings.mlflow_tracking_uri,
                    experiment=settings.mlflow_experiment,
                    artifact_root=settings.mlflow_artifact_root, job_name=job_name,
                    config=settings.as_dict(), sources=plan.source_descriptions) as tracker:
        report.parent_run_id = tracker.parent_run_id
        stale = tracker.mark_stale_pair_runs()
        if stale:
            log.info("marked %d pair runs of interrupted jobs as killed", stale)
        model_info = _registered_model(tracker, bundle_dir)
        report.registered_model = model_info
        finished = tracker.finished_pair_keys()
        tasks, used, unused = _drop_finished_pairs(plan.tasks, finished, report,
                                                   tracker=tracker)
        for task in tasks:
            task.provenance_base["registered_model"] = model_info
        _start_pair_runs(tracker, tasks)

        clock = time.perf_counter()
        results = _run_tasks(tasks, settings=settings, bundle_dir=bundle_dir, use_ray=use_ray)
        rejected: dict[str, str] = {}
        for person_result in results:
            _log_person(person_result, tracker=tracker, plan=plan, report=report,
                        finished=finished, model_info=model_info)
            for pair in person_result.pairs:
                if pair.status != FAILED:
                    used.update(row["location"] for row in pair.used_instances)
                rejected.update((row["location"], row["reason"]) for row in pair.rejected_files)
                unused.update((row["location"], row["reason"]) for row in pair.unused_files)
        timings["pairs_s"] = time.perf_counter() - clock

        for location in used:
            unused.pop(location, None)
        plan.not_chosen.update(unused)
        report.counts, report.file_reasons = account_job(plan, used, rejected)
        report.absent_references = plan.absent_references
        timings["total_s"] = time.perf_counter() - started
        report.timings = timings
        tracker.log_job_report(report.to_dict(), counts=report.counts)
    log.info("job %s done: %s", job_id, {k: report.counts.get(k) for k in report.counts})
    return report


def _registered_model(tracker: Any, bundle_dir: Path) -> dict[str, Any]:
    import json

    metadata_path = bundle_dir / "configs" / "metadata.json"
    if not _bundle_complete(bundle_dir):
        log.warning("no complete model bundle at %s: pairs get the subtraction baseline",
                    bundle_dir)
        return {}
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    return tracker.ensure_registered_model(bundle_dir, metadata, name=REGISTERED_MODEL_NAME)


def _drop_finished_pairs(tasks: list[PersonTask], finished: Mapping[str, str],
                         report: JobReport, *, tracker: Any
                         ) -> tuple[list[PersonTask], set[str], dict[str, str]]:
    """Remove pairs whose key already has a finished run; report them as skipped.

    Returns the remaining tasks, the locations of the skipped pairs' instances that
    count as used (they are part of volumes of pairs prepared before), and the other
    files of those pairs' series with the reason they were left out.
    """
    kept = []
    reused: set[str] = set()
    left_out: dict[str, str] = {}
    for task in tasks:
        pairs = []
        for pair in task.pairs:
            existing = finished.get(pair.pair_key or "")
            if existing:
                report.pairs.append(_pair_row(task.person, pair.current.summary(),
                                              pair.prior.summary(), SKIPPED,
                                              f"finished before in run {existing}", "", ""))
                tracker.log_skipped_pair(pair.pair_key or "", existing)
                pair_used = _used_locations(task, pair)
                reused.update(pair_used)
                for series in (pair.current, pair.prior):
                    left_out.update((ref.location, unused_reason(series.series_instance_uid))
                                    for ref in series.instances
                                    if ref.location not in pair_used)
                continue
            pairs.append(pair)
        task.pairs = pairs
        if pairs:
            kept.append(task)
    return kept, reused, left_out


def _start_pair_runs(tracker: Any, tasks: Sequence[PersonTask]) -> None:
    """Open a RUNNING pair run for each pair before the work starts.

    A job that dies leaves these runs RUNNING; the next job marks them KILLED and
    redoes their pairs, so no run of an unfinished pair looks finished.
    """
    for task in tasks:
        for pair in task.pairs:
            if not pair.pair_key:
                continue
            tracker.start_pair(pair.pair_key, run_name=f"{task.person} {pair.pair_id}", tags={
                "priors.person": task.person,
                "priors.current.study_instance_uid": pair.current.study_instance_uid,
                "priors.current.series_instance_uid": pair.current.series_instance_uid,
                "priors.prior.study_instance_uid": pair.prior.study_instance_uid,
                "priors.prior.series_instance_uid": pair.prior.series_instance_uid,
            })


def _used_locations(task: PersonTask, pair: Any) -> set[str]:
    """Return the instance locations a finished pair used, from its provenance.json.

    Falls back to every instance of the two series when the package of the earlier
    run is not in this job's output folder.
    """
    import json

    path = task.package_dir / "pairs" / pair.pair_id / "provenance.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return {row["location"] for rows in record["instances"].values() for row in rows}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return ({ref.location for ref in pair.current.instances}
                | {ref.location for ref in pair.prior.instances})


def _run_tasks(tasks: list[PersonTask], *, settings: Settings, bundle_dir: Path,
               use_ray: bool) -> Iterator[PersonResult]:
    if not tasks:
        return iter(())
    if use_ray:
        return _run_on_ray(tasks, settings=settings, bundle_dir=bundle_dir)
    return _run_here(tasks, settings=settings, bundle_dir=bundle_dir)


def _run_here(tasks: list[PersonTask], *, settings: Settings,
              bundle_dir: Path) -> Iterator[PersonResult]:
    from priors.pipeline import prepare_person

    worker = _ModelHolder(settings, bundle_dir)
    for index, task in enumerate(tasks, start=1):
        log.info("person %d of %d (%s): %d pairs", index, len(tasks), task.person,
                 len(task.pairs))
        yield prepare_person(task, settings=settings, model_loader=worker.model)


def _run_on_ray(tasks: list[PersonTask], *, settings: Settings,
                bundle_dir: Path) -> Iterator[PersonResult]:
    import ray
    from ray.util import ActorPool

    if not ray.is_initialized():
        address = settings.ray_address or os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, include_dashboard=False,
                 num_cpus=(settings.ray_num_cpus or None) if address is None else None,
                 logging_level=logging.WARNING, log_to_driver=True)
    cpus = int(ray.available_resources().get("CPU", 1)) or 1
    size = max(1, min(len(tasks), cpus))
    actor = ray.remote(num_cpus=1, max_restarts=1, max_task_retries=1)(_PersonWorker)
    workers = [actor.remote(settings, str(bundle_dir)) for _ in range(size)]
    log.info("running %d persons on %d Ray workers", len(tasks), size)
    pool = ActorPool(workers)
    done = 0
    for result in pool.map_unordered(lambda worker, task: worker.prepare.remote(task), tasks):
        done += 1
        log.info("person %d of %d done (%s)", done, len(tasks), result.person)
        yield result
    for worker in workers:
        ray.kill(worker)  # type: ignore[arg-type]


def _bundle_complete(bundle_dir: Path) -> bool:
    """Return True when the bundle has its metadata and its weights."""
    return ((bundle_dir / "configs" / "metadata.json").is_file()
            and (bundle_dir / "models" / "model.pt").is_file())


class _ModelHolder:
    """Loads the change model at first use and keeps it for later pairs."""

    def __init__(self, settings: Settings, bundle_dir: Path) -> None:
        self._settings = settings
        self._bundle_dir = Path(bundle_dir)
        self._model: Any = None
        self._loaded = False

    def model(self) -> Any:
        if not self._loaded:
            self._loaded = True
            if _bundle_complete(self._bundle_dir):
                from priors.change import load_change_model

                self._model = load_change_model(
                    self._bundle_dir, device=self._settings.change.device,
                    torch_threads=self._settings.change.torch_threads)
        return self._model


class _PersonWorker:
    """A Ray actor: limits its threads, loads the model once, prepares persons."""

    def __init__(self, settings: Settings, bundle_dir: str) -> None:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, settings.registration.threads))
        self._settings = settings
        self._holder = _ModelHolder(settings, Path(bundle_dir))

    def prepare(self, task: PersonTask) -> PersonResult:
        from priors.pipeline import prepare_person

        return prepare_person(task, settings=self._settings, model_loader=self._holder.model)


def _log_person(result: PersonResult, *, tracker: Any, plan: Any, report: JobReport,
                finished: Mapping[str, str], model_info: Mapping[str, Any]) -> None:
    from priors.planning import write_package_manifest
    from priors.provenance.tracking import DatasetRef, PairLog

    run_ids: dict[str, str] = {}
    for pair in result.pairs:
        method = pair.change.get("method", "")
        existing = finished.get(pair.pair_key)
        if existing and pair.status != FAILED:
            report.pairs.append(_pair_row(result.person, pair.current, pair.prior, SKIPPED,
                                          f"finished before in run {existing}", method, ""))
            run_ids[pair.pair_id] = existing
            continue
        tags = {
            "priors.person": result.person,
            "priors.pair_key": pair.pair_key,
            "priors.current.study_instance_uid": pair.current["study_instance_uid"],
            "priors.current.series_instance_uid": pair.current["series_instance_uid"],
            "priors.prior.study_instance_uid": pair.prior["study_instance_uid"],
            "priors.prior.series_instance_uid": pair.prior["series_instance_uid"],
            "priors.modality": pair.current["modality"],
            "priors.status": pair.status,
            "priors.registration.verdict": pair.registration.get("verdict", "not run"),
            "priors.change.method": method or "none",
        }
        if pair.reason:
            tags["priors.reason"] = pair.reason[:500]
        if method == "model" and model_info:
            tags["priors.model.name"] = str(model_info.get("name", ""))
            tags["priors.model.version"] = str(model_info.get("version", ""))
        inputs = []
        for role, series, digest in (("current", pair.current, pair.current_digest),
                                     ("prior", pair.prior, pair.prior_digest)):
            if digest:
                inputs.append(DatasetRef(
                    name=f"{role}:{series['series_instance_uid']}",
                    source=_dataset_source(plan, pair, role),
                    digest=digest, context=role,
                    profile={"instances": series["instance_count"],
                             "modality": series["modality"],
                             "study_date": series["study_date"]}))
        pair_log = PairLog(
            pair_key=pair.pair_key, run_name=f"{result.person} {pair.pair_id}", tags=tags,
            params=_pair_params(pair), metrics=_pair_metrics(pair), inputs=inputs,
            artifacts_dir=Path(pair.artifacts_dir), finished=pair.status != FAILED)
        run_id = tracker.log_pair(pair_log)
        run_ids[pair.pair_id] = run_id
        report.pairs.append(_pair_row(result.person, pair.current, pair.prior, pair.status,
                                      pair.reason, method, run_id))
    if result.pairs:
        write_package_manifest(result, plan=plan, run_ids=run_ids)


def _dataset_source(plan: Any, pair: Any, role: str) -> str:
    series = pair.current if role == "current" else pair.prior
    source_ids = sorted({row["source_id"] for row in pair.used_instances
                         if row["series_instance_uid"] == series["series_instance_uid"]})
    return f"{'+'.join(source_ids) or 'unknown'}#series={series['series_instance_uid']}"


def _pair_params(pair: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    registration = pair.registration.get("parameters", {})
    for name in ("stages", "metric", "seed", "threads", "histogram_bins", "sampling_fraction",
                 "iterations", "shrink_factors", "smoothing_sigmas_mm", "modality_pair"):
        if name in registration:
            params[f"registration.{name}"] = registration[name]
    params["change.method"] = pair.change.get("method", "none")
    for name, value in pair.change.get("parameters", {}).items():
        params[f"change.{name}"] = value
    for name in ("bundle", "version", "weights_sha256"):
        if pair.change.get(name):
            params[f"model.{name}"] = pair.change[name]
    params["current.digest"] = pair.current_digest
    params["prior.digest"] = pair.prior_digest
    return params


def _pair_metrics(pair: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, value in pair.registration.get("metrics", {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[f"registration.{name}"] = float(value)
    for name, value in pair.timings.items():
        metrics[f"time.{name}"] = float(value)
    for name in ("lesion_count", "changed_voxels"):
        if name in pair.change:
            metrics[f"change.{name}"] = float(pair.change[name])
    return metrics


def _pair_row(person: str, current: Mapping[str, Any], prior: Mapping[str, Any], status: str,
              reason: str, method: str, run_id: str) -> dict[str, Any]:
    return {
        "person": person,
        "current_date": current.get("study_date", ""),
        "current_series": _series_label(current),
        "current_series_instance_uid": current.get("series_instance_uid", ""),
        "prior_date": prior.get("study_date", ""),
        "prior_series": _series_label(prior),
        "prior_series_instance_uid": prior.get("series_instance_uid", ""),
        "status": status,
        "reason": reason,
        "method": method,
        "run_id": run_id,
    }


def _series_label(series: Mapping[str, Any]) -> str:
    number = series.get("series_number")
    description = series.get("series_description") or "(no description)"
    return f"#{number} {description}" if number is not None else description

