"""Lineage queries against the MLflow store: pair runs, their instances and models.

Each pair run carries ``provenance.json`` and a compact ``lineage.json`` artifact
(see ``build_lineage_index``), and tags naming its current and prior Series Instance
UIDs. ``find_instance_uses`` searches those tags first, so an instance whose series
is known is traced without downloading every run's artifacts.

``mlflow`` is imported inside the functions, so importing this module stays fast.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from priors.provenance.digests import file_sha256

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = [
    "LINEAGE_ARTIFACT",
    "LINEAGE_VERSION",
    "PROVENANCE_ARTIFACT",
    "InstanceUse",
    "build_lineage_index",
    "collect_pair_lineage",
    "find_instance_uses",
    "load_run_json",
    "model_chain",
    "open_client",
]

logger = logging.getLogger(__name__)

PROVENANCE_ARTIFACT = "provenance.json"
LINEAGE_ARTIFACT = "lineage.json"
# Version of the lineage.json layout; fields are added, never renamed.
LINEAGE_VERSION = 1

ROLE_TAGS = {
    "current": "priors.current.series_instance_uid",
    "prior": "priors.prior.series_instance_uid",
}
PAIR_FILTER = "tags.`priors.kind` = 'pair'"
# Runs fetched per search request.
SEARCH_PAGE_SIZE = 1000


@dataclass
class InstanceUse:
    """One pair run that used an instance.

    Attributes
    ----------
    run_id, run_name, status
        The pair run.
    job_run_id
        Its job's run.
    role
        ``"current"`` or ``"prior"``.
    file_sha256, pixel_sha256, location
        The instance as that run recorded it.
    outputs
        The run's output files with their SHA-256, from ``lineage.json``.
    """

    run_id: str
    run_name: str
    status: str
    job_run_id: str
    role: str
    file_sha256: str
    pixel_sha256: str
    location: str
    outputs: list[dict[str, Any]] = field(default_factory=list)


def open_client(tracking_uri: str) -> MlflowClient:
    """Return an MLflow client for the store, also used as the model registry."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def build_lineage_index(artifacts_dir: Path) -> dict[str, Any] | None:
    """Build the compact lineage index of a pair from its artifact folder.

    The index lists every instance of ``provenance.json`` (role, UIDs, location and
    both hashes) and every file of the folder with its SHA-256 and size, so an
    auditor reads the output hashes without downloading the outputs.

    Returns
    -------
    dict or None
        None when the folder contains no ``provenance.json``.
    """
    provenance_path = Path(artifacts_dir) / PROVENANCE_ARTIFACT
    if not provenance_path.is_file():
        return None
    record = json.loads(provenance_path.read_text(encoding="utf-8"))
    instances = [
        {
            "role": role,
            "sop_instance_uid": item["sop_instance_uid"],
            "series_instance_uid": item["series_instance_uid"],
            "study_instance_uid": item["study_instance_uid"],
            "source_id": item["source_id"],
            "location": item["location"],
            "file_sha256": item["file_sha256"],
            "pixel_sha256": item["pixel_sha256"],
        }
        for role, items in record.get("instances", {}).items()
        for item in items
    ]
    outputs = [
        {"path": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size}
        for path in sorted(Path(artifacts_dir).iterdir())
        if path.is_file() and path.name != LINEAGE_ARTIFACT
    ]
    return {
        "lineage_version": LINEAGE_VERSION,
        "job_id": record.get("job_id", ""),
        "volumes": [
            {key: volume[key] for key in ("role", "series_instance_uid", "digest")}
            for volume in record.get("volumes", [])
        ],
        "instances": instances,
        "outputs": outputs,
    }


def load_run_json(client: MlflowClient, run_id: str, artifact_path: str) -> dict[str, Any]:
    """Download one JSON artifact of a run and return it loaded.

    Raises
    ------
    FileNotFoundError
        When the run has no such artifact.
    """
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="priors-audit-") as folder:
        try:
            local = client.download_artifacts(run_id, artifact_path, folder)
        except (MlflowException, OSError) as err:
            raise FileNotFoundError(
                f"run {run_id}: artifact {artifact_path} not found ({err})"
            ) from err
        return json.loads(Path(local).read_text(encoding="utf-8"))


