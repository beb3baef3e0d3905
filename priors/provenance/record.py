"""The provenance record of one current study, grown step by step by the pipeline.

Lower layers return their decisions as data; the pipeline adds each one here as it
goes, and the record is written as ``provenance.json`` next to the outputs and
logged to MLflow. Its layout is described by ``docs/provenance.schema.json``
(``PROVENANCE_SCHEMA`` in ``priors.provenance.schema``).

The record refuses keys that name identifying DICOM attributes (patient name,
Patient ID, birth date, accession number, address), so a caller cannot put them
into a file that is logged to MLflow by accident. The person appears only as
the keyed pseudonym.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from priors.provenance.digests import file_sha256, jsonable
from priors.provenance.environment import code_version

__all__ = [
    "IDENTIFYING_KEYS",
    "INSTANCE_FIELDS",
    "OUTPUT_ACTIVITIES",
    "SCHEMA_VERSION",
    "ProvenanceRecord",
    "write_bytes_atomic",
]

logger = logging.getLogger(__name__)

# Version of the provenance.json layout. Fields are added, never renamed; a
# change that breaks readers bumps the major number.
SCHEMA_VERSION = "1.0"

ROLES = ("current", "prior")
# Steps that make outputs; each is an activity of the PROV export.
OUTPUT_ACTIVITIES = ("ingest", "registration", "inference", "packaging")

# Fields every instance entry carries; they trace a model input to its bytes.
INSTANCE_FIELDS = (
    "file_sha256",
    "location",
    "pixel_sha256",
    "series_instance_uid",
    "sop_instance_uid",
    "source_id",
    "study_instance_uid",
    "transfer_syntax_uid",
)

# Keys, compared case-insensitively without "_" or " ", of identifying attributes
# that must never reach a provenance record.
IDENTIFYING_KEYS = frozenset(
    {
        "accessionnumber",
        "birthdate",
        "otherpatientids",
        "patientaddress",
        "patientbirthdate",
        "patientid",
        "patientname",
        "personname",
    }
)


class ProvenanceRecord:
    """Provenance of one current study: inputs, decisions, parameters and outputs.

    Parameters
    ----------
    job_id
        Identifier of the job (for example its MLflow parent run id).
    person_pseudonym
        The person's keyed pseudonym; never a Patient ID.
    """

    def __init__(self, *, job_id: str, person_pseudonym: str) -> None:
        if not job_id:
            raise ValueError("job_id is empty")
        if not person_pseudonym:
            raise ValueError("person_pseudonym is empty")
        self.job_id = job_id
        self.person_pseudonym = person_pseudonym
        self.created_utc = _utc_now()
        self.sources: list[dict[str, Any]] = []
        self.instances: dict[str, list[dict[str, Any]]] = {role: [] for role in ROLES}
        self.link_decisions: list[dict[str, Any]] = []
        self.selection: list[Any] = []
        self.volumes: list[dict[str, Any]] = []
        self.registrations: list[dict[str, Any]] = []
        self.models: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        counts = {role: len(items) for role, items in self.instances.items()}
        return (
            f"ProvenanceRecord(job_id={self.job_id!r}, person={self.person_pseudonym!r}, "
            f"instances={counts}, outputs={len(self.outputs)})"
        )

    def add_source(self, description: Mapping[str, Any]) -> None:
        """Add the description of a DICOM source (kind, id, root, file-set id ...)."""
        self.sources.append(_clean(description, "source"))

    def add_instances(self, role: str, instances: Sequence[Mapping[str, Any]]) -> None:
        """Add the instances behind the current or a prior volume.

        Parameters
        ----------
        role
            ``"current"`` or ``"prior"``.
        instances
            One mapping per instance with at least the keys of ``INSTANCE_FIELDS``;
            ``pixel_sha256`` may be ``None`` only when the pixels were never decoded.

        Raises
        ------
        ValueError
            When the role is unknown or an instance lacks a field.
        """
        _check_role(role)
        for position, instance in enumerate(instances):
            missing = [name for name in INSTANCE_FIELDS if name not in instance]
            if missing:
                uid = instance.get("sop_instance_uid", f"#{position}")
                raise ValueError(
                    f"{role} instance {uid}: missing {', '.join(missing)}; "
                    f"expected all of {', '.join(INSTANCE_FIELDS)}"
                )
            self.instances[role].append(_clean(instance, f"{role} instance"))

    def add_link_decisions(self, decisions: Sequence[Mapping[str, Any]]) -> None:
        """Add the identity-linkage decisions (records linked, evidence, pseudonym)."""
        self.link_decisions.extend(_clean(item, "link decision") for item in decisions)

    def add_selection(self, reasons: Sequence[Mapping[str, Any] | str]) -> None:
        """Add the prior-selection reasons, one per study or series considered."""
        self.selection.extend(_clean(item, "selection reason") for item in reasons)

    def add_volume(
        self,
        role: str,
        *,
        series_instance_uid: str,
        decisions: Sequence[Mapping[str, Any] | str],
        metadata: Mapping[str, Any],
        digest: str,
    ) -> None:
        """Add a volume built from a series.

        Parameters
        ----------
        role
            ``"current"`` or ``"prior"``.
        series_instance_uid
            The series the volume was built from.
        decisions
            What the volume builder decided (slice order, gaps, tilt, rescale ...).
        metadata
            Geometry and pixel facts (size, spacing, origin and direction in LPS).
        digest
            The series digest (full 64 hexadecimal characters).
        """
        _check_role(role)
        self.volumes.append(
            {
                "role": role,
                "series_instance_uid": series_instance_uid,
                "digest": digest,
                "decisions": _clean(list(decisions), "volume decisions"),
                "metadata": _clean(metadata, "volume metadata"),
            }
        )

    def add_registration(self, info: Mapping[str, Any]) -> None:
        """Add one registration: parameters, seed, threads, matrix, quality, verdict."""
        self.registrations.append(_clean(info, "registration"))

    def add_model(self, info: Mapping[str, Any]) -> None:
        """Add the change method of a pair.

        ``info`` names the bundle, its version, weights SHA-256 and registered model
        name and version, or the baseline with the reason the model did not apply.
        """
        self.models.append(_clean(info, "model"))

    def add_output(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        sha256: str | None = None,
        activity: str | None = None,
    ) -> None:
        """Add an output file.

        Parameters
        ----------
        name
            What the file is, e.g. ``"registered_prior"`` or ``"change_probability"``.
        path
            Where it was written, preferably relative to the context package folder.
        sha256
            Its SHA-256. When ``None`` and ``path`` names an existing file, the file
            is hashed now, so add an output after it is written.
        activity
            The step that made it: ``"registration"``, ``"inference"`` or
            ``"packaging"``; ``None`` attributes it to the job as a whole.
        """
        if sha256 is None and Path(path).is_file():
            sha256 = file_sha256(path)
        entry: dict[str, Any] = {"name": name, "path": str(path), "sha256": sha256}
        if activity is not None and activity not in OUTPUT_ACTIVITIES:
            raise ValueError(
                f"output {name}: activity is {activity!r}, expected one of "
                f"{', '.join(OUTPUT_ACTIVITIES)} or None"
            )
        if activity is not None:
            entry["activity"] = activity
        self.outputs.append(entry)

    def add_step(self, name: str, seconds: float) -> None:
        """Add the wall time of a pipeline stage, in seconds."""
        self.steps.append({"name": name, "seconds": float(seconds)})

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data, with code and library versions."""
        return {
            "schema_version": SCHEMA_VERSION,
            "job_id": self.job_id,
            "person_pseudonym": self.person_pseudonym,
            "created_utc": self.created_utc,
            "software": code_version(),
            "sources": self.sources,
            "instances": self.instances,
            "link_decisions": self.link_decisions,
            "selection": self.selection,
            "volumes": self.volumes,
            "registrations": self.registrations,
            "models": self.models,
            "outputs": self.outputs,
            "steps": self.steps,
        }

    def write_json(self, path: str | os.PathLike[str]) -> str:
        """Write the record as JSON, atomically, and return the SHA-256 of the bytes."""
        data = json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        return write_bytes_atomic(path, data.encode("utf-8"))

    def to_prov_json(self) -> dict[str, Any]:
        """Return the record as a W3C PROV-JSON document (see ``priors.provenance.prov``)."""
        from priors.provenance.prov import record_to_prov

        return record_to_prov(self.to_dict())


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> str:
    """Write ``data`` through a temporary file and a rename; return its SHA-256."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role is {role!r}, expected one of {', '.join(ROLES)}")


def _clean(value: Any, what: str) -> Any:
    """Copy ``value`` as JSON data, rejecting keys of identifying attributes.

    NaN and infinite floats, which JSON cannot carry, become ``null``.
    """
    data = _finite_or_none(jsonable(value))
    _reject_identifying_keys(data, what)
    return data


def _finite_or_none(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite_or_none(item) for key, item in data.items()}
    if isinstance(data, list):
        return [_finite_or_none(item) for item in data]
    return data


def _reject_identifying_keys(data: Any, what: str) -> None:
    if isinstance(data, dict):
        for key, item in data.items():
            folded = key.replace("_", "").replace(" ", "").lower()
            if folded in IDENTIFYING_KEYS:
                raise ValueError(
                    f"{what}: key {key!r} names an identifying attribute. "
                    "Pass the person's pseudonym instead."
                )
            _reject_identifying_keys(item, what)
    elif isinstance(data, list):
        for item in data:
            _reject_identifying_keys(item, what)


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
