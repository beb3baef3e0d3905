"""The one-person flow: volumes, registration, change detection and package files.

:func:`prepare_person` runs wherever the caller puts it (this process, or a Ray
worker through :mod:`priors.distributed`). It reads DICOM files, writes the package
files of one person and returns every decision and figure as data. It writes
neither the catalog nor MLflow: the driver does, from the returned
:class:`PersonResult`.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from priors.config import Settings
from priors.provenance.digests import pair_key, series_digest
from priors.provenance.record import ProvenanceRecord

__all__ = [
    "InstanceRef",
    "PairResult",
    "PairTask",
    "PersonResult",
    "PersonTask",
    "SeriesRef",
    "prepare_person",
    "unused_reason",
]

log = logging.getLogger(__name__)

# Status values of a pair, as they appear in the job report and the MLflow tags.
FINISHED = "finished"
HELD_BACK = "held back"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass(frozen=True)
class InstanceRef:
    """One instance behind a model input, with where it was read and its hashes.

    ``location`` names the instance in its source's terms: a file, an archive member,
    a PACS URL. ``path`` is the local file its bytes are read from, when that differs,
    such as the extracted copy of an archive member or the cached copy of a PACS
    instance.
    """

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    source_id: str
    location: str
    transfer_syntax_uid: str
    file_sha256: str
    pixel_sha256: str | None
    path: str = ""

    @property
    def readable_path(self) -> str:
        """Return the local file that contains the instance's bytes."""
        return self.path or self.location

    def as_dict(self) -> dict[str, Any]:
        """Return the reference as JSON-ready values."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "source_id": self.source_id,
            "location": self.location,
            "transfer_syntax_uid": self.transfer_syntax_uid,
            "file_sha256": self.file_sha256,
            "pixel_sha256": self.pixel_sha256,
        }


@dataclass(frozen=True)
class SeriesRef:
    """A series chosen for a pair, with the attributes the outputs are labelled by."""

    series_instance_uid: str
    study_instance_uid: str
    study_date: str
    modality: str
    body_part: str
    series_description: str
    series_number: int | None
    instances: tuple[InstanceRef, ...]

    def digest(self) -> str | None:
        """Return the series digest, or None while a pixel hash is unknown."""
        hashes = {ref.sop_instance_uid: ref.pixel_sha256 for ref in self.instances}
        if not hashes or any(value is None for value in hashes.values()):
            return None
        return series_digest(hashes)  # type: ignore[arg-type]

    def summary(self) -> dict[str, Any]:
        """Return the labelling attributes, without the instance list."""
        return {
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "study_date": self.study_date,
            "modality": self.modality,
            "body_part": self.body_part,
            "series_description": self.series_description,
            "series_number": self.series_number,
            "instance_count": len(self.instances),
        }


@dataclass
class PairTask:
    """One current series with one prior series, as prior selection chose them."""

    pair_id: str
    current: SeriesRef
    prior: SeriesRef
    reasons: list[Any]
    pair_key: str | None = None


@dataclass
class PersonTask:
    """The work of one person: their current study and its pairs."""

    person: str
    current_study_uid: str
    package_dir: Path
    pairs: list[PairTask]
    provenance_base: dict[str, Any] = field(default_factory=dict)
    job_id: str = ""


@dataclass
class PairResult:
    """Everything the driver logs and packages for one pair."""

    pair_id: str
    pair_key: str
    status: str
    reason: str
    current: dict[str, Any]
    prior: dict[str, Any]
    current_digest: str
    prior_digest: str
    selection_reasons: list[Any]
    registration: dict[str, Any]
    change: dict[str, Any]
    outputs: dict[str, str]
    timings: dict[str, float]
    used_instances: list[dict[str, Any]]
    artifacts_dir: str
    provenance: dict[str, Any]
    # Files of the pair's series that could not be read or decoded, with the reason.
    rejected_files: list[dict[str, str]] = field(default_factory=list)
    # Readable files of the pair's series left out of its volumes, with the reason.
    unused_files: list[dict[str, str]] = field(default_factory=list)


@dataclass
class PersonResult:
    """The pairs of one person, and the error that stopped them, if any."""

    person: str
    current_study_uid: str
    package_dir: str
    pairs: list[PairResult]
    current_volume: str = ""
    error: str = ""


def prepare_person(
    task: PersonTask,
    *,
    settings: Settings,
    model_loader: Callable[[], Any] | None = None,
) -> PersonResult:
    """Build, register and compare every pair of one person.

    Pairs that reach the change model wait until ``model.pair_batch_size`` of them
    have (or the person has no more), and then go through one ``predict_batch``
    call. A pair that needs no model is finished at once. Each pair keeps its own
    outputs, provenance and errors. When the batched call raises, the model runs
    again pair by pair, and only the pairs that fail then are failed.

    Parameters
    ----------
    task
        The person's pairs, as planned by the driver.
    settings
        Registration and change-detection settings.
    model_loader
        Returns the loaded change model (a ``priors.change.ChangeModel``), or None
        when there is none. It is called for every pair that passes registration, so
        it should load once and then return the same model, as the Ray actors'
        loader does. Its ``pair_batch_size``, ``predict_batch`` and ``predict``
        are used.
    """
    from priors.dicom.volume import build_volumes

    task.package_dir.mkdir(parents=True, exist_ok=True)
    result = PersonResult(task.person, task.current_study_uid, str(task.package_dir), [])
    current_cache: dict[str, tuple[Any, dict[str, Any]]] = {}
    finished: list[PairResult | None] = [None] * len(task.pairs)
    waiting: list[tuple[int, _StagedPair, _ChangeInputs]] = []
    for index, pair in enumerate(task.pairs):
        started = time.perf_counter()
        try:
            if pair.current.series_instance_uid not in current_cache:
                current_cache[pair.current.series_instance_uid] = _volume_for(
                    pair.current, build_volumes)
            staged = _stage_pair(
                task, pair, current_cache[pair.current.series_instance_uid],
                started=started, model_loader=model_loader, settings=settings,
                build_volumes=build_volumes)
        except Exception as err:  # one broken pair must not stop the person's others
            finished[index] = _pair_failure(task, pair, err, started=started)
            continue
        change = staged.change
        if change is None or not change.use_model:
            finished[index] = _finish_or_fail(task, staged, None, settings=settings)
            continue
        waiting.append((index, staged, change))
        if len(waiting) >= change.model.pair_batch_size:
            _finish_waiting(task, waiting, finished, settings=settings)
            waiting = []
    _finish_waiting(task, waiting, finished, settings=settings)
    result.pairs = [pair_result for pair_result in finished if pair_result is not None]

    for series_uid, (volume, _) in current_cache.items():
        if volume is not None:
            result.current_volume = _write_image(
                volume.image, task.package_dir / f"current_{_short(series_uid)}.nii.gz")
    return result


@dataclass
class _ChangeInputs:
    """A registered pair's arrays on the current grid, and the method it will get."""

    current_array: np.ndarray  # (z, y, x) float32
    prior_array: np.ndarray  # (z, y, x) float32, the prior resampled onto the current
    overlap: np.ndarray  # (z, y, x) bool, where the prior covers the current
    spacing: tuple[float, float, float]  # (sx, sy, sz) mm
    model: Any
    use_model: bool
    scope_reason: str


