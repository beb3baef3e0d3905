"""SQLAlchemy tables of the catalog.

The catalog is the one place that stores patient identifiers, because linkage needs
them. It stores no pixel data. Types are portable between SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
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
    "dump_json",
]

# Text columns have no length limit: invalid files carry over-long UIDs and codes,
# and the catalog stores what it reads. SHA-256 digests are hexadecimal.
SHA256_LENGTH = 64
# PostgreSQL text cannot contain U+0000, which a damaged DICOM value may carry. Every
# dialect stores it as U+FFFD (the replacement character), so that SQLite and
# PostgreSQL contain the same values.
NUL = "\x00"
NUL_REPLACEMENT = "\ufffd"
# Byte-wise comparison, as SQLite's default BINARY collation does. A server's
# linguistic collation (en_US) would sort "1.2.3.23" before "1.2.3.2.4".
POSTGRESQL_COLLATION = "C"


class CatalogText(TypeDecorator[str]):
    """Text of any length, ordered byte-wise in every dialect, with U+0000 replaced.

    Parameters
    ----------
    length
        Maximum length, for fixed-size values such as SHA-256 digests; none by default.
    """

    impl = Text
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__()
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        collation = POSTGRESQL_COLLATION if dialect.name == "postgresql" else None
        if self.length is not None:
            return dialect.type_descriptor(String(self.length, collation=collation))
        return dialect.type_descriptor(Text(collation=collation))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is not None and NUL in value:
            return value.replace(NUL, NUL_REPLACEMENT)
        return value


class CatalogJSON(TypeDecorator[Any]):
    """JSON with no NaN or infinity, which PostgreSQL's JSON type rejects.

    A damaged (0018,0050) Slice Thickness or (0020,0032) Image Position (Patient) can
    read as NaN or infinity. Such a number is stored as null, and a list containing one
    as null in place of the list, because a position with one unknown coordinate is
    no position. Every dialect stores the same, so results do not depend on it.
    """

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return _finite(value)


def dump_json(value: Any) -> str:
    """Serialize a column value to JSON text for the engine's JSON columns.

    orjson writes a value in about a tenth of the time of the standard library's
    encoder. Values that orjson rejects (keys that are not strings, integers beyond
    64 bits, strings with lone surrogates, float subclasses such as numpy's) are
    written by ``json.dumps``, so every value that was storable before still is. Both
    give text that reads back as the same value. Non-finite numbers never get here
    because ``CatalogJSON`` replaces them first.
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def _finite(value: Any) -> Any:
    # Nearly every value (every instance header) is finite throughout, and checking
    # one takes about 3 us against 15 us for rebuilding it.
    if _all_finite(value):
        return value
    return _finite_copy(value)


def _all_finite(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    elif isinstance(value, float):
        return math.isfinite(value)
    elif isinstance(value, dict):
        items = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return True
    for item in items:
        kind = type(item)
        if kind is str or kind is int or item is None:
            continue
        if kind is float:
            if not math.isfinite(item):
                return False
        elif not _all_finite(item):
            return False
    return True


def _finite_copy(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        if any(isinstance(item, float) and not math.isfinite(item) for item in value):
            return None
        return [_finite_copy(item) for item in value]
    return value


class Base(DeclarativeBase):
    """Declarative base of the catalog tables."""


class SourceModel(Base):
    """A source ingested at least once."""

    __tablename__ = "sources"

    source_id: Mapped[str] = mapped_column(CatalogText(), primary_key=True)
    kind: Mapped[str] = mapped_column(CatalogText())
    root: Mapped[str] = mapped_column(CatalogText(), default="")
    issuer: Mapped[str] = mapped_column(CatalogText(), default="")
    description: Mapped[dict[str, Any]] = mapped_column(CatalogJSON(), default=dict)
    last_ingested_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class FileModel(Base):
    """Every file seen under a source, with its outcome, DICOM or not."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("source_id", "location"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(
        CatalogText(), ForeignKey("sources.source_id"), index=True
    )
    location: Mapped[str] = mapped_column(CatalogText())
    path: Mapped[str] = mapped_column(CatalogText())
    role: Mapped[str] = mapped_column(CatalogText())
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    outcome: Mapped[str] = mapped_column(CatalogText(), index=True)
    reason: Mapped[str] = mapped_column(CatalogText(), default="")
    file_sha256: Mapped[str | None] = mapped_column(CatalogText(SHA256_LENGTH), nullable=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(CatalogText(), nullable=True)
    ingested_at: Mapped[datetime] = mapped_column(DateTime)


class PatientRecordModel(Base):
    """A patient as recorded by one issuer: (issuer, Patient ID) and demographics."""

    __tablename__ = "patient_records"
    __table_args__ = (UniqueConstraint("issuer", "patient_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    issuer: Mapped[str] = mapped_column(CatalogText())
    patient_id: Mapped[str] = mapped_column(CatalogText())
    patient_name: Mapped[str] = mapped_column(CatalogText(), default="")
    patient_birth_date: Mapped[str] = mapped_column(CatalogText(), default="")
    patient_sex: Mapped[str] = mapped_column(CatalogText(), default="")
    other_patient_ids: Mapped[list[Any]] = mapped_column(CatalogJSON(), default=list)


class StudyModel(Base):
    """A study, attached to the patient record of the first instance seen of it."""

    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(CatalogText(), primary_key=True)
    patient_record_id: Mapped[int] = mapped_column(ForeignKey("patient_records.id"), index=True)
    study_date: Mapped[str] = mapped_column(CatalogText(), default="")
    study_time: Mapped[str] = mapped_column(CatalogText(), default="")
    study_description: Mapped[str] = mapped_column(CatalogText(), default="")
    accession_number: Mapped[str] = mapped_column(CatalogText(), default="")
    study_id: Mapped[str] = mapped_column(CatalogText(), default="")


class SeriesModel(Base):
    """A series of a study."""

    __tablename__ = "series"

    series_instance_uid: Mapped[str] = mapped_column(CatalogText(), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(
        CatalogText(), ForeignKey("studies.study_instance_uid"), index=True
    )
    modality: Mapped[str] = mapped_column(CatalogText(), default="")
    # An IS value has up to 12 digits, beyond a 32-bit INTEGER.
    series_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    series_description: Mapped[str] = mapped_column(CatalogText(), default="")
    body_part_examined: Mapped[str] = mapped_column(CatalogText(), default="")
    frame_of_reference_uid: Mapped[str] = mapped_column(CatalogText(), default="")


class InstanceModel(Base):
    """One location of one instance; an instance found twice has two rows."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(CatalogText(), index=True)
    series_instance_uid: Mapped[str] = mapped_column(CatalogText(), index=True)
    study_instance_uid: Mapped[str] = mapped_column(CatalogText(), index=True)
    source_id: Mapped[str] = mapped_column(CatalogText(), ForeignKey("sources.source_id"))
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), index=True)
    location: Mapped[str] = mapped_column(CatalogText())
    path: Mapped[str] = mapped_column(CatalogText())
    file_sha256: Mapped[str] = mapped_column(CatalogText(SHA256_LENGTH))
    pixel_sha256: Mapped[str | None] = mapped_column(CatalogText(SHA256_LENGTH), nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(CatalogText(), default="")
    sop_class_uid: Mapped[str] = mapped_column(CatalogText(), default="")
    # An IS value, as series_number.
    instance_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    header: Mapped[dict[str, Any]] = mapped_column(CatalogJSON())
    outcome: Mapped[str] = mapped_column(CatalogText())
    reason: Mapped[str] = mapped_column(CatalogText(), default="")
    ingested_at: Mapped[datetime] = mapped_column(DateTime)


class AbsentReferenceModel(Base):
    """A DICOMDIR record whose file is absent from its media."""

    __tablename__ = "absent_references"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(
        CatalogText(), ForeignKey("sources.source_id"), index=True
    )
    referenced_file_id: Mapped[str] = mapped_column(CatalogText())
    record_type: Mapped[str] = mapped_column(CatalogText(), default="")
    sop_instance_uid: Mapped[str] = mapped_column(CatalogText(), default="")
    sop_class_uid: Mapped[str] = mapped_column(CatalogText(), default="")
    patient_id: Mapped[str] = mapped_column(CatalogText(), default="")
    study_instance_uid: Mapped[str] = mapped_column(CatalogText(), default="")
    series_instance_uid: Mapped[str] = mapped_column(CatalogText(), default="")


class ConflictModel(Base):
    """Two locations of one SOP Instance UID whose pixel data differ."""

    __tablename__ = "conflicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(CatalogText(), index=True)
    indexed_location: Mapped[str] = mapped_column(CatalogText())
    indexed_pixel_sha256: Mapped[str] = mapped_column(CatalogText(SHA256_LENGTH))
    conflicting_source_id: Mapped[str] = mapped_column(CatalogText())
    conflicting_location: Mapped[str] = mapped_column(CatalogText())
    conflicting_pixel_sha256: Mapped[str] = mapped_column(CatalogText(SHA256_LENGTH))
    detected_at: Mapped[datetime] = mapped_column(DateTime)


class JobOutcomeModel(Base):
    """The outcome of a file within one job, overriding its catalog outcome."""

    __tablename__ = "job_outcomes"

    job_id: Mapped[str] = mapped_column(CatalogText(), primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), primary_key=True)
    outcome: Mapped[str] = mapped_column(CatalogText())
    reason: Mapped[str] = mapped_column(CatalogText(), default="")
    recorded_at: Mapped[datetime] = mapped_column(DateTime)


class LinkDecisionModel(Base):
    """One identity-link decision between two patient records, with its evidence."""

    __tablename__ = "link_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(CatalogText(), default="", index=True)
    record_a: Mapped[list[Any]] = mapped_column(CatalogJSON())
    record_b: Mapped[list[Any]] = mapped_column(CatalogJSON())
    linked: Mapped[bool] = mapped_column(Boolean)
    pseudonym: Mapped[str] = mapped_column(CatalogText(), default="")
    evidence: Mapped[dict[str, Any]] = mapped_column(CatalogJSON(), default=dict)
    decided_at: Mapped[datetime] = mapped_column(DateTime)
