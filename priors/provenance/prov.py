"""Export of a provenance record as W3C PROV-JSON.

The layout follows the PROV-JSON serialization (W3C Member Submission, 2013):
top-level ``prefix``, ``entity``, ``activity``, ``agent`` and one object per
relation kind, each keyed by identifier. Identifiers used here:

- ``oid:<SOP Instance UID>`` for a DICOM instance (UIDs are ISO OIDs, so
  ``urn:oid:`` names them), with its file and pixel SHA-256 as attributes;
- ``priors:volume/<role>/<Series Instance UID>`` for a volume, derived from its
  instances;
- ``priors:output/<name>`` for an output file;
- ``priors:job/<job id>`` and ``priors:<step>/<job id>`` for the activities
  (ingest, registration, inference);
- ``priors:software/<version>`` and ``priors:model/<name>/<version>`` for agents.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from priors.provenance.record import OUTPUT_ACTIVITIES

__all__ = ["PROV_PREFIXES", "record_to_prov"]

PROV_PREFIXES = {
    "oid": "urn:oid:",
    "priors": "urn:priors:",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}


class _ProvDocument:
    def __init__(self) -> None:
        self.sections: dict[str, dict[str, Any]] = {"prefix": dict(PROV_PREFIXES)}
        self._relation_counts: dict[str, int] = {}

    def add(self, section: str, identifier: str, attributes: Mapping[str, Any]) -> None:
        self.sections.setdefault(section, {})[identifier] = {
            key: value for key, value in attributes.items() if value is not None
        }

    def relate(self, kind: str, attributes: Mapping[str, str]) -> None:
        number = self._relation_counts.get(kind, 0) + 1
        self._relation_counts[kind] = number
        self.add(kind, f"_:{kind}{number}", attributes)


def record_to_prov(record: Mapping[str, Any]) -> dict[str, Any]:
    """Convert the output of ``ProvenanceRecord.to_dict`` to a PROV-JSON document.

    Parameters
    ----------
    record
        The provenance record as a dict.

    Returns
    -------
    dict
        The PROV-JSON document.
    """
    document = _ProvDocument()
    job_id = record["job_id"]
    job = f"priors:job/{job_id}"
    activity_ids = {step: f"priors:{step}/{job_id}" for step in OUTPUT_ACTIVITIES}

    software = f"priors:software/{record['software']['priors']}"
    document.add(
        "agent",
        software,
        {
            "prov:type": "prov:SoftwareAgent",
            "priors:version": record["software"]["priors"],
            "priors:git_commit": (record["software"].get("git") or {}).get("commit"),
        },
    )
    document.add(
        "activity", job, {"prov:type": "priors:Job", "prov:startTime": record["created_utc"]}
    )
    document.relate("wasAssociatedWith", {"prov:activity": job, "prov:agent": software})
    for step, identifier in activity_ids.items():
        document.add("activity", identifier, {"prov:type": f"priors:{step.capitalize()}"})
        document.relate("wasInformedBy", {"prov:informed": job, "prov:informant": identifier})
        document.relate("wasAssociatedWith", {"prov:activity": identifier, "prov:agent": software})

    instance_ids = _add_instances(document, record, ingest=activity_ids["ingest"])
    volume_ids = _add_volumes(document, record, instance_ids, ingest=activity_ids["ingest"])
    for volume in volume_ids:
        document.relate(
            "used", {"prov:activity": activity_ids["registration"], "prov:entity": volume}
        )
        document.relate("used", {"prov:activity": activity_ids["inference"], "prov:entity": volume})

    _add_models(document, record, inference=activity_ids["inference"])
    _add_outputs(document, record, job=job, activity_ids=activity_ids)
    return document.sections


def _add_instances(
    document: _ProvDocument, record: Mapping[str, Any], *, ingest: str
) -> dict[str, list[str]]:
    """Add one entity per instance; return series UID -> entity identifiers."""
    by_series: dict[str, list[str]] = {}
    for role, instances in record["instances"].items():
        for instance in instances:
            identifier = f"oid:{instance['sop_instance_uid']}"
            if identifier in document.sections.get("entity", {}):
                # The same instance read at a second location keeps its own entity.
                identifier = f"{identifier}#{instance['file_sha256']}"
            document.add(
                "entity",
                identifier,
                {
                    "prov:type": "priors:DicomInstance",
                    "priors:role": role,
                    "priors:sop_instance_uid": instance["sop_instance_uid"],
                    "priors:series_instance_uid": instance["series_instance_uid"],
                    "priors:study_instance_uid": instance["study_instance_uid"],
                    "priors:file_sha256": instance["file_sha256"],
                    "priors:pixel_sha256": instance["pixel_sha256"],
                    "priors:source_id": instance["source_id"],
                    "prov:location": instance["location"],
                    "priors:transfer_syntax_uid": instance["transfer_syntax_uid"],
                },
            )
            document.relate("used", {"prov:activity": ingest, "prov:entity": identifier})
            by_series.setdefault(instance["series_instance_uid"], []).append(identifier)
    return by_series


def _add_volumes(
    document: _ProvDocument,
    record: Mapping[str, Any],
    instance_ids: Mapping[str, list[str]],
    *,
    ingest: str,
) -> list[str]:
    volume_ids = []
    for volume in record["volumes"]:
        identifier = f"priors:volume/{volume['role']}/{volume['series_instance_uid']}"
        document.add(
            "entity",
            identifier,
            {
                "prov:type": "priors:Volume",
                "priors:role": volume["role"],
                "priors:series_instance_uid": volume["series_instance_uid"],
                "priors:series_digest": volume["digest"],
            },
        )
        document.relate("wasGeneratedBy", {"prov:entity": identifier, "prov:activity": ingest})
        for instance in instance_ids.get(volume["series_instance_uid"], []):
            document.relate(
                "wasDerivedFrom",
                {"prov:generatedEntity": identifier, "prov:usedEntity": instance},
            )
        volume_ids.append(identifier)
    return volume_ids


def _add_models(document: _ProvDocument, record: Mapping[str, Any], *, inference: str) -> None:
    for model in record["models"]:
        name = model.get("name") or model.get("bundle") or model.get("method") or "unnamed"
        version = model.get("version") or model.get("registered_model_version") or "unversioned"
        identifier = f"priors:model/{name}/{version}"
        document.add(
            "agent",
            identifier,
            {
                "prov:type": "prov:SoftwareAgent",
                "priors:name": str(name),
                "priors:version": str(version),
                "priors:weights_sha256": model.get("weights_sha256"),
                "priors:registered_model_name": model.get("registered_model_name"),
                "priors:registered_model_version": _as_text(model.get("registered_model_version")),
                "priors:reason": model.get("reason"),
            },
        )
        document.relate("wasAssociatedWith", {"prov:activity": inference, "prov:agent": identifier})


def _add_outputs(
    document: _ProvDocument,
    record: Mapping[str, Any],
    *,
    job: str,
    activity_ids: Mapping[str, str],
) -> None:
    for output in record["outputs"]:
        identifier = f"priors:output/{output['name']}"
        document.add(
            "entity",
            identifier,
            {
                "prov:type": "priors:Output",
                "prov:location": output["path"],
                "priors:sha256": output.get("sha256"),
            },
        )
        activity = activity_ids.get(output.get("activity") or "", job)
        document.relate("wasGeneratedBy", {"prov:entity": identifier, "prov:activity": activity})


def _as_text(value: Any) -> str | None:
    return None if value is None else str(value)