@dataclass
class _StagedPair:
    """A pair with volumes and registration done, waiting for its change maps."""

    pair: PairTask
    started: float
    pair_dir: Path
    record: ProvenanceRecord
    current: Any
    current_info: dict[str, Any]
    prior: Any
    prior_info: dict[str, Any]
    current_digest: str
    prior_digest: str
    registration: Any
    registration_info: dict[str, Any]
    registered: Any
    outputs: dict[str, str]
    timings: dict[str, float]
    # None when the registration failed its quality checks and the pair is held back.
    change: _ChangeInputs | None


def _finish_waiting(task: PersonTask, waiting: list[tuple[int, _StagedPair, _ChangeInputs]],
                    finished: list[PairResult | None], *, settings: Settings) -> None:
    """Run the change model on the waiting pairs together, then finish each pair."""
    if not waiting:
        return
    clock = time.perf_counter()
    outputs = _predict_pairs(task, [change for _, _, change in waiting])
    # The pairs of one call share its time equally.
    share = (time.perf_counter() - clock) / len(waiting)
    for (index, staged, _), output in zip(waiting, outputs, strict=True):
        staged.timings["change_s"] += share
        finished[index] = _finish_or_fail(task, staged, output, settings=settings)


def _predict_pairs(task: PersonTask, changes: list[_ChangeInputs]) -> list[Any]:
    """Return each pair's model output, or the exception its prediction raised.

    Several pairs go through one ``predict_batch`` call. When that raises, each
    pair is predicted alone, so one bad pair costs only its own result.
    """
    model = changes[0].model
    if len(changes) > 1:
        try:
            return list(model.predict_batch(
                [(change.current_array, change.prior_array, change.spacing)
                 for change in changes]))
        except Exception as err:  # retried below pair by pair
            log.warning("change model on %d pairs of person %s failed together, "
                        "retrying one by one: %s: %s", len(changes), task.person,
                        type(err).__name__, err)
    outputs: list[Any] = []
    for change in changes:
        try:
            outputs.append(model.predict(change.current_array, change.prior_array,
                                         spacing=change.spacing))
        except Exception as err:  # reported as that pair's failure
            outputs.append(err)
    return outputs


