"""SQLAlchemy tables of the catalog.

The catalog is the one place that stores patient identifiers, because linkage needs
them. It stores no pixel data. Types are portable between SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AbsentReferenceModel",
    "Base",
    "ConflictModel",
    "FileModel",
    "InstanceModel",
    "JobOutcomeModel",
    "LinkDecisionModel",
    "PatientRecordModel",
    "SeriesModel",
    "SourceModel",
    "StudyModel",
]

# Text columns have no length limit: invalid files carry over-long UIDs and codes,
# and the catalog stores what it reads. SHA-256 digests are hexadecimal.
SHA256_LENGTH = 64


class Base(DeclarativeBase):
    """Declarative base of the catalog tables."""


class SourceModel(Base):
    """A source ingested at least once."""

    __tablename__ = "sources"

    source_id: Mapped[str] = mapped_column(String(), primary_key=True)
    kind: Mapped[str] = mapped_column(String())
    root: Mapped[str] = mapped_column(Text, default="")
    issuer: Mapped[str] = mapped_column(String(), default="")
    description: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_ingested_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class FileModel(Base):
    """Every file seen under a source, with its outcome, DICOM or not."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("source_id", "location"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.source_id"), index=True)
    location: Mapped[str] = mapped_column(String())
    path: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String())
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    outcome: Mapped[str] = mapped_column(String(), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    file_sha256: Mapped[str | None] = mapped_column(String(SHA256_LENGTH), nullable=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(), nullable=True)
    ingested_at: Mapped[datetime] = mapped_column(DateTime)


class PatientRecordModel(Base):
    """A patient as recorded by one issuer: (issuer, Patient ID) and demographics."""

    __tablename__ = "patient_records"
    __table_args__ = (UniqueConstraint("issuer", "patient_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    issuer: Mapped[str] = mapped_column(String())
    patient_id: Mapped[str] = mapped_column(String())
    patient_name: Mapped[str] = mapped_column(Text, default="")
    patient_birth_date: Mapped[str] = mapped_column(String(), default="")
    patient_sex: Mapped[str] = mapped_column(String(), default="")
    other_patient_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)


class StudyModel(Base):
    """A study, attached to the patient record of the first instance seen of it."""

    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(String(), primary_key=True)
    patient_record_id: Mapped[int] = mapped_column(ForeignKey("patient_records.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(), default="")
    study_time: Mapped[str] = mapped_column(String(), default="")
    study_description: Mapped[str] = mapped_column(Text, default="")
    accession_number: Mapped[str] = mapped_column(String(), default="")
    study_id: Mapped[str] = mapped_column(String(), default="")


class SeriesModel(Base):
    """A series of a study."""

    __tablename__ = "series"

    series_instance_uid: Mapped[str] = mapped_column(String(), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(
        ForeignKey("studies.study_instance_uid"), index=True
    )
    modality: Mapped[str] = mapped_column(String(), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(Text, default="")
    body_part_examined: Mapped[str] = mapped_column(String(), default="")
    frame_of_reference_uid: Mapped[str] = mapped_column(String(), default="")


class InstanceModel(Base):
    """One location of one instance; an instance found twice has two rows."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(), index=True)
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.source_id"))
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)
    location: Mapped[str] = mapped_column(String())
    path: Mapped[str] = mapped_column(Text)
    file_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    pixel_sha256: Mapped[str | None] = mapped_column(String(SHA256_LENGTH), nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(), default="")
    sop_class_uid: Mapped[str] = mapped_column(String(), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    header: Mapped[dict[str, Any]] = mapped_column(JSON)
    outcome: Mapped[str] = mapped_column(String())
    reason: Mapped[str] = mapped_column(Text, default="")
    ingested_at: Mapped[datetime] = mapped_column(DateTime)


class AbsentReferenceModel(Base):
    """A DICOMDIR record whose file is absent from its media."""

    __tablename__ = "absent_references"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.source_id"), index=True)
    referenced_file_id: Mapped[str] = mapped_column(String())
    record_type: Mapped[str] = mapped_column(String(), default="")
    sop_instance_uid: Mapped[str] = mapped_column(String(), default="")
    sop_class_uid: Mapped[str] = mapped_column(String(), default="")
    patient_id: Mapped[str] = mapped_column(String(), default="")
    study_instance_uid: Mapped[str] = mapped_column(String(), default="")
    series_instance_uid: Mapped[str] = mapped_column(String(), default="")


class ConflictModel(Base):
    """Two locations of one SOP Instance UID whose pixel data differ."""

    __tablename__ = "conflicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(), index=True)
    indexed_location: Mapped[str] = mapped_column(String())
    indexed_pixel_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    conflicting_source_id: Mapped[str] = mapped_column(String())
    conflicting_location: Mapped[str] = mapped_column(String())
    conflicting_pixel_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    detected_at: Mapped[datetime] = mapped_column(DateTime)


class JobOutcomeModel(Base):
    """The outcome of a file within one job, overriding its catalog outcome."""

    __tablename__ = "job_outcomes"

    job_id: Mapped[str] = mapped_column(String(), primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), primary_key=True)
    outcome: Mapped[str] = mapped_column(String())
    reason: Mapped[str] = mapped_column(Text, default="")
    recorded_at: Mapped[datetime] = mapped_column(DateTime)


class LinkDecisionModel(Base):
    """One identity-link decision between two patient records, with its evidence."""

    __tablename__ = "link_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(), default="", index=True)
    record_a: Mapped[list[Any]] = mapped_column(JSON)
    record_b: Mapped[list[Any]] = mapped_column(JSON)
    linked: Mapped[bool] = mapped_column(Boolean)
    pseudonym: Mapped[str] = mapped_column(String(), default="")
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    decided_at: Mapped[datetime] = mapped_column(DateTime)
