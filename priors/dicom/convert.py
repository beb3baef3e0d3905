"""DICOM folders to NIfTI volumes with JSON sidecars: the work of ``priors convert``.

Every file under a source ends in one outcome: used (part of a written volume),
rejected with a reason (unreadable header, no Series Instance UID, a series or stack
that ``build_volumes`` rejected) or skipped (not DICOM, a DICOMDIR index). Output
file names carry the series number, a slug of the series description and a short
hash of the Series Instance UID, never patient identifiers.

SimpleITK writes NIfTI from its LPS image with the LPS to RAS sign change in the
qform and sform, so NIfTI readers see the usual RAS affine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from priors.dicom.sniff import NOT_DICOM, sniff
from priors.dicom.volume import (
    GAP_POLICIES,
    TEMPORAL_POLICIES,
    TILT_POLICIES,
    SeriesRejection,
    Volume,
    build_volumes,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "FolderScan",
    "SeriesFiles",
    "run_convert",
    "scan_files",
    "volume_file_stem",
]

logger = logging.getLogger(__name__)

EXIT_OK = 0
# A series raised instead of being built or rejected, or an output could not be written.
EXIT_FAILED = 1
# A source path is missing.
EXIT_USAGE = 2

# (0002,0002) Media Storage SOP Class UID of a DICOMDIR (Media Storage Directory
# Storage, PS3.4 Annex F): an index of the media, not an image.
MEDIA_STORAGE_DIRECTORY_UID = "1.2.840.10008.1.3.10"

# Characters of the Series Instance UID hash in file names: 8 hex digits keep names
# short, and two series of one conversion share them with odds of about 1 in 4e9.
UID_HASH_CHARS = 8

# Maximum length of the series description and stack label slugs in a file name.
MAX_SLUG_CHARS = 40

REJECTED_FILE = "rejected.json"
SUMMARY_FILE = "conversion.json"


@dataclass
class SeriesFiles:
    """The files of one series found under the sources, with its identifying tags."""

    series_instance_uid: str
    paths: list[Path] = field(default_factory=list)
    series_number: str = ""
    series_description: str = ""
    modality: str = ""


@dataclass
class FolderScan:
    """Files found under the sources, grouped by (0020,000E) Series Instance UID.

    ``rejected`` and ``skipped`` contain ``{"path", "reason"}`` records, and
    ``not_dicom`` lists the files whose first bytes are not DICOM.
    """

    series: dict[str, SeriesFiles] = field(default_factory=dict)
    not_dicom: list[Path] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    files_found: int = 0


def _walk(source: Path) -> Iterator[Path]:
    """Yield the files under ``source`` (or ``source`` itself) in sorted order."""
    if source.is_file():
        yield source
        return
    for root, folders, files in os.walk(source):
        folders.sort()
        for name in sorted(files):
            yield Path(root) / name


def _scan_one(path: Path, scan: FolderScan) -> None:
    try:
        kind = sniff(path)
    except OSError as err:
        scan.rejected.append({"path": str(path), "reason": f"cannot read the file: {err}"})
        return
    if kind == NOT_DICOM:
        scan.not_dicom.append(path)
        return

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        sop_class = str(getattr(dataset.get("file_meta"), "MediaStorageSOPClassUID", ""))
        series_uid = str(dataset.get("SeriesInstanceUID", "")).strip()
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as err:
        # pydicom raises several kinds of error on damaged headers.
        scan.rejected.append({"path": str(path), "reason": f"cannot read the DICOM header: {err}"})
        return
    if sop_class == MEDIA_STORAGE_DIRECTORY_UID:
        scan.skipped.append({"path": str(path), "reason": "DICOMDIR (media index), not an image"})
        return
    if not series_uid:
        scan.rejected.append(
            {
                "path": str(path),
                "reason": "(0020,000E) Series Instance UID is missing or empty, expected a UID "
                "(the file may be truncated)",
            }
        )
        return

    series = scan.series.get(series_uid)
    if series is None:
        series = scan.series[series_uid] = SeriesFiles(
            series_uid,
            series_number=str(dataset.get("SeriesNumber", "") or "").strip(),
            series_description=str(dataset.get("SeriesDescription", "") or "").strip(),
            modality=str(dataset.get("Modality", "") or "").strip(),
        )
    series.paths.append(path)


def scan_files(sources: Sequence[Path]) -> FolderScan:
    """Walk files and folders and group the DICOM files by Series Instance UID.

    Only headers are read (pydicom ``stop_before_pixels``).

    Parameters
    ----------
    sources
        Folders (walked recursively, in sorted order) or single files.

    Returns
    -------
    FolderScan
        Series in first-seen order, with every other file skipped or rejected with
        a reason.
    """
    scan = FolderScan()
    for source in sources:
        for path in _walk(Path(source)):
            scan.files_found += 1
            _scan_one(path, scan)
    logger.info(
        "scanned %d file(s): %d series, %d not DICOM, %d skipped, %d rejected",
        scan.files_found,
        len(scan.series),
        len(scan.not_dicom),
        len(scan.skipped),
        len(scan.rejected),
    )
    return scan


def _slug(text: str, max_chars: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:max_chars].rstrip("-")


def volume_file_stem(series: SeriesFiles, *, index: int, count: int, stack_label: str) -> str:
    """Return the file name stem of one volume of a series.

    The stem is ``<series number>_<description slug>_<uid hash>``, followed by
    ``_v<index>`` and a slug of the stack label when the series gave several volumes.
    Patient identifiers never enter it. A series description can hold any text,
    so only ASCII letters and digits of it are kept.
    """
    number = series.series_number or "x"
    description = _slug(series.series_description, MAX_SLUG_CHARS) or "series"
    uid_hash = hashlib.sha256(series.series_instance_uid.encode("ascii", "replace")).hexdigest()
    stem = f"{number}_{description}_{uid_hash[:UID_HASH_CHARS]}"
    if count > 1:
        label = _slug(stack_label, MAX_SLUG_CHARS)
        stem += f"_v{index}" + (f"_{label}" if label else "")
    return stem


def _json_ready(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


def _write_json(document: object, path: Path) -> None:
    text = json.dumps(document, indent=2, default=_json_ready, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _sidecar(volume: Volume, series: SeriesFiles, nifti_name: str) -> dict:
    image = volume.image
    return {
        "nifti": nifti_name,
        "series_instance_uid": volume.series_instance_uid,
        "series_number": series.series_number,
        "series_description": series.series_description,
        "modality": series.modality,
        "stack_label": volume.stack_label,
        "instance_count": len(set(volume.sop_instance_uids)),
        "frame_count": len(volume.sop_instance_uids),
        "size": list(image.GetSize()),
        "spacing_mm": list(image.GetSpacing()),
        "origin_lps": list(image.GetOrigin()),
        "direction_lps": list(image.GetDirection()),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "decisions": list(volume.decisions),
        "metadata": volume.metadata,
        "sop_instance_uids": list(volume.sop_instance_uids),
        "source_paths": list(volume.paths),
        "pixel_sha256": dict(volume.pixel_sha256),
    }


def _rejection_record(rejection: SeriesRejection, series: SeriesFiles) -> dict:
    return {
        # A file-level rejection inside build_volumes carries no UID: use the scan's.
        "series_instance_uid": rejection.series_instance_uid or series.series_instance_uid,
        "series_number": series.series_number,
        "series_description": series.series_description,
        "stack_label": rejection.stack_label,
        "reason": rejection.reason,
        "paths": list(rejection.paths),
    }


@dataclass
class _SeriesOutcome:
    written: list[str] = field(default_factory=list)
    rejections: list[dict] = field(default_factory=list)
    used_paths: set[str] = field(default_factory=set)
    failed: bool = False


def _convert_series(
    series: SeriesFiles, out_dir: Path, build_options: dict[str, Any]
) -> _SeriesOutcome:
    outcome = _SeriesOutcome()
    try:
        volumes, rejections = build_volumes(series.paths, **build_options)
    except (ValueError, RuntimeError, OSError, MemoryError) as err:
        # build_volumes returns rejections for bad data, so an exception here is
        # unexpected. Record it against the series and go on with the others.
        logger.error("series %s: building volumes failed: %s", series.series_instance_uid, err)
        outcome.failed = True
        outcome.rejections.append(
            {
                "series_instance_uid": series.series_instance_uid,
                "series_number": series.series_number,
                "series_description": series.series_description,
                "stack_label": "",
                "reason": f"building volumes failed: {type(err).__name__}: {err}",
                "paths": [str(p) for p in series.paths],
            }
        )
        return outcome

    outcome.rejections = [_rejection_record(r, series) for r in rejections]
    for index, volume in enumerate(volumes, start=1):
        stem = volume_file_stem(
            series, index=index, count=len(volumes), stack_label=volume.stack_label
        )
        nifti = out_dir / f"{stem}.nii.gz"
        try:
            sitk.WriteImage(volume.image, str(nifti), useCompression=True)
            _write_json(_sidecar(volume, series, nifti.name), out_dir / f"{stem}.json")
        except (RuntimeError, OSError) as err:
            logger.error("%s: writing the volume failed: %s", nifti, err)
            outcome.failed = True
            outcome.rejections.append(
                {
                    **_rejection_record(
                        SeriesRejection(
                            volume.series_instance_uid, volume.stack_label, "", volume.paths
                        ),
                        series,
                    ),
                    "reason": f"{nifti}: writing the volume failed: {err}",
                }
            )
            continue
        outcome.written.append(nifti.name)
        outcome.used_paths.update(volume.paths)
    return outcome


def _summary_line(series: SeriesFiles, outcome: _SeriesOutcome) -> str:
    name = " ".join(filter(None, [series.series_number, series.series_description])) or "-"
    line = (
        f"series {name} ({series.modality or '?'}, {series.series_instance_uid}): "
        f"{len(series.paths)} file(s), {len(outcome.written)} volume(s) written"
    )
    if outcome.rejections:
        reasons = "; ".join(r["reason"] for r in outcome.rejections)
        line += f", {len(outcome.rejections)} rejected: {reasons}"
    return line


def run_convert(
    sources: Sequence[Path],
    *,
    out_dir: Path,
    gap_policy: str = "split",
    tilt_policy: str = "resample",
    temporal_policy: str = "split",
    min_slices: int = 3,
) -> int:
    """Build every series under the sources and write NIfTI files with JSON sidecars.

    Writes ``<stem>.nii.gz`` and ``<stem>.json`` per volume (see ``volume_file_stem``),
    ``rejected.json`` with every rejected file, series and stack and its reason, and
    ``conversion.json`` with the file counts and the written volumes. Prints one line
    per series and one line of counts.

    Parameters
    ----------
    sources
        Folders to walk, or single files.
    out_dir
        Output folder, created when missing. Existing files of the same name are
        overwritten.
    gap_policy, tilt_policy, temporal_policy, min_slices
        Passed to ``build_volumes``; ``temporal_policy="4d"`` writes 4-D NIfTI files.

    Returns
    -------
    int
        0 when every series was built or rejected with a reason, 1 when a series
        raised or an output could not be written, 2 when a source does not exist.

    Raises
    ------
    ValueError
        When a policy is not one that ``build_volumes`` supports.
    """
    for name, value, allowed in (
        ("gap_policy", gap_policy, GAP_POLICIES),
        ("tilt_policy", tilt_policy, TILT_POLICIES),
        ("temporal_policy", temporal_policy, TEMPORAL_POLICIES),
    ):
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not supported, expected one of {list(allowed)}")
    missing = [str(source) for source in sources if not Path(source).exists()]
    if missing:
        print(f"priors: source not found: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE

    build_options: dict[str, Any] = {
        "gap_policy": gap_policy,
        "tilt_policy": tilt_policy,
        "temporal_policy": temporal_policy,
        "min_slices": min_slices,
    }
    scan = scan_files([Path(source) for source in sources])
    out_dir.mkdir(parents=True, exist_ok=True)
    series_rejections: list[dict] = []
    written: list[str] = []
    used: set[str] = set()
    failed = False
    for series in scan.series.values():
        outcome = _convert_series(series, out_dir, build_options)
        print(_summary_line(series, outcome))
        series_rejections.extend(outcome.rejections)
        written.extend(outcome.written)
        used.update(outcome.used_paths)
        failed = failed or outcome.failed

    rejected_paths = {path for record in series_rejections for path in record["paths"]}
    grouped = {str(path) for series in scan.series.values() for path in series.paths}
    counts = {
        "files_found": scan.files_found,
        "used": len(used & grouped),
        "rejected": len(scan.rejected) + len((rejected_paths - used) & grouped),
        "skipped_not_dicom": len(scan.not_dicom),
        "skipped_other": len(scan.skipped),
        # Files of a built series that no volume used and no rejection names, for
        # example a duplicate instance that a stack decision dropped.
        "dropped_by_decision": len(grouped - used - rejected_paths),
    }
    _write_json({"files": scan.rejected, "series": series_rejections}, out_dir / REJECTED_FILE)
    _write_json(
        {
            "counts": counts,
            "volumes": written,
            "skipped": scan.skipped,
            "not_dicom": [str(path) for path in scan.not_dicom],
        },
        out_dir / SUMMARY_FILE,
    )
    for record in scan.rejected:
        print(f"rejected {record['path']}: {record['reason']}")
    print(
        f"{counts['files_found']} file(s): {counts['used']} used, {counts['rejected']} "
        f"rejected, {counts['skipped_not_dicom']} not DICOM, {counts['skipped_other']} "
        f"skipped, {counts['dropped_by_decision']} dropped; {len(written)} volume(s) "
        f"written to {out_dir}"
    )
    return EXIT_FAILED if failed else EXIT_OK