def find_instance_uses(
    client: MlflowClient,
    sop_instance_uid: str,
    *,
    experiment_ids: Iterable[str],
    series_instance_uids: Iterable[str] = (),
    cache_dir: Path | None = None,
) -> list[InstanceUse]:
    """List the pair runs whose lineage index names a SOP Instance UID.

    Parameters
    ----------
    client
        Client of the MLflow store.
    sop_instance_uid
        The instance to trace.
    experiment_ids
        Experiments to search.
    series_instance_uids
        The instance's series, when known (from the catalog, for example): only
        pair runs tagged with one of them are read. Empty searches every pair run.
    cache_dir
        Folder that keeps downloaded ``lineage.json`` files by run id; the
        artifacts of a run do not change once it has ended.

    Returns
    -------
    list of InstanceUse
        Ordered by run start time. Runs without a lineage index (a pair that
        never got logged) are left out.
    """
    experiment_ids = list(experiment_ids)
    series = sorted(set(series_instance_uids))
    if series:
        runs: dict[str, Run] = {}
        for uid in series:
            for tag in ROLE_TAGS.values():
                query = f"{PAIR_FILTER} and tags.`{tag}` = '{_quoted(uid)}'"
                for run in _search_runs(client, experiment_ids, query):
                    runs[run.info.run_id] = run
        candidates = sorted(runs.values(), key=lambda run: run.info.start_time or 0)
    else:
        candidates = list(_search_runs(client, experiment_ids, PAIR_FILTER))
        candidates.sort(key=lambda run: run.info.start_time or 0)
    logger.info(
        "tracing instance %s through %d pair runs (%s)",
        sop_instance_uid,
        len(candidates),
        "selected by series tag" if series else "all pair runs",
    )

    uses = []
    for run in candidates:
        index = _lineage_index(client, run, cache_dir)
        if index is None:
            continue
        for instance in index["instances"]:
            if instance["sop_instance_uid"] != sop_instance_uid:
                continue
            uses.append(
                InstanceUse(
                    run_id=run.info.run_id,
                    run_name=run.info.run_name or "",
                    status=run.info.status,
                    job_run_id=run.data.tags.get("priors.job_run_id", ""),
                    role=instance["role"],
                    file_sha256=instance["file_sha256"],
                    pixel_sha256=instance["pixel_sha256"] or "",
                    location=instance["location"],
                    outputs=list(index["outputs"]),
                )
            )
    return uses


