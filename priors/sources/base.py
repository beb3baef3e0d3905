"""The ``Source`` interface shared by every place instances come from.

A source lists every file it holds, whatever the file is, so that ingest can account
for each one. Media with a DICOMDIR also report directory records whose file is
absent; those are counted apart and never become instances.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ROLE_ARCHIVE",
    "ROLE_DICOMDIR",
    "ROLE_INSTANCE",
    "AbsentReference",
    "Source",
    "SourceFile",
    "SourceIssue",
    "patient_issuer",
]

# A file expected to hold one DICOM instance (ingest still checks that it does).
ROLE_INSTANCE = "instance"
# A DICOMDIR file: read as an index, never ingested as an instance.
ROLE_DICOMDIR = "dicomdir"
# A ZIP archive: its members are listed as files of their own.
ROLE_ARCHIVE = "archive"


@dataclass(frozen=True)
class SourceFile:
    """One file under a source.

    ``path`` is where the bytes can be read. ``location`` is where the file lives
    in the source's own terms, the same as ``path`` except for archive members
    (``archive.zip!member``), whose ``path`` is their extracted copy. ``error`` is
    set when the source could not open the file as its role needs, for example a
    corrupt archive; ingest then rejects the file with that reason.
    """

    source_id: str
    path: Path
    role: str
    location: str = ""
    error: str = ""

    def __post_init__(self) -> None:
        if not self.location:
            object.__setattr__(self, "location", str(self.path))


@dataclass(frozen=True)
class AbsentReference:
    """A DICOMDIR record whose referenced file is not in the file set."""

    source_id: str
    referenced_file_id: str
    record_type: str
    sop_instance_uid: str
    sop_class_uid: str
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class SourceIssue:
    """A problem a source met while listing its files, such as a malformed record."""

    source_id: str
    kind: str
    message: str


@runtime_checkable
class Source(Protocol):
    """A place that contains DICOM instances: a folder, removable media or a PACS."""

    source_id: str
    issuer: str

    def describe(self) -> dict[str, Any]:
        """Return the source's kind, id, root and file-set id, for provenance."""
        ...

    def iter_files(self) -> Iterator[SourceFile]:
        """Yield every file under the source, DICOM or not."""
        ...

    def absent_references(self) -> list[AbsentReference]:
        """Return the DICOMDIR records whose file is absent."""
        ...


def patient_issuer(
    issuer_of_patient_id: str,
    *,
    patient_id: str,
    other_patient_ids: Sequence[tuple[str, str]],
    source: Source,
) -> str:
    """Return the issuer of a Patient ID as the catalog keys patient records.

    The order is (0010,0021) Issuer of Patient ID; else the issuer given for the same
    Patient ID in (0010,1002) Other Patient IDs Sequence; else the source's configured
    issuer; else the source id, so that the same Patient ID from two sources without
    an issuer makes two records until linkage joins them.
    """
    if issuer_of_patient_id:
        return issuer_of_patient_id
    for other_id, other_issuer in other_patient_ids:
        if other_id == patient_id and other_issuer:
            return other_issuer
    return source.issuer or source.source_id
