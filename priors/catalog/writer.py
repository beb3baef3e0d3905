"""Write ingest results to the catalog, one transaction per batch.

Runs in the process that owns the database, so SQLite has one writer. For
each DICOM result it records the file, then the instance at that location, its
patient record, study and series, and checks the SOP Instance UID against the other
locations already indexed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from priors.catalog.examine import FileResult
from priors.catalog.models import (
    ConflictModel,
    FileModel,
    InstanceModel,
    PatientRecordModel,
    SeriesModel,
    StudyModel,
)
from priors.catalog.rows import (
    OUTCOME_INDEXED,
    OUTCOME_REJECTED,
    FileOutcome,
    IngestReport,
)
from priors.dicom.header import InstanceHeader, header_to_dict
from priors.sources.base import Source, SourceFile, patient_issuer

__all__ = ["BatchWriter"]

logger = logging.getLogger(__name__)

# Characters of a pixel hash shown in a conflict reason: enough to tell them apart.
HASH_PREFIX = 16


class BatchWriter:
    """Write the results of one source's files to the catalog."""

    def __init__(self, engine: Engine, source: Source) -> None:
        self.engine = engine
        self.source = source

    def write(self, batch: Sequence[tuple[SourceFile, FileResult]], report: IngestReport) -> None:
        """Store a batch of results in one transaction and add them to the report."""
        if not batch:
            return
        with Session(self.engine) as session, session.begin():
            files = self._existing_files(session, [item.location for item, _ in batch])
            indexed = self._indexed_locations(session, batch)
            for source_file, result in batch:
                outcome, reason = result.outcome, result.reason
                file_row = self._save_file(session, files, source_file, result)
                session.execute(delete(InstanceModel).where(InstanceModel.file_id == file_row.id))
                if result.header is not None and outcome == OUTCOME_INDEXED:
                    outcome, reason = self._save_instance(
                        session, file_row, source_file, result, indexed, report
                    )
                    file_row.outcome, file_row.reason = outcome, reason
                report.counts[outcome] = report.counts.get(outcome, 0) + 1
                report.files.append(
                    FileOutcome(self.source.source_id, source_file.location, outcome, reason)
                )
                if outcome == OUTCOME_REJECTED:
                    logger.warning("%s: rejected: %s", source_file.location, reason)

    def _existing_files(self, session: Session, locations: list[str]) -> dict[str, FileModel]:
        query = select(FileModel).where(
            FileModel.source_id == self.source.source_id, FileModel.location.in_(locations)
        )
        return {row.location: row for row in session.scalars(query)}

    def _indexed_locations(
        self, session: Session, batch: Sequence[tuple[SourceFile, FileResult]]
    ) -> dict[str, list[tuple[str, str, str | None]]]:
        # SOP Instance UID -> (source id, location, pixel hash) of its indexed locations.
        uids = {result.header.sop_instance_uid for _, result in batch if result.header}
        locations: dict[str, list[tuple[str, str, str | None]]] = {}
        query = select(InstanceModel.sop_instance_uid, InstanceModel.source_id,
                       InstanceModel.location, InstanceModel.pixel_sha256).where(
            InstanceModel.sop_instance_uid.in_(uids),
            InstanceModel.outcome != OUTCOME_REJECTED,
        )
        for uid, source_id, location, pixel in session.execute(query):
            locations.setdefault(uid, []).append((source_id, location, pixel))
        return locations

    def _save_file(self, session: Session, files: dict[str, FileModel],
                   source_file: SourceFile, result: FileResult) -> FileModel:
        row = files.get(source_file.location)
        if row is None:
            row = FileModel(source_id=self.source.source_id, location=source_file.location)
            session.add(row)
            files[source_file.location] = row
        row.path = str(source_file.path)
        row.role = source_file.role
        row.size = result.size
        row.mtime_ns = result.mtime_ns
        row.outcome = result.outcome
        row.reason = result.reason
        row.file_sha256 = result.file_sha256
        row.sop_instance_uid = result.header.sop_instance_uid if result.header else None
        row.ingested_at = _now()
        session.flush()
        return row

    def _save_instance(
        self,
        session: Session,
        file_row: FileModel,
        source_file: SourceFile,
        result: FileResult,
        indexed: dict[str, list[tuple[str, str, str | None]]],
        report: IngestReport,
    ) -> tuple[str, str]:
        header = result.header
        assert header is not None
        outcome, reason = OUTCOME_INDEXED, result.reason
        others = [
            item for item in indexed.get(header.sop_instance_uid, [])
            if (item[0], item[1]) != (self.source.source_id, source_file.location)
        ]
        clash = _pixel_clash(others, result.pixel_sha256)
        if clash is not None:
            outcome, reason = OUTCOME_REJECTED, _conflict_reason(header, clash, result)
            session.add(ConflictModel(
                sop_instance_uid=header.sop_instance_uid,
                indexed_location=clash[1],
                indexed_pixel_sha256=clash[2] or "",
                conflicting_source_id=self.source.source_id,
                conflicting_location=source_file.location,
                conflicting_pixel_sha256=result.pixel_sha256 or "",
                detected_at=_now(),
            ))
            report.conflicts += 1
        else:
            indexed.setdefault(header.sop_instance_uid, []).append(
                (self.source.source_id, source_file.location, result.pixel_sha256)
            )
            self._save_hierarchy(session, header)

        session.add(InstanceModel(
            sop_instance_uid=header.sop_instance_uid,
            series_instance_uid=header.series_instance_uid,
            study_instance_uid=header.study_instance_uid,
            source_id=self.source.source_id,
            file_id=file_row.id,
            location=source_file.location,
            path=str(source_file.path),
            file_sha256=result.file_sha256 or "",
            pixel_sha256=result.pixel_sha256,
            transfer_syntax_uid=header.transfer_syntax_uid,
            sop_class_uid=header.sop_class_uid,
            instance_number=header.instance_number,
            header=header_to_dict(header),
            outcome=outcome,
            reason=reason,
            ingested_at=_now(),
        ))
        return outcome, reason

    def _save_hierarchy(self, session: Session, header: InstanceHeader) -> None:
        record = self._patient_record(session, header)
        if session.get(StudyModel, header.study_instance_uid) is None:
            session.add(StudyModel(
                study_instance_uid=header.study_instance_uid,
                patient_record_id=record.id,
                study_date=header.study_date,
                study_time=header.study_time,
                study_description=header.study_description,
                accession_number=header.accession_number,
                study_id=header.study_id,
            ))
            session.flush()
        if session.get(SeriesModel, header.series_instance_uid) is None:
            session.add(SeriesModel(
                series_instance_uid=header.series_instance_uid,
                study_instance_uid=header.study_instance_uid,
                modality=header.modality,
                series_number=header.series_number,
                series_description=header.series_description,
                body_part_examined=header.body_part_examined,
                frame_of_reference_uid=header.frame_of_reference_uid,
            ))
            session.flush()

    def _patient_record(self, session: Session, header: InstanceHeader) -> PatientRecordModel:
        issuer = patient_issuer(
            header.issuer_of_patient_id,
            patient_id=header.patient_id,
            other_patient_ids=header.other_patient_ids,
            source=self.source,
        )
        query = select(PatientRecordModel).where(
            PatientRecordModel.issuer == issuer,
            PatientRecordModel.patient_id == header.patient_id,
        )
        record = session.scalars(query).first()
        if record is None:
            record = PatientRecordModel(
                issuer=issuer,
                patient_id=header.patient_id,
                patient_name=header.patient_name,
                patient_birth_date=header.patient_birth_date,
                patient_sex=header.patient_sex,
                other_patient_ids=[list(pair) for pair in header.other_patient_ids],
            )
            session.add(record)
            session.flush()
        return record


def _pixel_clash(
    others: list[tuple[str, str, str | None]], pixel_sha256: str | None
) -> tuple[str, str, str | None] | None:
    # NOTE: a location without a pixel hash (compressed data) is not compared at
    # ingest. It is kept as another location, even when its pixels differ.
    if pixel_sha256 is None:
        return None
    for other in others:
        if other[2] is not None and other[2] != pixel_sha256:
            return other
    return None


def _conflict_reason(header: InstanceHeader, clash: tuple[str, str, str | None],
                     result: FileResult) -> str:
    return (
        f"conflict: SOP Instance UID {header.sop_instance_uid} is already indexed at "
        f"{clash[1]} with pixel_sha256 {str(clash[2])[:HASH_PREFIX]}..., this file has "
        f"{str(result.pixel_sha256)[:HASH_PREFIX]}..."
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