def _finish_or_fail(task: PersonTask, staged: _StagedPair, output: Any, *,
                    settings: Settings) -> PairResult:
    """Finish a staged pair, or return it as failed with the error that stopped it."""
    try:
        if isinstance(output, Exception):
            raise output
        return _finish_pair(task, staged, output, settings=settings)
    except Exception as err:  # one broken pair must not stop the person's others
        return _pair_failure(task, staged.pair, err, started=staged.started)


def _pair_failure(task: PersonTask, pair: PairTask, err: Exception, *,
                  started: float) -> PairResult:
    """Log a pair's error and return the pair as failed with it as the reason."""
    log.error("pair %s of person %s failed: %s", pair.pair_id, task.person, err)
    log.debug("traceback of pair %s:\n%s", pair.pair_id,
              "".join(traceback.format_exception(err)))
    pair_result = _failed_pair(task, pair, f"{type(err).__name__}: {err}",
                               seconds=time.perf_counter() - started)
    pair_result.rejected_files = list(getattr(err, "rejected_files", []))
    return pair_result


def _volume_for(series: SeriesRef, build_volumes: Callable[..., Any]) -> tuple[Any, dict[str, Any]]:
    """Build the series' volume; several stacks keep the one with most slices."""
    paths = [ref.readable_path for ref in series.instances]
    location_of = {ref.readable_path: ref.location for ref in series.instances}
    volumes, rejections = build_volumes(paths)
    info: dict[str, Any] = {
        "rejections": [
            {"stack": item.stack_label, "reason": item.reason, "files": len(item.paths)}
            for item in rejections
        ],
        # Files that could not be read or decoded at all, as opposed to stacks set aside.
        "rejected_files": [
            {"location": location_of.get(str(path), str(path)), "reason": item.reason}
            for item in rejections if len(item.paths) == 1 and not item.stack_label
            for path in item.paths
        ],
    }
    if not volumes:
        reasons = "; ".join(item.reason for item in rejections) or "no volume could be built"
        raise VolumeError(f"series {series.series_instance_uid}: {reasons}",
                          rejected_files=info["rejected_files"])
    volumes = sorted(volumes, key=lambda item: len(item.sop_instance_uids), reverse=True)
    chosen = volumes[0]
    if len(volumes) > 1:
        info["stack_choice"] = (
            f"series {series.series_instance_uid} holds {len(volumes)} stacks; kept "
            f"{chosen.stack_label or 'the first'} with {len(chosen.sop_instance_uids)} slices")
    return chosen, info


