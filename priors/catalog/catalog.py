"""The catalog: every file and instance seen under the sources, with outcomes.

``Catalog.ingest`` lists the files of each source, reads the new and changed ones in
a process pool, and writes the results in the calling process, one transaction per
batch. A file whose path, size and modification time are unchanged is not read
again. SQLite is the default store; any SQLAlchemy URL (PostgreSQL) works too.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, func, nulls_last, select
from sqlalchemy.orm import Session

from priors.catalog.examine import FileResult, examine_file
from priors.catalog.models import (
    AbsentReferenceModel,
    Base,
    ConflictModel,
    FileModel,
    InstanceModel,
    JobOutcomeModel,
    LinkDecisionModel,
    PatientRecordModel,
    SeriesModel,
    SourceModel,
    StudyModel,
    dump_json,
)
from priors.catalog.rows import (
    OUTCOME_REJECTED,
    OUTCOME_SKIPPED,
    OUTCOME_USED,
    OUTCOMES,
    ConflictRow,
    FileOutcome,
    IngestReport,
    InstanceRow,
    PatientRecordRow,
    SeriesRow,
    StudyRow,
)
from priors.catalog.writer import BatchWriter
from priors.dicom.header import header_from_dict
from priors.sources.base import Source, SourceFile

__all__ = ["Catalog"]

logger = logging.getLogger(__name__)

# Results written per transaction: large enough to amortise the commit, small enough
# that an interrupted ingest loses little work.
WRITE_BATCH = 500
# Below this many files, worker processes cost more than they save. Spawned workers
# spend seconds importing pydicom and SQLAlchemy, and one header takes about 10 ms to
# read in process. Measured on the 192 spine CD files on a shared 2-core machine:
# 1.9 s in process, 10 s with two spawned workers.
POOL_MIN_FILES = 500
# Files handed to a worker at a time. Each hand-over costs a round trip between
# processes, so a chunk should take far longer than that: 64 single-frame CT files
# take about 30 ms to read.
POOL_CHUNK = 64
# Values per IN list. PostgreSQL takes at most 65535 parameters in one statement
# (psycopg raises OperationalError beyond), and a query may hold two lists.
IN_LIST_MAX = 10_000


class Catalog:
    """The database of sources, files, patient records, studies, series and instances.

    Parameters
    ----------
    url
        SQLAlchemy URL, ``sqlite:///path/catalog.db`` by default in the settings;
        a PostgreSQL URL works too. Tables are created when missing.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, json_serializer=dump_json)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _configure_sqlite)
            _create_private(self.engine.url.database)
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    # -- ingest ---------------------------------------------------------------------

    def ingest(
        self,
        sources: Sequence[Source],
        *,
        workers: int = 2,
        progress: bool = False,
    ) -> IngestReport:
        """Index every file of the sources, reading only new and changed files.

        Parameters
        ----------
        sources
            Sources to list.
        workers
            Worker processes that read headers; 1 reads in this process.
        progress
            Show a progress bar (tqdm) while reading.

        Returns
        -------
        IngestReport
            Counts by outcome of every file listed, absent references, conflicts
            found, and the outcome and reason of every file read.
        """
        started = time.perf_counter()
        report = IngestReport()
        for source in sources:
            self._ingest_source(source, report, workers=workers, progress=progress)
        report.seconds = time.perf_counter() - started
        logger.info("ingest finished: %s", report.as_dict())
        return report

    def _ingest_source(
        self, source: Source, report: IngestReport, *, workers: int, progress: bool
    ) -> None:
        logger.info("ingest of source %s started", source.source_id)
        self._save_source(source)
        with Session(self.engine) as session:
            known = {
                row.location: row
                for row in session.scalars(
                    select(FileModel).where(FileModel.source_id == source.source_id)
                )
            }
            session.expunge_all()

        to_read: list[SourceFile] = []
        unchanged = 0
        seen: set[str] = set()
        for source_file in source.iter_files():
            if source_file.location in seen:
                continue
            seen.add(source_file.location)
            previous = known.get(source_file.location)
            if previous is not None and _unchanged(source_file, previous):
                report.counts[previous.outcome] = report.counts.get(previous.outcome, 0) + 1
                unchanged += 1
            else:
                to_read.append(source_file)

        # Read in location order, whatever order the source listed the files in, so
        # that of two files with one SOP Instance UID and different pixel data the
        # first by location is indexed and the other is the conflict. ``_read``
        # returns results in the order of its input, with or without workers.
        to_read.sort(key=lambda item: item.location)
        removed = [location for location in known if location not in seen]
        with Session(self.engine) as session, session.begin():
            self._remove_files(session, source.source_id, removed)
        report.files_removed += len(removed)

        writer = BatchWriter(self.engine, source)
        batch: list[tuple[SourceFile, FileResult]] = []
        # Paired by position, not by path: members of two identical archives share
        # one extracted copy, so one path can stand for several locations.
        results = self._read(to_read, workers=workers, progress=progress)
        for source_file, result in zip(to_read, results, strict=True):
            batch.append((source_file, result))
            if len(batch) >= WRITE_BATCH:
                writer.write(batch, report)
                batch = []
        writer.write(batch, report)
        report.files_read += len(to_read)
        report.files_unchanged += unchanged

        self._save_absent(source, report)
        for issue in getattr(source, "issues", lambda: [])():
            report.issues.append(f"{issue.source_id}: {issue.kind}: {issue.message}")
        logger.info(
            "ingest of source %s finished: %d files read, %d unchanged, %d removed",
            source.source_id, len(to_read), unchanged, len(removed),
        )

    def _read(
        self, files: list[SourceFile], *, workers: int, progress: bool
    ) -> Iterable[FileResult]:
        paths = [str(item.path) for item in files]
        roles = [item.role for item in files]
        errors = [item.error for item in files]
        if workers > 1 and len(files) >= POOL_MIN_FILES:
            context = _worker_context()
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                results = pool.map(examine_file, paths, roles, errors, chunksize=POOL_CHUNK)
                yield from _with_progress(results, total=len(files), enabled=progress)
        else:
            results = map(examine_file, paths, roles, errors)
            yield from _with_progress(results, total=len(files), enabled=progress)

    def _save_source(self, source: Source) -> None:
        description = source.describe()
        with Session(self.engine) as session, session.begin():
            row = session.get(SourceModel, source.source_id)
            if row is None:
                row = SourceModel(source_id=source.source_id)
                session.add(row)
            row.kind = str(description.get("kind", ""))
            row.root = str(description.get("root", ""))
            row.issuer = source.issuer
            row.description = {key: str(value) for key, value in description.items()}
            row.last_ingested_at = _now()

    def _save_absent(self, source: Source, report: IngestReport) -> None:
        absent = source.absent_references()
        with Session(self.engine) as session, session.begin():
            session.execute(
                delete(AbsentReferenceModel).where(
                    AbsentReferenceModel.source_id == source.source_id
                )
            )
            session.add_all(
                AbsentReferenceModel(
                    source_id=item.source_id,
                    referenced_file_id=item.referenced_file_id,
                    record_type=item.record_type,
                    sop_instance_uid=item.sop_instance_uid,
                    sop_class_uid=item.sop_class_uid,
                    patient_id=item.patient_id,
                    study_instance_uid=item.study_instance_uid,
                    series_instance_uid=item.series_instance_uid,
                )
                for item in absent
            )
        report.absent += len(absent)

    def _remove_files(self, session: Session, source_id: str, locations: list[str]) -> None:
        if not locations:
            return
        logger.info("source %s: %d files no longer found; removed", source_id, len(locations))
        file_ids: list[int] = []
        for chunk in _chunks(locations):
            file_ids += session.scalars(
                select(FileModel.id).where(
                    FileModel.source_id == source_id, FileModel.location.in_(chunk)
                )
            ).all()
        for chunk in _chunks(file_ids):
            session.execute(delete(InstanceModel).where(InstanceModel.file_id.in_(chunk)))
            session.execute(delete(JobOutcomeModel).where(JobOutcomeModel.file_id.in_(chunk)))
            session.execute(delete(FileModel).where(FileModel.id.in_(chunk)))

    # -- queries --------------------------------------------------------------------

    def patient_records(self) -> list[PatientRecordRow]:
        """Return every patient record, ordered by issuer and Patient ID."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(PatientRecordModel).order_by(
                    PatientRecordModel.issuer, PatientRecordModel.patient_id
                )
            )
            return [_patient_row(row) for row in rows]

    def studies(self, *, patient_record_id: int | None = None) -> list[StudyRow]:
        """Return the studies, of one patient record when given, by date and time."""
        with Session(self.engine) as session:
            query = select(StudyModel).order_by(
                StudyModel.study_date, StudyModel.study_time, StudyModel.study_instance_uid
            )
            if patient_record_id is not None:
                query = query.where(StudyModel.patient_record_id == patient_record_id)
            studies = list(session.scalars(query))
            modalities: dict[str, set[str]] = {}
            counts: dict[str, int] = {}
            for uid, modality in session.execute(
                select(SeriesModel.study_instance_uid, SeriesModel.modality)
            ):
                modalities.setdefault(uid, set()).add(modality)
                counts[uid] = counts.get(uid, 0) + 1
            return [
                StudyRow(
                    study_instance_uid=row.study_instance_uid,
                    patient_record_id=row.patient_record_id,
                    study_date=row.study_date,
                    study_time=row.study_time,
                    study_description=row.study_description,
                    accession_number=row.accession_number,
                    study_id=row.study_id,
                    modalities=tuple(sorted(modalities.get(row.study_instance_uid, ()))),
                    series_count=counts.get(row.study_instance_uid, 0),
                )
                for row in studies
            ]

    def series(self, study_instance_uid: str | None = None) -> list[SeriesRow]:
        """Return the series, of one study when given, by series number."""
        with Session(self.engine) as session:
            query = select(SeriesModel).order_by(
                # PostgreSQL sorts NULL last and SQLite first unless the query sets it.
                SeriesModel.study_instance_uid, nulls_last(SeriesModel.series_number),
                SeriesModel.series_instance_uid,
            )
            if study_instance_uid is not None:
                query = query.where(SeriesModel.study_instance_uid == study_instance_uid)
            series = list(session.scalars(query))
            counts = dict(
                session.execute(
                    select(InstanceModel.series_instance_uid,
                           func.count(func.distinct(InstanceModel.sop_instance_uid)))
                    .where(InstanceModel.outcome != OUTCOME_REJECTED)
                    .group_by(InstanceModel.series_instance_uid)
                ).all()
            )
            return [
                SeriesRow(
                    series_instance_uid=row.series_instance_uid,
                    study_instance_uid=row.study_instance_uid,
                    modality=row.modality,
                    series_number=row.series_number,
                    series_description=row.series_description,
                    body_part_examined=row.body_part_examined,
                    frame_of_reference_uid=row.frame_of_reference_uid,
                    instance_count=counts.get(row.series_instance_uid, 0),
                )
                for row in series
            ]

    def instances(
        self, series_instance_uid: str, *, include_rejected: bool = False
    ) -> list[InstanceRow]:
        """Return the instance locations of a series, ordered by SOP Instance UID.

        An instance stored at several locations appears once per location.
        Locations rejected for conflicting pixel data are left out unless
        ``include_rejected``.
        """
        query = select(InstanceModel).where(
            InstanceModel.series_instance_uid == series_instance_uid
        )
        if not include_rejected:
            query = query.where(InstanceModel.outcome != OUTCOME_REJECTED)
        return self._instance_rows(query.order_by(InstanceModel.sop_instance_uid,
                                                  InstanceModel.id))

    def instances_of_sources(self, source_ids: Iterable[str]) -> list[InstanceRow]:
        """Return every valid instance location of these sources in one query.

        Locations rejected for conflicting pixel data are left out.
        """
        query = select(InstanceModel).where(
            InstanceModel.source_id.in_(list(source_ids)),
            InstanceModel.outcome != OUTCOME_REJECTED,
        )
        return self._instance_rows(query.order_by(InstanceModel.sop_instance_uid,
                                                  InstanceModel.id))

    def instances_by_uid(self, sop_instance_uid: str) -> list[InstanceRow]:
        """Return every location of a SOP Instance UID, conflicting ones included."""
        query = select(InstanceModel).where(
            InstanceModel.sop_instance_uid == sop_instance_uid
        ).order_by(InstanceModel.id)
        return self._instance_rows(query)

    def conflicts(self) -> list[ConflictRow]:
        """Return the conflicts found: one SOP Instance UID with different pixel data."""
        with Session(self.engine) as session:
            return [
                ConflictRow(
                    sop_instance_uid=row.sop_instance_uid,
                    indexed_location=row.indexed_location,
                    indexed_pixel_sha256=row.indexed_pixel_sha256,
                    conflicting_source_id=row.conflicting_source_id,
                    conflicting_location=row.conflicting_location,
                    conflicting_pixel_sha256=row.conflicting_pixel_sha256,
                    detected_at=row.detected_at,
                )
                for row in session.scalars(select(ConflictModel).order_by(ConflictModel.id))
            ]

    def file_outcomes(self, *, source_id: str | None = None) -> list[FileOutcome]:
        """Return the catalog outcome and reason of every file, by location."""
        query = select(FileModel).order_by(FileModel.source_id, FileModel.location)
        if source_id is not None:
            query = query.where(FileModel.source_id == source_id)
        with Session(self.engine) as session:
            return [
                FileOutcome(row.source_id, row.location, row.outcome, row.reason)
                for row in session.scalars(query)
            ]

    def absent_references(self, *, source_id: str | None = None) -> list[dict[str, str]]:
        """Return the DICOMDIR records whose file is absent, as plain dictionaries."""
        query = select(AbsentReferenceModel).order_by(AbsentReferenceModel.id)
        if source_id is not None:
            query = query.where(AbsentReferenceModel.source_id == source_id)
        with Session(self.engine) as session:
            return [
                {
                    "source_id": row.source_id,
                    "referenced_file_id": row.referenced_file_id,
                    "record_type": row.record_type,
                    "sop_instance_uid": row.sop_instance_uid,
                    "study_instance_uid": row.study_instance_uid,
                    "series_instance_uid": row.series_instance_uid,
                }
                for row in session.scalars(query)
            ]

    # -- accounting -----------------------------------------------------------------

    def counts(self, *, job_id: str | None = None) -> dict[str, int]:
        """Count the files by outcome, with the outcomes of one job when ``job_id`` is given.

        Returns
        -------
        dict
            ``found``, ``used``, ``indexed``, ``skipped``, ``rejected`` and
            ``absent``, where found = used + indexed + skipped + rejected and absent
            DICOMDIR references are counted apart.
        """
        counts = dict.fromkeys(OUTCOMES, 0)
        with Session(self.engine) as session:
            if job_id is None:
                query = select(FileModel.outcome, func.count()).group_by(FileModel.outcome)
            else:
                outcome = func.coalesce(JobOutcomeModel.outcome, FileModel.outcome)
                query = (
                    select(outcome, func.count())
                    .select_from(FileModel)
                    .outerjoin(
                        JobOutcomeModel,
                        (JobOutcomeModel.file_id == FileModel.id)
                        & (JobOutcomeModel.job_id == job_id),
                    )
                    .group_by(outcome)
                )
            for name, number in session.execute(query):
                counts[name] = counts.get(name, 0) + int(number)
            absent = session.scalar(select(func.count()).select_from(AbsentReferenceModel))
        return {"found": sum(counts.values()), **counts, "absent": int(absent or 0)}

    def mark_used(self, keys: Iterable[str | os.PathLike[str]], job_id: str) -> int:
        """Record that a job used the files behind these paths, locations or SOP UIDs.

        Returns
        -------
        int
            The number of files marked.

        Raises
        ------
        KeyError
            When a key matches no indexed file; nothing is marked then.
        """
        return self._mark(keys, job_id, OUTCOME_USED, "")

    def mark_skipped(
        self, keys: Iterable[str | os.PathLike[str]], job_id: str, *, reason: str
    ) -> int:
        """Record that a job skipped these files, with the reason (for example not chosen).

        Raises
        ------
        KeyError
            When a key matches no file; nothing is marked then.
        ValueError
            When ``reason`` is empty.
        """
        if not reason:
            raise ValueError(f"job {job_id}: a skipped file needs a reason, got ''")
        return self._mark(keys, job_id, OUTCOME_SKIPPED, reason)

    def mark_rejected(
        self, keys: Iterable[str | os.PathLike[str]], job_id: str, *, reason: str
    ) -> int:
        """Record that a job rejected these indexed files, for example as undecodable.

        Raises
        ------
        KeyError
            When a key matches no file; nothing is marked then.
        ValueError
            When ``reason`` is empty.
        """
        if not reason:
            raise ValueError(f"job {job_id}: a rejected file needs a reason, got ''")
        return self._mark(keys, job_id, OUTCOME_REJECTED, reason)

    def _mark(self, keys: Iterable[str | os.PathLike[str]], job_id: str,
              outcome: str, reason: str) -> int:
        wanted = {os.fspath(key) for key in keys}
        with Session(self.engine) as session, session.begin():
            file_ids: dict[int, str] = {}
            found: set[str] = set()
            for chunk in _chunks(sorted(wanted)):
                by_file = select(FileModel.id, FileModel.location, FileModel.path).where(
                    FileModel.location.in_(chunk) | FileModel.path.in_(chunk)
                )
                for file_id, location, path in session.execute(by_file):
                    file_ids[file_id] = location
                    found.update({location, path})
                by_uid = select(InstanceModel.file_id, InstanceModel.sop_instance_uid).where(
                    InstanceModel.sop_instance_uid.in_(chunk),
                    InstanceModel.outcome != OUTCOME_REJECTED,
                )
                for file_id, uid in session.execute(by_uid):
                    file_ids[file_id] = uid
                    found.add(uid)
            missing = sorted(wanted - found)
            if missing:
                raise KeyError(
                    f"job {job_id}: {len(missing)} keys match no catalogued file or "
                    f"SOP Instance UID, first {missing[0]!r}"
                )
            for chunk in _chunks(list(file_ids)):
                session.execute(
                    delete(JobOutcomeModel).where(
                        JobOutcomeModel.job_id == job_id, JobOutcomeModel.file_id.in_(chunk)
                    )
                )
            now = _now()
            session.add_all(
                JobOutcomeModel(job_id=job_id, file_id=file_id, outcome=outcome,
                                reason=reason, recorded_at=now)
                for file_id in file_ids
            )
        logger.info("job %s: %d files marked %s", job_id, len(file_ids), outcome)
        return len(file_ids)

    def job_outcomes(self, job_id: str) -> list[FileOutcome]:
        """Return the outcome of every file in one job, by location."""
        outcome = func.coalesce(JobOutcomeModel.outcome, FileModel.outcome)
        reason = func.coalesce(JobOutcomeModel.reason, FileModel.reason)
        query = (
            select(FileModel.source_id, FileModel.location, outcome, reason)
            .outerjoin(JobOutcomeModel, (JobOutcomeModel.file_id == FileModel.id)
                       & (JobOutcomeModel.job_id == job_id))
            .order_by(FileModel.source_id, FileModel.location)
        )
        with Session(self.engine) as session:
            return [FileOutcome(*row) for row in session.execute(query)]

    # -- identity links -------------------------------------------------------------

    def save_link_decisions(
        self, decisions: Iterable[Mapping[str, Any]], *, job_id: str = ""
    ) -> int:
        """Store identity-link decisions between patient records.

        Parameters
        ----------
        decisions
            Mappings with ``record_a`` and ``record_b`` (each an ``(issuer,
            patient_id)`` pair), ``linked`` (bool), ``evidence`` (JSON-ready
            mapping) and optionally ``pseudonym``.
        job_id
            The job that made the decisions, ``""`` for none.

        Returns
        -------
        int
            The number of decisions stored.

        Raises
        ------
        KeyError
            When a decision lacks ``record_a``, ``record_b`` or ``linked``.
        """
        now = _now()
        rows = [
            LinkDecisionModel(
                job_id=job_id,
                record_a=list(decision["record_a"]),
                record_b=list(decision["record_b"]),
                linked=bool(decision["linked"]),
                pseudonym=str(decision.get("pseudonym", "")),
                evidence=dict(decision.get("evidence", {})),
                decided_at=now,
            )
            for decision in decisions
        ]
        with Session(self.engine) as session, session.begin():
            session.add_all(rows)
        return len(rows)

    def link_decisions(self, *, job_id: str | None = None) -> list[dict[str, Any]]:
        """Return the stored link decisions, of one job when given, oldest first."""
        query = select(LinkDecisionModel).order_by(LinkDecisionModel.id)
        if job_id is not None:
            query = query.where(LinkDecisionModel.job_id == job_id)
        with Session(self.engine) as session:
            return [
                {"job_id": row.job_id, "record_a": tuple(row.record_a),
                 "record_b": tuple(row.record_b), "linked": row.linked,
                 "pseudonym": row.pseudonym, "evidence": row.evidence,
                 "decided_at": row.decided_at}
                for row in session.scalars(query)
            ]

    def _instance_rows(self, query: Any) -> list[InstanceRow]:
        with Session(self.engine) as session:
            return [
                InstanceRow(
                    sop_instance_uid=row.sop_instance_uid,
                    series_instance_uid=row.series_instance_uid,
                    study_instance_uid=row.study_instance_uid,
                    source_id=row.source_id,
                    location=row.location,
                    path=row.path,
                    file_sha256=row.file_sha256,
                    pixel_sha256=row.pixel_sha256,
                    transfer_syntax_uid=row.transfer_syntax_uid,
                    outcome=row.outcome,
                    reason=row.reason,
                    ingested_at=row.ingested_at,
                    header=header_from_dict(row.header),
                )
                for row in session.scalars(query)
            ]


def _unchanged(source_file: SourceFile, previous: FileModel) -> bool:
    try:
        status = os.stat(source_file.path)
    except OSError:
        return False
    return (
        previous.size == status.st_size
        and previous.mtime_ns == status.st_mtime_ns
        and previous.role == source_file.role
        and not source_file.error
    )


def _worker_context() -> multiprocessing.context.BaseContext:
    # Workers share no threads or connections with this process: they come from a
    # fork server, itself a fresh interpreter, or are spawned where there is none.
    # The fork server imports the examining code once and forks ready workers. On
    # a 2-core machine a pool of 2 then started in 0.45 s the first time and 0.014 s
    # after that, against 0.62 s every time for spawned workers.
    # NOTE: set_forkserver_preload is process-wide; it takes effect only if this
    # call starts the fork server.
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", examine_file.__module__])
    return context


def _with_progress(results: Iterable[FileResult], *, total: int,
                   enabled: bool) -> Iterable[FileResult]:
    if not enabled:
        return results
    from tqdm import tqdm

    return tqdm(results, total=total, unit="file", desc="ingest")


def _patient_row(row: PatientRecordModel) -> PatientRecordRow:
    return PatientRecordRow(
        id=row.id,
        issuer=row.issuer,
        patient_id=row.patient_id,
        patient_name=row.patient_name,
        patient_birth_date=row.patient_birth_date,
        patient_sex=row.patient_sex,
        other_patient_ids=tuple((str(a), str(b)) for a, b in row.other_patient_ids or ()),
    )


def _create_private(database: str | None) -> None:
    """Create a SQLite catalog file readable by its owner only, since it contains identifiers."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        descriptor = os.open(database, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as err:
        # SQLite reports a folder that does not exist more clearly than this would.
        logger.debug("cannot create %s ahead of SQLite: %s", database, err)
        return
    os.close(descriptor)


def _configure_sqlite(connection: Any, _record: Any) -> None:
    # WAL lets readers work while the ingest writes; NORMAL sync is safe under WAL.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _chunks(values: Sequence[Any], size: int = IN_LIST_MAX) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)

