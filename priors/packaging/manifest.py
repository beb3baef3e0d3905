"""The ``manifest.json`` of a context package: one folder per current study.

The manifest names the person's pseudonym, the current study and series, and one
entry per pair with the prior's study and series, the selection reasons, the
registration verdict and figures, and the paths, relative to the package folder,
of the files made for the pair. Vendors' and data scientists' scripts parse it,
so fields are added, never renamed; ``MANIFEST_SCHEMA`` (written out as
``docs/context-package.schema.json``) describes it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from priors.packaging.schema import MANIFEST_SCHEMA, MANIFEST_SCHEMA_VERSION
from priors.provenance.digests import jsonable
from priors.provenance.record import write_bytes_atomic

__all__ = [
    "MANIFEST_NAME",
    "PAIR_PATH_FIELDS",
    "ManifestError",
    "build_manifest",
    "validate_manifest",
    "write_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"

# Path fields of a pair entry: a relative path or null (not made), or for
# change maps and DICOM outputs a list of relative paths.
PAIR_PATH_FIELDS = (
    "transform",
    "registered_prior",
    "change_maps",
    "dicom_outputs",
    "lesions",
    "provenance",
    "provenance_prov",
    "previews",
)
_LIST_PATH_FIELDS = ("change_maps", "dicom_outputs", "previews")


class ManifestError(ValueError):
    """A manifest that does not match its schema or names a missing file."""


def build_manifest(
    *,
    person_pseudonym: str,
    current_study_uid: str,
    current_series: Sequence[Mapping[str, Any]],
    pairs: Sequence[Mapping[str, Any]],
    job_id: str,
) -> dict[str, Any]:
    """Build the manifest of a context package.

    Parameters
    ----------
    person_pseudonym
        The person's keyed pseudonym.
    current_study_uid
        Study Instance UID of the current study.
    current_series
        One mapping per current series, with ``series_instance_uid`` and any of
        ``modality``, ``body_part_examined``, ``series_description``,
        ``series_digest``, ``instance_count``, ``volume`` (relative path).
    pairs
        One mapping per pair with ``current_series_instance_uid``,
        ``prior_study_instance_uid``, ``prior_series_instance_uid``,
        ``selection_reasons`` and ``registration`` (with ``verdict`` and optional
        ``figures``), and optionally ``pair_key``, ``prior_study_date``,
        ``change`` (``method``, ``reason``), ``mlflow_run_id`` and ``paths``, a
        mapping of the keys of ``PAIR_PATH_FIELDS``.
    job_id
        The job that made the package.

    Returns
    -------
    dict
        The manifest, valid against ``MANIFEST_SCHEMA``.

    Raises
    ------
    ManifestError
        When a required field is missing or the result does not match the schema.
    """
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "job_id": job_id,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "person_pseudonym": person_pseudonym,
        "current": {
            "study_instance_uid": current_study_uid,
            "series": [jsonable(series) for series in current_series],
        },
        "pairs": [_pair_entry(position, pair) for position, pair in enumerate(pairs)],
    }
    validate_manifest(manifest)
    return manifest


def _pair_entry(position: int, pair: Mapping[str, Any]) -> dict[str, Any]:
    required = (
        "current_series_instance_uid",
        "prior_study_instance_uid",
        "prior_series_instance_uid",
        "selection_reasons",
        "registration",
    )
    missing = [name for name in required if name not in pair]
    if missing:
        raise ManifestError(f"pair #{position}: missing {', '.join(missing)}")

    registration = dict(jsonable(pair["registration"]))
    if "verdict" not in registration:
        raise ManifestError(f"pair #{position}: registration has no 'verdict'")
    registration.setdefault("figures", {})

    paths = dict(jsonable(pair.get("paths") or {}))
    unknown = sorted(set(paths) - set(PAIR_PATH_FIELDS))
    if unknown:
        raise ManifestError(
            f"pair #{position}: unknown path fields {', '.join(unknown)}, "
            f"expected some of {', '.join(PAIR_PATH_FIELDS)}"
        )
    for name in PAIR_PATH_FIELDS:
        paths.setdefault(name, [] if name in _LIST_PATH_FIELDS else None)

    entry: dict[str, Any] = {
        "current_series_instance_uid": pair["current_series_instance_uid"],
        "prior": {
            "study_instance_uid": pair["prior_study_instance_uid"],
            "series_instance_uid": pair["prior_series_instance_uid"],
        },
        "selection_reasons": jsonable(list(pair["selection_reasons"])),
        "registration": registration,
        "change": jsonable(pair.get("change") or {}),
        "paths": paths,
    }
    for optional in ("pair_key", "mlflow_run_id", "status", "reason"):
        if pair.get(optional):
            entry[optional] = str(pair[optional])
    if pair.get("prior_study_date"):
        entry["prior"]["study_date"] = str(pair["prior_study_date"])
    return entry


def validate_manifest(manifest: Mapping[str, Any]) -> None:
    """Check a manifest against ``MANIFEST_SCHEMA`` and its paths for safety.

    Raises
    ------
    ManifestError
        Naming the first schema violation, with its location in the manifest, or a
        path that is absolute or leaves the package folder.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(manifest))
    if error is not None:
        location = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ManifestError(f"manifest invalid at {location}: {error.message}")

    for where, relative in _relative_paths(manifest):
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts or "\\" in relative:
            raise ManifestError(
                f"{where}: path {relative!r} must be relative to the package "
                "folder, with '/' separators and no '..'"
            )


def write_manifest(package_dir: Path, manifest: Mapping[str, Any]) -> Path:
    """Validate a manifest and write it as ``manifest.json`` in the package folder.

    Every path the manifest names must exist under ``package_dir``.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ManifestError
        When the manifest is invalid or names a file that is not in the package.
    """
    package_dir = Path(package_dir)
    validate_manifest(manifest)
    for where, relative in _relative_paths(manifest):
        if not (package_dir / relative).exists():
            raise ManifestError(
                f"{package_dir}: {where} names {relative!r}, which is not in the "
                "package. Write the file first or set the path to null."
            )

    path = package_dir / MANIFEST_NAME
    text = json.dumps(jsonable(manifest), indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))
    logger.info("manifest written: %s (%d pairs)", path, len(manifest["pairs"]))
    return path


def _relative_paths(manifest: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return (where, relative path) for every file the manifest names."""
    found: list[tuple[str, str]] = []
    for series in manifest["current"]["series"]:
        if series.get("volume"):
            found.append(("current series", series["volume"]))
    for position, pair in enumerate(manifest["pairs"]):
        for name in PAIR_PATH_FIELDS:
            value = pair["paths"].get(name)
            values = value if isinstance(value, list) else [value]
            found.extend((f"pair #{position}", item) for item in values if item)
    return found