def collect_pair_lineage(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """Gather what an auditor needs about one pair run from the MLflow store.

    Returns
    -------
    dict
        ``run`` (id, name, status, times, artifact URI, tags, params, metrics),
        ``inputs`` (logged datasets with digest, source and context),
        ``provenance`` (the ``provenance.json`` artifact), ``lineage`` (the
        ``lineage.json`` artifact, or None for runs logged before it existed),
        ``model`` (see ``model_chain``; empty when the pair used no registered model)
        and ``artifacts`` (paths of the run's artifacts).

    Raises
    ------
    FileNotFoundError
        When the run has no ``provenance.json``.
    """
    run = client.get_run(run_id)
    tags = run.data.tags
    provenance = load_run_json(client, run_id, PROVENANCE_ARTIFACT)
    try:
        lineage: dict[str, Any] | None = load_run_json(client, run_id, LINEAGE_ARTIFACT)
    except FileNotFoundError:
        lineage = None

    inputs = []
    for dataset_input in run.inputs.dataset_inputs if run.inputs else []:
        dataset = dataset_input.dataset
        input_tags = {tag.key: tag.value for tag in dataset_input.tags}
        inputs.append(
            {
                "name": dataset.name,
                "digest": dataset.digest,
                "source": _dataset_source_uri(dataset.source),
                "context": input_tags.get("mlflow.data.context", ""),
                "series_digest": input_tags.get("priors.series_digest", ""),
            }
        )

    model: dict[str, Any] = {}
    if tags.get("priors.model.name") and tags.get("priors.model.version"):
        model = model_chain(client, tags["priors.model.name"], tags["priors.model.version"])

    return {
        "run": {
            "run_id": run_id,
            "run_name": run.info.run_name or "",
            "status": run.info.status,
            "start_time_ms": run.info.start_time,
            "end_time_ms": run.info.end_time,
            "artifact_uri": run.info.artifact_uri,
            "experiment_id": run.info.experiment_id,
            "tags": dict(tags),
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        },
        "inputs": inputs,
        "provenance": provenance,
        "lineage": lineage,
        "model": model,
        "artifacts": [item.path for item in client.list_artifacts(run_id)],
    }


def model_chain(client: MlflowClient, name: str, version: str) -> dict[str, Any]:
    """Follow a registered model version to the run that made it and its training record.

    Returns
    -------
    dict
        ``name``, ``version``, ``weights_sha256`` (version tag), ``source_run_id`` and
        ``source_run_kind`` (``"model_import"`` or a training run), ``training``
        (the run's ``training.*`` parameters, or its own parameters for a training
        run), ``generator_version``, ``seed``, ``training_run_id`` and
        ``training_run_in_store`` (whether that run is in this MLflow store; a
        bundle trained elsewhere names a run of another store). Values the store
        does not contain are empty strings.
    """
    from mlflow.exceptions import MlflowException

    chain: dict[str, Any] = {
        "name": name,
        "version": version,
        "weights_sha256": "",
        "source_run_id": "",
        "source_run_kind": "",
        "training": {},
        "generator_version": "",
        "seed": "",
        "training_run_id": "",
        "training_run_in_store": False,
    }
    try:
        model_version = client.get_model_version(name, version)
    except MlflowException as err:
        logger.warning("registered model %s version %s not found: %s", name, version, err)
        return chain
    chain["weights_sha256"] = model_version.tags.get("weights_sha256", "")
    chain["source_run_id"] = model_version.run_id or ""
    if not model_version.run_id:
        return chain

    run = client.get_run(model_version.run_id)
    params = run.data.params
    if run.data.tags.get("priors.kind") == "model_import":
        chain["source_run_kind"] = "model_import"
        training = {
            key[len("training.") :]: value
            for key, value in params.items()
            if key.startswith("training.")
        }
        chain["training_run_id"] = run.data.tags.get("priors.training_run_id", "")
    else:
        chain["source_run_kind"] = "training"
        training = dict(params)
        chain["training_run_id"] = model_version.run_id
    chain["training"] = training
    chain["training_run_in_store"] = _run_exists(client, chain["training_run_id"])
    chain["generator_version"] = training.get("generator_version", "")
    chain["seed"] = training.get("seed", "")
    return chain


def _lineage_index(client: MlflowClient, run: Run, cache_dir: Path | None) -> dict[str, Any] | None:
    run_id = run.info.run_id
    cached = cache_dir / f"{run_id}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))
    try:
        index = load_run_json(client, run_id, LINEAGE_ARTIFACT)
    except FileNotFoundError:
        logger.debug("pair run %s (%s) has no %s", run_id, run.info.status, LINEAGE_ARTIFACT)
        return None
    if cached is not None and run.info.status != "RUNNING":
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(index), encoding="utf-8")
    return index


def _search_runs(client: MlflowClient, experiment_ids: list[str], query: str) -> Iterator[Run]:
    page_token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=query,
            max_results=SEARCH_PAGE_SIZE,
            page_token=page_token,
        )
        yield from page
        page_token = page.token
        if not page_token:
            return


def _quoted(value: str) -> str:
    """Escape a value for a single-quoted MLflow search string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _dataset_source_uri(source: str) -> str:
    """Return the URI of a logged dataset source, stored by MLflow as JSON text."""
    try:
        loaded = json.loads(source)
    except json.JSONDecodeError:
        return source
    return str(loaded.get("uri", source)) if isinstance(loaded, dict) else source


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    if not run_id:
        return False
    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True
