"""MLflow tracking of a job: one parent run, one child run per pair, skip on re-run.

Layout in the MLflow store:

- the job is a run tagged ``priors.kind=job`` with the flattened configuration as
  parameters and ``config.json``, ``sources.json`` and ``job_report.json`` as
  artifacts;
- each pair is a child run (``mlflow.parentRunId``) tagged ``priors.kind=pair``
  and ``priors.pair_key``, with its inputs logged as datasets whose digest is the
  first 32 hexadecimal characters of the series digest, and a ``lineage.json``
  artifact listing its instances and the SHA-256 of every artifact
  (``priors.provenance.lineage``);
- a change model without a version in the store gets a ``model import`` run and a
  registered model version tagged with its weights SHA-256.

Re-runs: a pair whose key already has a FINISHED child run in the experiment, from
any job, is skipped. A FAILED or KILLED run of the key is redone, and the old run
gets the tag ``priors.superseded_by`` naming the new one. A pair run left RUNNING by
a job that died is marked KILLED, with ``priors.stale_reason``, when the next job
starts.

``mlflow`` is imported inside the methods, because importing it takes seconds and
the command line imports this module at start-up.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from priors.provenance._bundle_record import split_training_record, stated_weights_sha256
from priors.provenance._mlflow_params import (
    flatten_params,
    log_metrics,
    log_params,
    redact_secrets,
)
from priors.provenance._processes import process_exists, process_start_ticks
from priors.provenance.digests import file_sha256, jsonable, mlflow_digest
from priors.provenance.lineage import LINEAGE_ARTIFACT, build_lineage_index

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = [
    "DatasetRef",
    "JobTracker",
    "PairLog",
    "TAG_JOB_RUN_ID",
    "TAG_KIND",
    "TAG_PAIR_KEY",
    "TAG_STALE_REASON",
    "TAG_SUPERSEDED_BY",
    "TAG_WEIGHTS_SHA256",
    "flatten_params",
    "redact_secrets",
]

logger = logging.getLogger(__name__)

TAG_KIND = "priors.kind"
TAG_PAIR_KEY = "priors.pair_key"
TAG_JOB_RUN_ID = "priors.job_run_id"
TAG_SUPERSEDED_BY = "priors.superseded_by"
TAG_STALE_REASON = "priors.stale_reason"
TAG_HOST = "priors.host"
TAG_PID = "priors.pid"
TAG_PID_START = "priors.pid_start_ticks"
TAG_HEARTBEAT = "priors.heartbeat_unix"
TAG_INSTANCE_COUNT = "priors.instance_count"
TAG_WEIGHTS_SHA256 = "weights_sha256"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"
CONTEXT_TAG = "mlflow.data.context"

KIND_JOB = "job"
KIND_PAIR = "pair"
KIND_MODEL_IMPORT = "model_import"

# A job on another host whose heartbeat is older than this is taken as dead. Pairs
# of one patient take minutes, so six hours without a pair logged means no driver.
STALE_JOB_AFTER_S = 6 * 3600.0
# The heartbeat tag is rewritten at most this often, to spare the store's writes.
HEARTBEAT_INTERVAL_S = 60.0

# Runs and model versions fetched per search request.
SEARCH_PAGE_SIZE = 1000

BUNDLE_WEIGHTS = Path("models") / "model.pt"


@dataclass
class DatasetRef:
    """One model input series, logged to MLflow as a dataset.

    Attributes
    ----------
    name
        For example ``"current:<Series Instance UID>"``.
    source
        The DICOM source and series, e.g. ``"media:PSP@/path#series=1.2.3"``; no
        patient identifiers.
    digest
        The full series digest; MLflow receives its first 32 hexadecimal characters.
    context
        ``"current"`` or ``"prior"``.
    profile
        For example instance count, modality, size and spacing.
    """

    name: str
    source: str
    digest: str
    context: str
    profile: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PairLog:
    """Everything logged for one pair.

    Attributes
    ----------
    pair_key
        See ``priors.provenance.digests.pair_key``.
    run_name
        Name of the child run shown in the MLflow UI.
    tags
        Person pseudonym, current and prior study and series UIDs, modality,
        registration verdict, change method, status.
    params, metrics
        Registration and model parameters; registration and change figures.
    inputs
        The current and prior series.
    artifacts_dir
        Every file under it is logged as an artifact (provenance.json, maps ...).
    finished
        True when the pair ran to its end, including a pair held back by its
        registration checks (its verdict is in the tags); False when it crashed,
        which logs the run as FAILED so a re-run redoes it.
    """

    pair_key: str
    run_name: str
    tags: Mapping[str, str]
    params: Mapping[str, object]
    metrics: Mapping[str, float]
    inputs: Sequence[DatasetRef]
    artifacts_dir: Path | None
    finished: bool = True


class JobTracker:
    """The MLflow side of one job; a context manager around the job's parent run.

    Parameters
    ----------
    tracking_uri
        The MLflow store, e.g. ``sqlite:////home/me/.priors/mlflow.db``; also used
        as the model registry.
    experiment
        Experiment name. When it does not exist it is created with its artifacts
        under ``artifact_root``, so nothing lands in ``./mlruns``.
    artifact_root
        Artifact folder for a new experiment.
    job_name
        Name of the parent run.
    config
        The job's configuration; logged flattened as parameters (secrets
        redacted) and whole as ``config.json``.
    sources
        Descriptions of the DICOM sources; logged as ``sources.json``.
    stale_after_s
        Heartbeat age after which a RUNNING job on another host counts as dead.
    """

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        artifact_root: Path,
        job_name: str,
        config: Mapping[str, Any],
        sources: Sequence[Mapping[str, Any]],
        stale_after_s: float = STALE_JOB_AFTER_S,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.job_name = job_name
        self.config = jsonable(config)
        self.sources = jsonable(list(sources))
        self.stale_after_s = stale_after_s
        self.parent_run_id = ""
        self._client: MlflowClient = MlflowClient(
            tracking_uri=tracking_uri, registry_uri=tracking_uri
        )
        self.experiment_id = _get_or_create_experiment(
            self._client, experiment, Path(artifact_root)
        )
        self._started_pairs: dict[str, str] = {}
        self._skipped: list[dict[str, str]] = []
        self._last_heartbeat = 0.0
        # Job run id -> why it counts as dead, for jobs marked KILLED by this tracker.
        self._dead_job_reasons: dict[str, str] = {}
        # Seconds spent in MLflow calls per pair key (start_pair and log_pair).
        self.logging_seconds: dict[str, float] = {}

    def __repr__(self) -> str:
        return (
            f"JobTracker(experiment_id={self.experiment_id!r}, job={self.job_name!r}, "
            f"parent_run_id={self.parent_run_id!r})"
        )

    # Job run -----------------------------------------------------------------

    def __enter__(self) -> JobTracker:
        tags = {
            TAG_KIND: KIND_JOB,
            TAG_HOST: socket.gethostname(),
            TAG_PID: str(os.getpid()),
            TAG_HEARTBEAT: str(int(time.time())),
        }
        start_ticks = process_start_ticks(os.getpid())
        if start_ticks is not None:
            tags[TAG_PID_START] = str(start_ticks)
        run = self._client.create_run(self.experiment_id, run_name=self.job_name, tags=tags)
        self.parent_run_id = run.info.run_id
        self._last_heartbeat = time.monotonic()
        logger.info("job %s started: MLflow run %s", self.job_name, self.parent_run_id)

        log_params(
            self._client, self.parent_run_id, flatten_params(self.config, redact_secrets=True)
        )
        self._client.log_dict(self.parent_run_id, redact_secrets(self.config), "config.json")
        self._client.log_dict(self.parent_run_id, self.sources, "sources.json")
        self.mark_stale_pair_runs()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        if not self.parent_run_id:
            return
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt | SystemExit):
            status = "KILLED"
        else:
            status = "FAILED"

        for pair_key, run_id in self._started_pairs.items():
            # A pair started but never logged did not finish; leave no RUNNING run behind.
            self._client.set_tag(run_id, TAG_STALE_REASON, f"job ended ({status}) before the pair")
            self._client.set_terminated(run_id, status="FAILED")
            logger.warning(
                "pair %s of job %s not logged; run %s FAILED", pair_key, self.job_name, run_id
            )
        self._started_pairs.clear()

        if self._skipped:
            self._client.log_dict(
                self.parent_run_id, {"pairs": self._skipped}, "skipped_pairs.json"
            )
        self._client.log_metric(self.parent_run_id, "pairs_skipped", len(self._skipped))
        self._client.set_terminated(self.parent_run_id, status=status)
        logger.info("job %s ended %s: MLflow run %s", self.job_name, status, self.parent_run_id)

    def log_job_report(self, report: Mapping[str, Any], *, counts: Mapping[str, int]) -> None:
        """Log the job report as ``job_report.json`` and its counts as metrics.

        Parameters
        ----------
        report
            The report (accounting of files, pairs done, skipped and held back).
        counts
            Figures to log as metrics, e.g. ``{"files_found": 123, "used": 67}``.
        """
        self._require_started()
        self._client.log_dict(self.parent_run_id, jsonable(report), "job_report.json")
        log_metrics(self._client, self.parent_run_id, {f"count.{k}": v for k, v in counts.items()})

    # Pair runs ---------------------------------------------------------------

    def finished_pair_keys(self) -> dict[str, str]:
        """Return pair key -> run id of the FINISHED pair runs of the experiment, any job."""
        finished: dict[str, str] = {}
        query = f"tags.`{TAG_KIND}` = '{KIND_PAIR}' and attributes.status = 'FINISHED'"
        for run in self._search_runs(query, order_by=["attributes.start_time ASC"]):
            key = run.data.tags.get(TAG_PAIR_KEY)
            if not key:
                continue
            if key in finished:
                logger.warning(
                    "pair %s has two FINISHED runs, %s and %s; keeping the older",
                    key,
                    finished[key],
                    run.info.run_id,
                )
                continue
            finished[key] = run.info.run_id
        return finished

    def mark_stale_pair_runs(self) -> int:
        """Mark RUNNING pair runs of dead jobs KILLED, tagged with the reason.

        A job is dead when its run is not RUNNING, when it ran on this host and its
        process is gone, or when its heartbeat is older than ``stale_after_s``. The
        job runs found dead are marked KILLED too.

        Returns
        -------
        int
            The number of pair runs marked.
        """
        self._dead_job_reasons.clear()
        marked = 0
        query = f"tags.`{TAG_KIND}` = '{KIND_PAIR}' and attributes.status = 'RUNNING'"
        for run in list(self._search_runs(query)):
            job_run_id = run.data.tags.get(TAG_JOB_RUN_ID, "")
            if job_run_id == self.parent_run_id:
                continue
            alive, reason = self._job_liveness(job_run_id)
            if alive:
                continue
            self._client.set_tag(run.info.run_id, TAG_STALE_REASON, reason)
            self._client.set_terminated(run.info.run_id, status="KILLED")
            logger.warning(
                "pair run %s (pair %s) left RUNNING by job run %s marked KILLED: %s",
                run.info.run_id,
                run.data.tags.get(TAG_PAIR_KEY),
                job_run_id,
                reason,
            )
            marked += 1
        return marked

    def start_pair(
        self, pair_key: str, *, run_name: str, tags: Mapping[str, str] | None = None
    ) -> str:
        """Create the RUNNING child run of a pair before its work starts.

        Optional: ``log_pair`` creates the run when none was started. Starting it
        early makes pairs in progress visible, and a pair whose job dies is found
        and redone by the next job.

        Returns
        -------
        str
            The child run id.
        """
        self._require_started()
        if pair_key in self._started_pairs:
            return self._started_pairs[pair_key]
        clock = time.perf_counter()
        run_id = self._create_pair_run(pair_key, run_name=run_name, tags=tags or {})
        self._started_pairs[pair_key] = run_id
        self._add_logging_time(pair_key, time.perf_counter() - clock)
        return run_id

    def log_pair(self, pair: PairLog) -> str:
        """Log one pair as a child run and end it FINISHED, or FAILED when not finished.

        When a FINISHED run of the same key exists already, nothing new is logged:
        the pair is recorded as skipped and the existing run id is returned.
        Earlier FAILED or KILLED runs of the key are tagged ``priors.superseded_by``.

        Returns
        -------
        str
            The child run id.
        """
        self._require_started()
        clock = time.perf_counter()
        try:
            return self._log_pair(pair)
        finally:
            self._add_logging_time(pair.pair_key, time.perf_counter() - clock)

    def _log_pair(self, pair: PairLog) -> str:
        existing = self._finished_run_of(pair.pair_key)
        if existing is not None:
            logger.warning(
                "pair %s already FINISHED in run %s; not logged again", pair.pair_key, existing
            )
            started = self._started_pairs.pop(pair.pair_key, None)
            if started is not None:
                self._client.set_tag(started, TAG_SUPERSEDED_BY, existing)
                self._client.set_terminated(started, status="KILLED")
            self.log_skipped_pair(pair.pair_key, existing)
            return existing

        run_id = self._started_pairs.pop(pair.pair_key, None)
        if run_id is None:
            run_id = self._create_pair_run(pair.pair_key, run_name=pair.run_name, tags={})
        try:
            self._fill_pair_run(run_id, pair)
        except BaseException:
            self._client.set_terminated(run_id, status="FAILED")
            raise
        status = "FINISHED" if pair.finished else "FAILED"
        self._client.set_terminated(run_id, status=status)

        self._supersede_older_runs(pair.pair_key, run_id)
        self._heartbeat()
        logger.info("pair %s logged %s: MLflow run %s", pair.pair_key, status, run_id)
        return run_id

    def log_skipped_pair(self, pair_key: str, existing_run_id: str) -> None:
        """Record that a pair was skipped because run ``existing_run_id`` finished it."""
        self._require_started()
        self._skipped.append({"pair_key": pair_key, "existing_run_id": existing_run_id})
        logger.info("pair %s skipped: FINISHED in run %s", pair_key, existing_run_id)
        self._heartbeat()

    @property
    def skipped_pairs(self) -> list[dict[str, str]]:
        """Pairs skipped by this job, each ``{"pair_key", "existing_run_id"}``."""
        return list(self._skipped)

    # Model registry ----------------------------------------------------------

    def ensure_registered_model(
        self, bundle_dir: Path, metadata: Mapping[str, Any], *, name: str
    ) -> dict[str, str]:
        """Find or create the registered model version of a MONAI bundle's weights.

        The version is matched by the tag ``weights_sha256``. When the store has
        none (a machine that never saw the training run), a run named
        ``model import`` records the bundle's ``training`` object (its numbers under
        a ``metrics`` key as metrics, the rest as parameters, the original training
        run id as the tag ``priors.training_run_id``), logs the bundle folder as
        artifacts under ``bundle/`` and registers a version from it.

        Parameters
        ----------
        bundle_dir
            The bundle folder, with ``models/model.pt``.
        metadata
            The bundle's ``configs/metadata.json``.
        name
            Registered model name, e.g. ``"priors-ct-chest-change"``.

        Returns
        -------
        dict
            ``{"name", "version", "run_id", "weights_sha256"}``.

        Raises
        ------
        FileNotFoundError
            When the weights file is missing.
        ValueError
            When the metadata states a weights SHA-256 that the file does not have.
        """
        bundle_dir = Path(bundle_dir)
        weights = bundle_dir / BUNDLE_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: model weights not found in bundle {bundle_dir}")
        weights_sha256 = file_sha256(weights)
        stated = stated_weights_sha256(metadata)
        if stated is not None and stated.lower() != weights_sha256:
            raise ValueError(
                f"{weights}: SHA-256 is {weights_sha256}, but configs/metadata.json states "
                f"{stated}; retrain or restore the matching weights"
            )

        version = self._model_version_with_weights(name, weights_sha256)
        if version is not None:
            logger.info(
                "model %s version %s has weights %s", name, version.version, weights_sha256[:12]
            )
            return {
                "name": name,
                "version": str(version.version),
                "run_id": version.run_id or "",
                "weights_sha256": weights_sha256,
            }
        return self._import_model(bundle_dir, metadata, name=name, weights_sha256=weights_sha256)

    # Helpers -----------------------------------------------------------------

    def _add_logging_time(self, pair_key: str, seconds: float) -> None:
        self.logging_seconds[pair_key] = self.logging_seconds.get(pair_key, 0.0) + seconds

    def _require_started(self) -> None:
        if not self.parent_run_id:
            raise RuntimeError("JobTracker used outside its 'with' block: no job run started")

    def _create_pair_run(self, pair_key: str, *, run_name: str, tags: Mapping[str, str]) -> str:
        run_tags = {str(k): str(v) for k, v in tags.items()}
        run_tags.update(
            {
                TAG_KIND: KIND_PAIR,
                TAG_PAIR_KEY: pair_key,
                TAG_JOB_RUN_ID: self.parent_run_id,
                TAG_PARENT_RUN_ID: self.parent_run_id,
            }
        )
        run = self._client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
        return run.info.run_id

    def _fill_pair_run(self, run_id: str, pair: PairLog) -> None:
        from mlflow.entities import DatasetInput, InputTag

        from priors.provenance._mlflow_datasets import DicomSeriesDataset, DicomSeriesSource

        self._client.set_tag(run_id, "mlflow.runName", pair.run_name)
        for key, value in pair.tags.items():
            self._client.set_tag(run_id, str(key), str(value))
        log_params(self._client, run_id, flatten_params(pair.params))
        log_metrics(self._client, run_id, pair.metrics)

        inputs = []
        for ref in pair.inputs:
            dataset = DicomSeriesDataset(
                DicomSeriesSource(ref.source),
                name=ref.name,
                digest=mlflow_digest(ref.digest),
                profile=jsonable(ref.profile),
            )
            tags = [
                InputTag(CONTEXT_TAG, ref.context),
                InputTag("priors.series_digest", ref.digest),
            ]
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=tags))
        if inputs:
            self._client.log_inputs(run_id, datasets=inputs)

        if pair.artifacts_dir is not None and Path(pair.artifacts_dir).is_dir():
            self._client.log_artifacts(run_id, str(pair.artifacts_dir))
            self._log_lineage_index(run_id, Path(pair.artifacts_dir))
        elif pair.artifacts_dir is not None:
            logger.warning(
                "pair %s: artifact folder %s not found; no artifacts logged",
                pair.pair_key,
                pair.artifacts_dir,
            )

    def _log_lineage_index(self, run_id: str, artifacts_dir: Path) -> None:
        # One artifact, not one parameter per instance: MLflow takes 100 parameters
        # per batch, and a series can have thousands of instances.
        index = build_lineage_index(artifacts_dir)
        if index is None:
            logger.warning(
                "run %s: no provenance.json in %s, so no lineage index", run_id, artifacts_dir
            )
            return
        self._client.log_dict(run_id, index, LINEAGE_ARTIFACT)
        self._client.set_tag(run_id, TAG_INSTANCE_COUNT, str(len(index["instances"])))

    def _finished_run_of(self, pair_key: str) -> str | None:
        query = (
            f"tags.`{TAG_KIND}` = '{KIND_PAIR}' and tags.`{TAG_PAIR_KEY}` = '{pair_key}' "
            "and attributes.status = 'FINISHED'"
        )
        for run in self._search_runs(query, order_by=["attributes.start_time ASC"]):
            return run.info.run_id
        return None

    def _supersede_older_runs(self, pair_key: str, new_run_id: str) -> None:
        query = f"tags.`{TAG_KIND}` = '{KIND_PAIR}' and tags.`{TAG_PAIR_KEY}` = '{pair_key}'"
        for run in self._search_runs(query):
            if run.info.run_id == new_run_id or TAG_SUPERSEDED_BY in run.data.tags:
                continue
            if run.info.status in ("FAILED", "KILLED"):
                self._client.set_tag(run.info.run_id, TAG_SUPERSEDED_BY, new_run_id)
                logger.info(
                    "pair run %s (%s) superseded by %s",
                    run.info.run_id,
                    run.info.status,
                    new_run_id,
                )

    def _job_liveness(self, job_run_id: str) -> tuple[bool, str]:
        """Return whether a job run's driver is alive, and why it counts as dead."""
        from mlflow.exceptions import MlflowException

        if job_run_id in self._dead_job_reasons:
            return False, self._dead_job_reasons[job_run_id]
        try:
            job_run = self._client.get_run(job_run_id)
        except MlflowException:
            return False, f"job run {job_run_id!r} not found"

        status = job_run.info.status
        tags = job_run.data.tags
        if status != "RUNNING":
            return False, f"job run {job_run_id} is {status}"

        reason = ""
        if tags.get(TAG_HOST) == socket.gethostname() and tags.get(TAG_PID, "").isdigit():
            pid = int(tags[TAG_PID])
            recorded_start = tags.get(TAG_PID_START)
            current_start = process_start_ticks(pid)
            if not process_exists(pid):
                reason = f"job process {pid} on this host has exited"
            elif (
                recorded_start
                and current_start is not None
                and recorded_start != str(current_start)
            ):
                reason = f"job process {pid} on this host has exited (its id was reused)"
        else:
            heartbeat = float(tags.get(TAG_HEARTBEAT, "0") or 0)
            age = time.time() - heartbeat
            if age > self.stale_after_s:
                reason = f"no heartbeat from job run {job_run_id} for {age:.0f} s"

        if not reason:
            return True, ""
        self._client.set_tag(job_run_id, TAG_STALE_REASON, reason)
        self._client.set_terminated(job_run_id, status="KILLED")
        logger.warning("job run %s marked KILLED: %s", job_run_id, reason)
        self._dead_job_reasons[job_run_id] = reason
        return False, reason

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_INTERVAL_S:
            self._client.set_tag(self.parent_run_id, TAG_HEARTBEAT, str(int(time.time())))
            self._last_heartbeat = now

    def _search_runs(self, query: str, *, order_by: list[str] | None = None) -> Iterator[Run]:
        page_token = None
        while True:
            page = self._client.search_runs(
                [self.experiment_id],
                filter_string=query,
                max_results=SEARCH_PAGE_SIZE,
                order_by=order_by,
                page_token=page_token,
            )
            yield from page
            page_token = page.token
            if not page_token:
                return

    def _model_version_with_weights(self, name: str, weights_sha256: str) -> Any:
        page_token = None
        while True:
            page = self._client.search_model_versions(
                f"name = '{name}'", max_results=SEARCH_PAGE_SIZE, page_token=page_token
            )
            for version in page:
                if version.tags.get(TAG_WEIGHTS_SHA256, "").lower() == weights_sha256:
                    return version
            page_token = page.token
            if not page_token:
                return None

    def _import_model(
        self, bundle_dir: Path, metadata: Mapping[str, Any], *, name: str, weights_sha256: str
    ) -> dict[str, str]:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

        training = metadata.get("training") or {}
        params, metrics, training_run_id = split_training_record(training)
        tags = {
            TAG_KIND: KIND_MODEL_IMPORT,
            TAG_JOB_RUN_ID: self.parent_run_id,
            TAG_WEIGHTS_SHA256: weights_sha256,
            "priors.bundle_version": str(metadata.get("version", "")),
        }
        if training_run_id:
            tags["priors.training_run_id"] = training_run_id
        run = self._client.create_run(self.experiment_id, run_name="model import", tags=tags)
        run_id = run.info.run_id
        try:
            log_params(self._client, run_id, params)
            log_metrics(self._client, run_id, metrics)
            self._client.log_artifacts(run_id, str(bundle_dir), artifact_path="bundle")
        except BaseException:
            self._client.set_terminated(run_id, status="FAILED")
            raise
        self._client.set_terminated(run_id, status="FINISHED")

        try:
            self._client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        # NOTE: two drivers importing the same weights at once each register a
        # version; lookups then return the first one found.
        version = self._client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/bundle",
            run_id=run_id,
            tags={TAG_WEIGHTS_SHA256: weights_sha256},
            description=f"Imported from bundle {bundle_dir.name}; weights SHA-256 "
            f"{weights_sha256}.",
        )
        logger.info("model %s version %s registered from run %s", name, version.version, run_id)
        return {
            "name": name,
            "version": str(version.version),
            "run_id": run_id,
            "weights_sha256": weights_sha256,
        }


def _get_or_create_experiment(client: MlflowClient, name: str, artifact_root: Path) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_root.expanduser().resolve()
        location.mkdir(parents=True, exist_ok=True)
        try:
            return client.create_experiment(name, artifact_location=location.as_uri())
        except MlflowException:
            # Another driver created it between the lookup and here.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise ValueError(
            f"MLflow experiment {name!r} is deleted; restore it in the MLflow UI or "
            "choose another experiment name"
        )
    return experiment.experiment_id
