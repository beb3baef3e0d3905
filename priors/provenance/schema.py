"""JSON Schema of ``provenance.json``, the output of ``ProvenanceRecord.write_json``.

The schema lives in code so that an installed priors validates without the
source tree; ``docs/provenance.schema.json`` is this dict written out, and a test
keeps the two equal (``python -m priors.provenance.schema`` prints it).
"""

from __future__ import annotations

import json
from typing import Any

from priors.provenance.record import INSTANCE_FIELDS

__all__ = ["PROVENANCE_SCHEMA", "validate_provenance"]

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_UID = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)*$", "maxLength": 64}
_ANY_OBJECT = {"type": "object"}

_INSTANCE = {
    "type": "object",
    "required": list(INSTANCE_FIELDS),
    "properties": {
        "sop_instance_uid": _UID,
        "series_instance_uid": _UID,
        "study_instance_uid": _UID,
        "source_id": {"type": "string"},
        "location": {"type": "string", "description": "Path or URL of the instance."},
        "transfer_syntax_uid": _UID,
        "file_sha256": _SHA256,
        "pixel_sha256": {
            "oneOf": [_SHA256, {"type": "null"}],
            "description": "Null only when the pixel data was never decoded.",
        },
    },
}

PROVENANCE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:priors:provenance",
    "title": "priors provenance record",
    "description": (
        "Inputs, decisions, parameters, software and outputs behind one current "
        "study's context. Fields are added in later versions, never renamed."
    ),
    "type": "object",
    "required": [
        "schema_version",
        "job_id",
        "person_pseudonym",
        "created_utc",
        "software",
        "sources",
        "instances",
        "link_decisions",
        "selection",
        "volumes",
        "registrations",
        "models",
        "outputs",
        "steps",
    ],
    "properties": {
        "schema_version": {"type": "string", "pattern": r"^1\.[0-9]+$"},
        "job_id": {"type": "string", "minLength": 1},
        "person_pseudonym": {"type": "string", "minLength": 1},
        "created_utc": {"type": "string", "format": "date-time"},
        "software": {
            "type": "object",
            "required": ["priors", "git", "python", "libraries"],
            "properties": {
                "priors": {"type": "string"},
                "git": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["commit", "dirty"],
                            "properties": {
                                "commit": {"type": "string", "pattern": "^[0-9a-f]{40,64}$"},
                                "dirty": {"type": "boolean"},
                            },
                        },
                        {"type": "null"},
                    ]
                },
                "python": {"type": "string"},
                "libraries": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "null"]},
                },
            },
        },
        "sources": {"type": "array", "items": _ANY_OBJECT},
        "instances": {
            "type": "object",
            "required": ["current", "prior"],
            "properties": {
                "current": {"type": "array", "items": _INSTANCE},
                "prior": {"type": "array", "items": _INSTANCE},
            },
            "additionalProperties": False,
        },
        "link_decisions": {"type": "array", "items": _ANY_OBJECT},
        "selection": {"type": "array", "items": {"type": ["string", "object"]}},
        "volumes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["role", "series_instance_uid", "digest", "decisions", "metadata"],
                "properties": {
                    "role": {"enum": ["current", "prior"]},
                    "series_instance_uid": _UID,
                    "digest": _SHA256,
                    "decisions": {"type": "array"},
                    "metadata": _ANY_OBJECT,
                },
            },
        },
        "registrations": {"type": "array", "items": _ANY_OBJECT},
        "models": {"type": "array", "items": _ANY_OBJECT},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "path", "sha256"],
                "properties": {
                    "name": {"type": "string"},
                    "path": {"type": "string"},
                    "sha256": {"oneOf": [_SHA256, {"type": "null"}]},
                    "activity": {"enum": ["ingest", "registration", "inference", "packaging"]},
                },
            },
        },
        "steps": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "seconds"],
                "properties": {"name": {"type": "string"}, "seconds": {"type": "number"}},
            },
        },
    },
}


def validate_provenance(document: dict[str, Any]) -> None:
    """Check a provenance document against ``PROVENANCE_SCHEMA``.

    Raises
    ------
    ValueError
        Naming the first violation and its location in the document.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(PROVENANCE_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        location = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ValueError(f"provenance record invalid at {location}: {error.message}")


if __name__ == "__main__":
    print(json.dumps(PROVENANCE_SCHEMA, indent=2))
