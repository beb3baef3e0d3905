"""Plain records handed out by the catalog, usable after its session has closed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from priors.dicom.header import InstanceHeader

__all__ = [
    "OUTCOMES",
    "OUTCOME_INDEXED",
    "OUTCOME_REJECTED",
    "OUTCOME_SKIPPED",
    "OUTCOME_USED",
    "ConflictRow",
    "FileOutcome",
    "IngestReport",
    "InstanceRow",
    "PatientRecordRow",
    "SeriesRow",
    "StudyRow",
]

OUTCOME_USED = "used"
OUTCOME_INDEXED = "indexed"
OUTCOME_SKIPPED = "skipped"
OUTCOME_REJECTED = "rejected"
# Every file ends in exactly one of these; found = the sum of their counts.
OUTCOMES = (OUTCOME_USED, OUTCOME_INDEXED, OUTCOME_SKIPPED, OUTCOME_REJECTED)


@dataclass(frozen=True)
class PatientRecordRow:
    """A patient record: (issuer, Patient ID) and the demographics linkage compares."""

    id: int
    issuer: str
    patient_id: str = field(repr=False)
    patient_name: str = field(repr=False)
    patient_birth_date: str = field(repr=False)
    patient_sex: str
    other_patient_ids: tuple[tuple[str, str], ...] = field(repr=False)


@dataclass(frozen=True)
class StudyRow:
    """A study with its patient record and the modalities of its series."""

    study_instance_uid: str
    patient_record_id: int
    study_date: str
    study_time: str
    study_description: str
    accession_number: str = field(repr=False)
    study_id: str = ""
    modalities: tuple[str, ...] = ()
    series_count: int = 0


@dataclass(frozen=True)
class SeriesRow:
    """A series with the number of its indexed instances."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    frame_of_reference_uid: str
    instance_count: int = 0


@dataclass(frozen=True)
class InstanceRow:
    """One location of one instance, with its hashes and parsed header."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    source_id: str
    location: str
    path: str
    file_sha256: str
    pixel_sha256: str | None
    transfer_syntax_uid: str
    outcome: str
    reason: str
    ingested_at: datetime
    header: InstanceHeader = field(repr=False)


@dataclass(frozen=True)
class ConflictRow:
    """Two locations of one SOP Instance UID with different pixel data."""

    sop_instance_uid: str
    indexed_location: str
    indexed_pixel_sha256: str
    conflicting_source_id: str
    conflicting_location: str
    conflicting_pixel_sha256: str
    detected_at: datetime


@dataclass(frozen=True)
class FileOutcome:
    """The outcome of one file read by an ingest, with the reason for it."""

    source_id: str
    location: str
    outcome: str
    reason: str


@dataclass
class IngestReport:
    """What one ``Catalog.ingest`` call found, read and decided.

    ``counts`` contains every file listed by the sources, by outcome, including the
    unchanged files that were not read again. ``files`` lists the files read in this
    call with their outcome and reason.
    """

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    absent: int = 0
    conflicts: int = 0
    files_read: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    files: list[FileOutcome] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def found(self) -> int:
        """Files listed by the sources: used + indexed + skipped + rejected."""
        return sum(self.counts.values())

    def reasons(self, outcome: str | None = None) -> dict[str, str]:
        """Return the reason of each file read, by location, optionally for one outcome."""
        return {
            item.location: item.reason
            for item in self.files
            if outcome is None or item.outcome == outcome
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the counts as JSON-ready values, without per-file details."""
        return {**self.counts, "found": self.found, "absent": self.absent,
                "conflicts": self.conflicts, "files_read": self.files_read,
                "files_unchanged": self.files_unchanged, "files_removed": self.files_removed,
                "seconds": round(self.seconds, 3)}

    def as_dict(self) -> dict[str, Any]:
        """Return the counts as JSON-ready values; the same as ``to_dict``."""
        return self.to_dict()

    def render_text(self) -> str:
        """Return the counts, every rejected file with its reason, and the sources' issues."""
        lines = [
            f"found {self.found}: " + ", ".join(f"{name} {self.counts.get(name, 0)}"
                                                for name in OUTCOMES),
            f"absent DICOMDIR references {self.absent}, conflicts {self.conflicts}",
            f"read {self.files_read} files, {self.files_unchanged} unchanged, "
            f"{self.files_removed} removed, in {self.seconds:.1f} s",
        ]
        lines += [f"rejected {item.location}: {item.reason}" for item in self.files
                  if item.outcome == OUTCOME_REJECTED]
        # Problems of the sources themselves: damaged DICOMDIR records, link loops.
        lines += [f"issue {text}" for text in self.issues]
        return "\n".join(lines)
