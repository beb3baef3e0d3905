"""Sources that are searched and retrieved from: PACS reached over DICOMweb or DIMSE.

A remote source searches by patient, issuer, date range and modality, retrieves a
study or a series into the local content-addressed cache (``RetrievalCache``), and
then behaves as any other source: ``iter_files`` lists every instance it has
retrieved, so ingest accounts for them as for files on a disk.

Queries use DICOM's own matching: a date range is ``"20200101-20211231"``, open at
either end (``"-20210115"``, ``"20210115-"``), or a single date.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from priors.sources.base import ROLE_INSTANCE, AbsentReference, SourceFile

__all__ = [
    "RemoteSource",
    "RetrievalCache",
    "RetrieveError",
    "RetrieveResult",
    "SeriesMatch",
    "SourceConnectionError",
    "StudyMatch",
    "StudyQuery",
    "default_pacs_cache_dir",
    "validate_date_range",
]

logger = logging.getLogger(__name__)

# A DICOM DA range: one date, or two dates around a hyphen with either side empty.
DATE_RANGE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")
MANIFEST_NAME = "retrieved.jsonl"


class SourceConnectionError(ConnectionError):
    """A remote source could not be reached or refused the association or request."""


class RetrieveError(RuntimeError):
    """A retrieve that failed, or that reported success but delivered nothing."""


def validate_date_range(value: str) -> str:
    """Return a DICOM date range unchanged after checking its form.

    Raises
    ------
    ValueError
        When the value is not ``YYYYMMDD``, ``YYYYMMDD-YYYYMMDD``, ``-YYYYMMDD`` or
        ``YYYYMMDD-``.
    """
    match = DATE_RANGE.match(value)
    if not value or match is None or (match.group(1) is None and match.group(3) is None):
        raise ValueError(
            f"date range {value!r}: expected YYYYMMDD, YYYYMMDD-YYYYMMDD, -YYYYMMDD "
            "or YYYYMMDD-"
        )
    if match.group(2) is None and match.group(3) is not None:
        raise ValueError(f"date range {value!r}: two dates need a hyphen between them")
    start, end = match.group(1), match.group(3)
    for date in (start, end):
        if date:
            try:
                datetime.strptime(date, "%Y%m%d")
            except ValueError:
                raise ValueError(f"date range {value!r}: {date} is not a calendar date") \
                    from None
    if start and end and start > end:
        raise ValueError(f"date range {value!r}: starts after it ends")
    return value


@dataclass(frozen=True)
class StudyQuery:
    """Search criteria; empty fields match anything.

    ``study_date`` is a DICOM date range (see ``validate_date_range``); ``modality``
    matches Modalities in Study at study level and Modality at series level.
    """

    patient_id: str = ""
    issuer_of_patient_id: str = ""
    study_date: str = ""
    modality: str = ""
    study_instance_uid: str = ""

    def __post_init__(self) -> None:
        if self.study_date:
            validate_date_range(self.study_date)


@dataclass(frozen=True)
class StudyMatch:
    """One study a remote source reported for a query."""

    source_id: str
    study_instance_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    study_date: str = ""
    modalities: tuple[str, ...] = ()
    study_description: str = ""
    accession_number: str = ""
    number_of_instances: int | None = None


@dataclass(frozen=True)
class SeriesMatch:
    """One series of a study, as a remote source reported it."""

    source_id: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    number_of_instances: int | None = None


@dataclass
class RetrieveResult:
    """The outcome of one retrieve.

    ``files`` are the cached copies of the instances received. The sub-operation
    counts are those the peer reported (DIMSE C-GET and C-MOVE); a DICOMweb
    retrieve sets ``completed`` to the number of instances received.
    """

    source_id: str
    study_instance_uid: str
    series_instance_uid: str = ""
    files: list[SourceFile] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the result as JSON-ready values, files as their locations."""
        data = asdict(self)
        data["files"] = [item.location for item in self.files]
        return data


