"""JSON Schema of a context package's ``manifest.json``.

The schema lives in code so that an installed priors validates without the
source tree; ``docs/context-package.schema.json`` is this dict written out, and
a test keeps the two equal (``python -m priors.packaging.schema`` prints it).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MANIFEST_SCHEMA", "MANIFEST_SCHEMA_VERSION"]

# Fields are added, never renamed; a change that breaks readers bumps the major number.
MANIFEST_SCHEMA_VERSION = "1.0"

_UID = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)*$", "maxLength": 64}
_RELATIVE_PATH = {"type": "string", "minLength": 1}
_OPTIONAL_PATH = {"type": ["string", "null"], "minLength": 1}

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:priors:context-package:manifest",
    "title": "priors context package manifest",
    "description": (
        "One folder per current study. Paths are relative to the folder that holds "
        "manifest.json, with '/' separators. Fields are added in later versions, "
        "never renamed, so readers must ignore fields they do not know."
    ),
    "type": "object",
    "required": ["schema_version", "job_id", "person_pseudonym", "current", "pairs"],
    "properties": {
        "schema_version": {
            "type": "string",
            "pattern": r"^1\.[0-9]+$",
            "description": "Version of this layout; 1.x readers read every 1.y file.",
        },
        "job_id": {"type": "string", "minLength": 1},
        "created_utc": {"type": "string", "format": "date-time"},
        "person_pseudonym": {
            "type": "string",
            "minLength": 1,
            "description": "Keyed HMAC-SHA256 pseudonym of the person; never a Patient ID.",
        },
        "current": {
            "type": "object",
            "required": ["study_instance_uid", "series"],
            "properties": {
                "study_instance_uid": _UID,
                "series": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["series_instance_uid"],
                        "properties": {
                            "series_instance_uid": _UID,
                            "modality": {"type": "string"},
                            "body_part_examined": {"type": "string"},
                            "series_description": {"type": "string"},
                            "series_digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                            "instance_count": {"type": "integer", "minimum": 0},
                            "volume": _RELATIVE_PATH,
                        },
                    },
                },
            },
        },
        "pairs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "current_series_instance_uid",
                    "prior",
                    "selection_reasons",
                    "registration",
                    "paths",
                ],
                "properties": {
                    "pair_key": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "mlflow_run_id": {"type": "string"},
                    "status": {"type": "string"},
                    "reason": {"type": "string"},
                    "current_series_instance_uid": _UID,
                    "prior": {
                        "type": "object",
                        "required": ["study_instance_uid", "series_instance_uid"],
                        "properties": {
                            "study_instance_uid": _UID,
                            "series_instance_uid": _UID,
                            "study_date": {"type": "string"},
                        },
                    },
                    "selection_reasons": {
                        "type": "array",
                        "items": {"type": ["string", "object"]},
                        "description": "Why this prior and series were chosen.",
                    },
                    "registration": {
                        "type": "object",
                        "required": ["verdict", "figures"],
                        "properties": {
                            "verdict": {
                                "type": "string",
                                "description": "For example 'accepted' or 'held back: ...'.",
                            },
                            "figures": {
                                "type": "object",
                                "description": "Quality figures, e.g. overlap and NCC.",
                            },
                        },
                    },
                    "change": {
                        "type": "object",
                        "properties": {
                            "method": {"type": "string"},
                            "reason": {"type": "string"},
                        },
                    },
                    "paths": {
                        "type": "object",
                        "required": [
                            "transform",
                            "registered_prior",
                            "change_maps",
                            "dicom_outputs",
                            "lesions",
                            "provenance",
                        ],
                        "properties": {
                            "transform": _OPTIONAL_PATH,
                            "registered_prior": _OPTIONAL_PATH,
                            "change_maps": {"type": "array", "items": _RELATIVE_PATH},
                            "dicom_outputs": {"type": "array", "items": _RELATIVE_PATH},
                            "lesions": _OPTIONAL_PATH,
                            "provenance": _OPTIONAL_PATH,
                            "provenance_prov": _OPTIONAL_PATH,
                            "previews": {"type": "array", "items": _RELATIVE_PATH},
                        },
                    },
                },
            },
        },
    },
}


if __name__ == "__main__":
    print(json.dumps(MANIFEST_SCHEMA, indent=2))