class VolumeError(RuntimeError):
    """A series yielded no volume; ``rejected_files`` lists unreadable files in it."""

    def __init__(self, message: str, *, rejected_files: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.rejected_files = rejected_files or []


def _stage_pair(
    task: PersonTask,
    pair: PairTask,
    current_entry: tuple[Any, dict[str, Any]],
    *,
    started: float,
    settings: Settings,
    model_loader: Callable[[], Any] | None,
    build_volumes: Callable[..., Any],
) -> _StagedPair:
    """Build the prior's volume, register it and get the change inputs ready."""
    from priors.registration import (
        has_bspline,
        register,
        resample_onto,
        sampled_transform,
        write_overlay_png,
        write_transform,
    )

    timings: dict[str, float] = {}
    pair_dir = task.package_dir / "pairs" / pair.pair_id
    # A re-run replaces the pair's files whole, so no output of an earlier run can
    # sit beside a manifest that no longer names it.
    for stale in (pair_dir, task.package_dir / "dicom" / pair.pair_id):
        if stale.exists():
            shutil.rmtree(stale)
    pair_dir.mkdir(parents=True, exist_ok=True)
    record = ProvenanceRecord(job_id=task.job_id, person_pseudonym=task.person)
    _seed_record(record, task, pair)

    clock = time.perf_counter()
    current, current_info = current_entry
    prior, prior_info = _volume_for(pair.prior, build_volumes)
    timings["volumes_s"] = time.perf_counter() - clock
    current_digest = _digest_of(pair.current, current)
    prior_digest = _digest_of(pair.prior, prior)
    record.add_volume("current", series_instance_uid=pair.current.series_instance_uid,
                      decisions=_volume_decisions(current, current_info),
                      metadata=current.metadata, digest=current_digest)
    record.add_volume("prior", series_instance_uid=pair.prior.series_instance_uid,
                      decisions=_volume_decisions(prior, prior_info),
                      metadata=prior.metadata, digest=prior_digest)
    record.add_instances("current", _used_instances(pair.current, current))
    record.add_instances("prior", _used_instances(pair.prior, prior))

    modality = pair.current.modality
    modality_pair = f"{modality}-{pair.prior.modality}"
    clock = time.perf_counter()
    registration = register(current.image, prior.image, modality_pair=modality_pair,
                            settings=settings.registration)
    if has_bspline(registration.transform):
        # A deformable result is written whole, as HDF5, and resampled through its
        # B-spline sampled on a grid, which is far faster than evaluating it per voxel.
        resampling = sampled_transform(registration.transform, current.image)
        transform_path = write_transform(registration.transform, pair_dir / "transform.h5")
    else:
        resampling = registration.transform
        transform_path = write_transform(_single_transform(registration),
                                         pair_dir / "transform.tfm")
    registered = resample_onto(current.image, prior.image, resampling,
                               kind="image", modality=pair.prior.modality)
    timings["registration_s"] = time.perf_counter() - clock
    outputs = {
        "transform": str(transform_path),
        "registered_prior": _write_image(registered, pair_dir / "registered_prior.nii.gz"),
    }
    write_overlay_png(current.image, registered, pair_dir / "overlay.png",
                      title=f"{pair.current.study_date} vs {pair.prior.study_date}")
    outputs["overlay"] = str(pair_dir / "overlay.png")
    registration_info = _registration_info(registration)
    record.add_registration(registration_info)

    clock = time.perf_counter()
    change = _change_inputs(pair, current, registered, registration, prior_image=prior.image,
                            model_loader=model_loader)
    timings["change_s"] = time.perf_counter() - clock
    return _StagedPair(
        pair=pair, started=started, pair_dir=pair_dir, record=record, current=current,
        current_info=current_info, prior=prior, prior_info=prior_info,
        current_digest=current_digest, prior_digest=prior_digest, registration=registration,
        registration_info=registration_info, registered=registered, outputs=outputs,
        timings=timings, change=change)


def _finish_pair(task: PersonTask, staged: _StagedPair, model_output: Any, *,
                 settings: Settings) -> PairResult:
    """Write the change maps, the preview and the provenance of a staged pair.

    ``model_output`` is the pair's model ``ChangeOutput``, or None when the pair
    gets the baseline or is held back.
    """
    pair, pair_dir, record = staged.pair, staged.pair_dir, staged.record
    current, registered, prior = staged.current, staged.registered, staged.prior
    current_digest, prior_digest = staged.current_digest, staged.prior_digest
    current_info, prior_info = staged.current_info, staged.prior_info
    registration_info, outputs, timings = staged.registration_info, staged.outputs, staged.timings

    clock = time.perf_counter()
    change_info, change_outputs, status, reason = _detect_change(
        pair, current, staged.change, model_output,
        held_back_reason=staged.registration.reason, pair_dir=pair_dir,
        dicom_dir=task.package_dir / "dicom" / pair.pair_id, pseudonym=task.person)
    timings["change_s"] += time.perf_counter() - clock
    outputs.update(change_outputs)
    registered_model = task.provenance_base.get("registered_model")
    if change_info.get("method") == "model" and registered_model:
        # The MLflow Model Registry entry whose run records the training data and seed.
        change_info["registered_model"] = dict(registered_model)
    record.add_model(change_info)

    from priors.packaging.preview import write_preview_png

    write_preview_png(
        current.image, prior.image, registered,
        _read_labels(change_outputs.get("change_labels")),
        pair_dir / "preview.png",
        titles=(f"current {pair.current.study_date}", f"prior {pair.prior.study_date}",
                "registered prior", change_info.get("method", "no change map")))
    outputs["preview"] = str(pair_dir / "preview.png")

    key = pair.pair_key or pair_key(
        current_digest, prior_digest, registration_config=_registration_config(settings),
        model_version=_model_version(change_info))
    for name, path in sorted(outputs.items()):
        record.add_output(name, path)
    for name, seconds in timings.items():
        record.add_step(name, seconds)
    record.write_json(pair_dir / "provenance.json")
    _write_json(pair_dir / "provenance.prov.json", record.to_prov_json())
    _write_json(pair_dir / "registration.json", registration_info)
    outputs["provenance"] = str(pair_dir / "provenance.json")
    outputs["provenance_prov"] = str(pair_dir / "provenance.prov.json")

    return PairResult(
        pair_id=pair.pair_id, pair_key=key, status=status, reason=reason,
        current=pair.current.summary(), prior=pair.prior.summary(),
        current_digest=current_digest, prior_digest=prior_digest,
        selection_reasons=list(pair.reasons), registration=registration_info,
        change=change_info,
        outputs={name: _relative(path, task.package_dir) for name, path in outputs.items()},
        timings=timings,
        used_instances=(_used_instances(pair.current, current)
                        + _used_instances(pair.prior, prior)),
        artifacts_dir=str(pair_dir), provenance=record.to_dict(),
        rejected_files=current_info["rejected_files"] + prior_info["rejected_files"],
        unused_files=_unused_files(pair.current, current) + _unused_files(pair.prior, prior))


def _prior_coverage(current: Any, prior: Any, transform: Any) -> np.ndarray:
    """Return a (z, y, x) boolean mask of the current grid that the prior covers."""
    import SimpleITK as sitk

    ones = sitk.Image(prior.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(prior)
    covered = sitk.Resample(ones, current, transform, sitk.sitkNearestNeighbor, 0,
                            sitk.sitkUInt8)
    return sitk.GetArrayFromImage(covered).astype(bool)


def _single_transform(registration: Any) -> Any:
    """Return the registration as one affine transform, current to prior points.

    ITK's text transform format cannot hold a composite transform after the first
    entry, and the composition of the initial and optimised rigid transforms is
    itself affine, so the 4x4 matrix loses nothing.
    """
    import SimpleITK as sitk

    matrix = np.asarray(registration.matrix_lps, dtype=float)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix[:3, :3].ravel().tolist())
    transform.SetTranslation(matrix[:3, 3].tolist())
    return transform


def _change_inputs(pair: PairTask, current: Any, registered: Any, registration: Any, *,
                   prior_image: Any, model_loader: Callable[[], Any] | None,
                   ) -> _ChangeInputs | None:
    """Return the arrays and the method for change detection, or None after a failed QA."""
    import SimpleITK as sitk

    if registration.verdict != "pass":
        return None

    current_array = sitk.GetArrayFromImage(current.image).astype(np.float32)
    prior_array = sitk.GetArrayFromImage(registered).astype(np.float32)
    # Change is only assessable where the prior has data: outside its field of view
    # the resampled prior contains the fill value, which would read as new tissue.
    overlap = _prior_coverage(current.image, prior_image, registration.transform)
    sx, sy, sz = (float(value) for value in current.image.GetSpacing())
    model = model_loader() if model_loader is not None else None
    in_scope, scope_reason = (False, "no change model configured")
    if model is not None:
        in_scope, scope_reason = model.in_scope(modality=pair.current.modality,
                                                body_part=pair.current.body_part)
    return _ChangeInputs(current_array=current_array, prior_array=prior_array,
                         overlap=overlap, spacing=(sx, sy, sz), model=model,
                         use_model=model is not None and in_scope, scope_reason=scope_reason)


def _detect_change(pair: PairTask, current: Any, inputs: _ChangeInputs | None,
                   model_output: Any, *, held_back_reason: str, pair_dir: Path,
                   dicom_dir: Path, pseudonym: str,
                   ) -> tuple[dict[str, Any], dict[str, str], str, str]:
    """Write the model's maps in scope, the baseline's outside it, nothing after a failed QA.

    ``model_output`` is the pair's model result, already computed with the other
    pairs of its person. The change maps are also written as DICOM: identified into
    ``dicom_dir``, outside the pair folder that goes to MLflow, and with the
    pseudonym into ``pair_dir/dicom``.
    """
    if inputs is None:
        reason = f"registration failed its quality checks: {held_back_reason}"
        return {"method": "none", "reason": reason}, {}, HELD_BACK, reason

    current_array, prior_array = inputs.current_array, inputs.prior_array
    overlap, spacing, model = inputs.overlap, inputs.spacing, inputs.model
    modality = pair.current.modality
    info: dict[str, Any]
    if inputs.use_model:
        output = model_output
        info = {
            "method": "model", "reason": "",
            "bundle": model.name, "version": model.version,
            "weights_sha256": model.weights_sha256, "device": model.device,
            "parameters": output.parameters,
        }
    else:
        from priors.change import subtraction_baseline

        output = subtraction_baseline(current_array, prior_array, spacing=spacing,
                                      modality=modality)
        info = {"method": "baseline", "reason": inputs.scope_reason,
                "parameters": output.parameters}
        if model is not None:
            info.update({"bundle": model.name, "version": model.version,
                         "weights_sha256": model.weights_sha256})
    output.labels[~overlap] = 0
    output.probability[~overlap] = 0.0
    output.parameters["assessed_fraction_of_current"] = round(float(overlap.mean()), 4)

    from priors.change import summarize_lesions

    lesions = summarize_lesions(
        output.labels, spacing=spacing, origin_lps=current.image.GetOrigin(),
        direction_lps=current.image.GetDirection(), current=current_array, prior=prior_array)
    outputs = {
        "change_probability": _write_array(output.probability.astype(np.float32), current.image,
                                           pair_dir / "change_probability.nii.gz"),
        "change_labels": _write_array(output.labels.astype(np.uint8), current.image,
                                      pair_dir / "change_labels.nii.gz"),
        "lesions": _write_json(pair_dir / "lesions.json", {"lesions": lesions}),
    }
    info["lesion_count"] = len(lesions)
    info["changed_voxels"] = int(np.count_nonzero(output.labels))
    outputs.update(_write_change_dicom(current, output, info, identified_dir=dicom_dir,
                                       pseudonymised_dir=pair_dir / "dicom",
                                       pseudonym=pseudonym))
    return info, outputs, FINISHED, info["reason"]


def _write_change_dicom(current: Any, output: Any, info: dict[str, Any], *,
                        identified_dir: Path, pseudonymised_dir: Path,
                        pseudonym: str) -> dict[str, str]:
    """Write the DICOM SEG and Parametric Map; a volume they cannot reference gets none.

    A resampled current volume (gantry tilt, interpolated gaps) has slices that no
    source image matches, so it is recorded in ``info["dicom_outputs"]`` and skipped.
    """
    from priors import __version__
    from priors.packaging.dicom_outputs import write_change_dicom

    if info["method"] == "model":
        algorithm = {"name": str(info["bundle"]), "version": str(info["version"]),
                     "method": "model", "weights_sha256": str(info["weights_sha256"])}
    else:
        algorithm = {"name": "priors subtraction baseline", "version": __version__,
                     "method": "baseline"}
    try:
        identified = write_change_dicom(
            source_paths=current.paths, labels=output.labels, probability=output.probability,
            out_dir=identified_dir, algorithm=algorithm)
        write_change_dicom(
            source_paths=current.paths, labels=output.labels, probability=output.probability,
            out_dir=pseudonymised_dir, algorithm=algorithm, pseudonym=pseudonym)
    except ValueError as err:  # DicomOutputError, or highdicom rejecting a source
        log.warning("series %s: no DICOM change outputs: %s",
                    current.series_instance_uid, err)
        info["dicom_outputs"] = f"not written: {err}"
        return {}
    info["dicom_outputs"] = "written"
    return identified


def _failed_pair(task: PersonTask, pair: PairTask, reason: str, *, seconds: float) -> PairResult:
    return PairResult(
        pair_id=pair.pair_id, pair_key=pair.pair_key or "", status=FAILED, reason=reason,
        current=pair.current.summary(), prior=pair.prior.summary(),
        current_digest=pair.current.digest() or "", prior_digest=pair.prior.digest() or "",
        selection_reasons=list(pair.reasons), registration={}, change={}, outputs={},
        timings={"total_s": seconds}, used_instances=[],
        artifacts_dir=str(task.package_dir / "pairs" / pair.pair_id), provenance={})


def _seed_record(record: ProvenanceRecord, task: PersonTask, pair: PairTask) -> None:
    base = task.provenance_base
    for source in base.get("sources", []):
        record.add_source(source)
    record.add_link_decisions(base.get("link_decisions", []))
    record.add_selection(list(base.get("selection", [])) + list(pair.reasons))


def _digest_of(series: SeriesRef, volume: Any) -> str:
    """Return the digest of the instances in the volume, hashed at ingest or decoding."""
    in_volume = set(volume.sop_instance_uids)
    hashes: dict[str, str] = {}
    for ref in series.instances:
        if ref.sop_instance_uid in in_volume:
            value = ref.pixel_sha256 or volume.pixel_sha256.get(ref.sop_instance_uid)
            if value is None:
                raise VolumeError(f"series {series.series_instance_uid}: instance "
                                  f"{ref.sop_instance_uid} has no pixel hash")
            hashes[ref.sop_instance_uid] = value
    return series_digest(hashes)


def _unused_files(series: SeriesRef, volume: Any) -> list[dict[str, str]]:
    """Return the series' files that are not in the volume used for the pair."""
    used = set(volume.paths)
    return [{"location": ref.location, "reason": unused_reason(series.series_instance_uid)}
            for ref in series.instances if ref.readable_path not in used]


def unused_reason(series_instance_uid: str) -> str:
    """Return the reason given to a file of a paired series left out of its volume."""
    return (f"not in the volume built from series {series_instance_uid} for the pair "
            "(another stack of the series was used)")


def _used_instances(series: SeriesRef, volume: Any) -> list[dict[str, Any]]:
    used = set(volume.sop_instance_uids)
    rows = []
    for ref in series.instances:
        if ref.sop_instance_uid not in used:
            continue
        row = ref.as_dict()
        if row["pixel_sha256"] is None:
            row["pixel_sha256"] = volume.pixel_sha256.get(ref.sop_instance_uid)
        rows.append(row)
    return rows


def _volume_decisions(volume: Any, info: Mapping[str, Any]) -> list[str]:
    decisions = list(volume.decisions)
    if info.get("stack_choice"):
        decisions.append(info["stack_choice"])
    decisions.extend(f"stack {item['stack']!r} rejected: {item['reason']}"
                     for item in info.get("rejections", []))
    return decisions


def _registration_info(result: Any) -> dict[str, Any]:
    return {
        "verdict": result.verdict,
        "reason": result.reason,
        "matrix_lps": result.matrix_lps,
        "metrics": dict(result.metrics),
        "candidates": list(result.candidates),
        "ambiguous": bool(result.ambiguous),
        "parameters": dict(result.parameters),
        "timings": dict(result.timings),
    }


def _registration_config(settings: Settings) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(settings.registration)


def _model_version(change_info: Mapping[str, Any]) -> str:
    if change_info.get("weights_sha256"):
        return f"{change_info.get('bundle')}:{change_info.get('version')}:" \
               f"{change_info['weights_sha256'][:16]}"
    return "baseline"


def _read_labels(path: str | None) -> np.ndarray | None:
    if not path:
        return None
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def _write_image(image: Any, path: Path) -> str:
    import SimpleITK as sitk

    sitk.WriteImage(image, str(path), useCompression=True)
    return str(path)


def _write_array(array: np.ndarray, reference: Any, path: Path) -> str:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return _write_image(image, path)


def _write_json(path: Path, data: Any) -> str:
    import json

    from priors.provenance.digests import jsonable

    path.write_text(json.dumps(jsonable(data), indent=2, sort_keys=True), encoding="utf-8")
    return str(path)


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _short(uid: str) -> str:
    """Return a short, file-name-safe label of a UID (its last components)."""
    return uid.replace(".", "-")[-24:]