@runtime_checkable
class RemoteSource(Protocol):
    """A PACS or archive that serves searches and retrieves.

    ``source_id`` names the institution and the endpoint, for example
    ``"dicomweb:site-a@http://127.0.0.1:8042/dicom-web"``; it never holds a
    credential.
    """

    source_id: str
    issuer: str

    def describe(self) -> dict[str, Any]:
        """Return the source's kind, id, institution and endpoint, for provenance."""
        ...

    def echo(self) -> None:
        """Check that the source responds; raise ``SourceConnectionError`` if not."""
        ...

    def find_studies(self, query: StudyQuery) -> list[StudyMatch]:
        """Return the studies matching a query."""
        ...

    def find_series(self, study_instance_uid: str, *, modality: str = "") -> list[SeriesMatch]:
        """Return the series of a study, optionally of one modality."""
        ...

    def retrieve(
        self, study_instance_uid: str, *, series_instance_uid: str = ""
    ) -> RetrieveResult:
        """Fetch a study, or one of its series, into the cache."""
        ...

    def iter_files(self) -> Iterator[SourceFile]:
        """Yield every instance retrieved from this source so far."""
        ...

    def absent_references(self) -> list[AbsentReference]:
        """Return no records: a PACS has no DICOMDIR."""
        ...


def default_pacs_cache_dir() -> Path:
    """Return the retrieval cache folder under the priors home folder."""
    from priors.config import load_settings

    return load_settings().home / "cache" / "pacs"


class RetrievalCache:
    """Instances fetched from remote sources, stored once by their SHA-256.

    Objects live in ``<root>/objects/<first two hex digits>/<sha256>.dcm``, written
    to a temporary file and renamed, so a crash never leaves half an object. Each
    source has a manifest (``<root>/sources/<hash of source id>/retrieved.jsonl``)
    with one line per instance retrieved: its location in the source's terms and
    the object's digest. A later retrieve of the same instance replaces its line.

    Parameters
    ----------
    root
        Cache folder; ``<priors home>/cache/pacs`` by default.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_pacs_cache_dir()
        self._lock = threading.Lock()
        # Per source, the object recorded last for each location, read from the manifest
        # on first use, so that fetching the same instance again adds no line.
        self._latest: dict[str, dict[str, str]] = {}

    def put_bytes(self, data: bytes) -> Path:
        """Store bytes and return the object's path."""
        digest = hashlib.sha256(data).hexdigest()
        target = self._object_path(digest)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, staging = tempfile.mkstemp(prefix=".partial-", dir=target.parent)
            try:
                with os.fdopen(handle, "wb") as stream:
                    stream.write(data)
                os.replace(staging, target)
            except BaseException:
                Path(staging).unlink(missing_ok=True)
                raise
        return target

    def record(self, source_id: str, location: str, path: Path) -> SourceFile:
        """Add a retrieved object to a source's manifest and return its ``SourceFile``."""
        manifest = self._manifest_path(source_id)
        line = json.dumps({"location": location, "object": path.name}) + "\n"
        with self._lock:
            latest = self._latest.get(source_id)
            if latest is None:
                latest = self._latest[source_id] = self._read_manifest(source_id)
            if latest.get(location) != path.name:
                manifest.parent.mkdir(parents=True, exist_ok=True)
                with open(manifest, "a", encoding="utf-8") as stream:
                    stream.write(line)
                latest[location] = path.name
        return SourceFile(source_id=source_id, path=path, role=ROLE_INSTANCE,
                          location=location)

    def store(self, source_id: str, location: str, data: bytes) -> SourceFile:
        """Store one instance's bytes and record it for the source."""
        return self.record(source_id, location, self.put_bytes(data))

    def iter_files(self, source_id: str) -> Iterator[SourceFile]:
        """Yield the latest object of every location retrieved from a source."""
        latest = self._read_manifest(source_id)
        for location in sorted(latest):
            name = latest[location]
            yield SourceFile(source_id=source_id,
                             path=self._object_path(name.removesuffix(".dcm")),
                             role=ROLE_INSTANCE, location=location)

    def _read_manifest(self, source_id: str) -> dict[str, str]:
        """Return the object recorded last for each location of a source."""
        manifest = self._manifest_path(source_id)
        latest: dict[str, str] = {}
        if not manifest.is_file():
            return latest
        with open(manifest, encoding="utf-8") as stream:
            for number, line in enumerate(stream, start=1):
                try:
                    entry = json.loads(line)
                    latest[entry["location"]] = entry["object"]
                except (ValueError, KeyError, TypeError):
                    # A line cut by a crash while it was appended: the retrieve that
                    # wrote it did not finish, and its object is retrieved again.
                    logger.warning("%s line %d: unreadable manifest entry skipped",
                                   manifest, number)
        return latest

    def _object_path(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / f"{digest}.dcm"

    def _manifest_path(self, source_id: str) -> Path:
        key = hashlib.sha256(source_id.encode("utf-8")).hexdigest()[:16]
        return self.root / "sources" / key / MANIFEST_NAME
