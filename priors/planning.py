"""The driver's half of the flow: ingest, link, order, select, and account for files.

:func:`plan_job` turns sources into one :class:`~priors.pipeline.PersonTask` per
person with pairs; :func:`account_job` gives every file of the sources its outcome
for the job once the pairs are done; :func:`write_package_manifest` writes each
context package's ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from priors.config import Settings
from priors.pipeline import (
    InstanceRef,
    PairTask,
    PersonResult,
    PersonTask,
    SeriesRef,
)
from priors.pseudonym import Pseudonymizer, load_key

__all__ = [
    "JobPlan",
    "People",
    "account_job",
    "gather_people",
    "plan_job",
    "resolve_bundle_dir",
    "write_package_manifest",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]

# Outcome reasons the job gives to valid instances it did not use.
REASON_DUPLICATE = "duplicate copy of an instance read from another location"


@dataclass
class _Entry:
    """An instance row as the longitudinal layer reads it (see ``InstanceEntry``)."""

    header: Any
    source_id: str
    issuer: str
    location: str
    pixel_sha256: str | None


@dataclass
class JobPlan:
    """The driver's decisions before any pixel is read: sources, persons and pairs."""

    job_id: str
    catalog: Any
    source_ids: list[str]
    source_descriptions: list[dict[str, Any]]
    ingest: Any
    tasks: list[PersonTask]
    persons_summary: list[dict[str, Any]]
    # location -> reason, for valid instances the selection did not choose
    not_chosen: dict[str, str] = field(default_factory=dict)
    absent_references: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def plan_job(
    source_paths: Sequence[str | os.PathLike[str]],
    *,
    settings: Settings,
    issuers: Mapping[str, str],
    out_dir: Path,
    job_id: str,
    current_study_uid: str | None = None,
    cross_reference: Path | None = None,
) -> JobPlan:
    """Ingest the sources and plan the pairs of every person found in them.

    Parameters
    ----------
    source_paths
        Folders, ZIP files or DICOMDIR media folders.
    settings
        Loaded settings.
    issuers
        Issuer of Patient ID per resolved source path, for sources without one.
    out_dir
        Root of the context packages.
    job_id
        Identifier of this job, used in the catalog's job outcomes.
    current_study_uid
        Treat this study as current for the person who has it.
    cross_reference
        CSV of record pairs known to be one person (see
        :func:`~priors.longitudinal.read_cross_reference`), or None.
    """
    people = gather_people(source_paths, settings=settings, issuers=issuers,
                           current_study_uid=current_study_uid,
                           cross_reference=cross_reference)
    catalog, linkage = people.catalog, people.linkage
    catalog.save_link_decisions(_catalog_link_rows(linkage), job_id=job_id)
    source_ids = [source.source_id for source in people.sources]
    rows_by_series: dict[str, list[Any]] = defaultdict(list)
    for row in people.rows:
        rows_by_series[row.series_instance_uid].append(row)
    plan = JobPlan(job_id=job_id, catalog=catalog, source_ids=source_ids,
                   source_descriptions=[source.describe() for source in people.sources],
                   ingest=people.ingest, tasks=[], persons_summary=[])
    plan.absent_references = [
        row for source_id in source_ids for row in catalog.absent_references(source_id=source_id)]
    plan.warnings.extend(getattr(people.ingest, "issues", []))
    link_rows_all = _link_decision_rows(linkage, people.pseudonymizer)

    for person, timeline, selection in zip(linkage.persons, people.timelines,
                                           people.selections, strict=True):
        link_rows = [row for row in link_rows_all
                     if set(row["record_indices"]) & set(person.record_indices)]
        plan.persons_summary.append({
            "person": person.pseudonym,
            "records": len(person.record_indices),
            "studies": len(timeline),
            "current_study_uid": selection.current.study_instance_uid
            if selection.current else "",
            "pairs": len([pair for pair in selection.pairs if pair.change_candidate]),
            "conflicts": [linkage.conflicts[k].kind for k in person.conflicts],
        })
        _note_not_chosen(plan, selection, timeline, rows_by_series)
        task = _person_task(person.pseudonym, selection, rows_by_series, plan=plan,
                            settings=settings, out_dir=out_dir, link_rows=link_rows)
        if task is not None:
            plan.tasks.append(task)
    log.info("planned %d pairs for %d persons",
             sum(len(task.pairs) for task in plan.tasks), len(plan.tasks))
    return plan


@dataclass
class People:
    """Sources ingested, records linked into persons, and each person's selection."""

    catalog: Any
    sources: list[Any]
    ingest: Any
    rows: list[Any]
    linkage: Any
    timelines: list[list[Any]]
    selections: list[Any]
    pseudonymizer: Pseudonymizer


def gather_people(
    source_paths: Sequence[str | os.PathLike[str]],
    *,
    settings: Settings,
    issuers: Mapping[str, str],
    current_study_uid: str | None = None,
    cross_reference: Path | None = None,
) -> People:
    """Ingest the sources, link their records, and order and select each person's studies.

    ``cross_reference`` names a CSV of (issuer_a, id_a, issuer_b, id_b) rows that a
    PIX manager or a person provides; its rows link records whatever their demographics.

    Raises
    ------
    FileNotFoundError
        When a source path or the cross-reference file does not exist.
    ValueError
        When a cross-reference row does not have four columns.
    """
    from priors.catalog import Catalog
    from priors.longitudinal import (
        SelectionRules,
        build_timeline,
        link_records,
        person_studies,
        read_cross_reference,
        select_pairs,
        summarize,
    )
    from priors.sources.pacs import open_sources
    from priors.sources.remote import RetrievalCache

    if cross_reference is not None and not Path(cross_reference).is_file():
        raise FileNotFoundError(f"cross-reference table {cross_reference} does not exist")
    xref_rows = read_cross_reference(cross_reference) if cross_reference is not None else []
    sources = open_sources(source_paths, configured=settings.sources, issuers=issuers,
                           cache=RetrievalCache(Path(settings.home) / "cache" / "pacs"))
    # The catalog contains identifiers, so a home folder priors creates is private.
    Path(settings.home).mkdir(parents=True, exist_ok=True, mode=0o700)
    catalog = Catalog(settings.catalog_url)
    ingest = catalog.ingest(sources, workers=2)
    source_issuers = {source.source_id: source.issuer for source in sources}
    rows = _instances_of_sources(catalog, [source.source_id for source in sources])
    log.info("%d indexed instances in %d sources", len(rows), len(sources))

    entries = [_Entry(row.header, row.source_id, source_issuers.get(row.source_id, ""),
                      row.location, row.pixel_sha256) for row in rows]
    records, studies = summarize(entries)
    pseudonymizer = Pseudonymizer(load_key(settings.home, configured=settings.pseudonym_key))
    linkage = link_records(records, cross_reference=xref_rows, pseudonymizer=pseudonymizer,
                           studies=studies)
    rules = SelectionRules.from_settings(settings.selection)
    timelines, selections = [], []
    for studies_of_person in person_studies(linkage, studies):
        timeline = build_timeline(studies_of_person)
        wanted = current_study_uid if current_study_uid and any(
            current_study_uid in study.study_instance_uids for study in timeline) else None
        timelines.append(timeline)
        selections.append(select_pairs(timeline, rules=rules, current_study_uid=wanted))
    return People(catalog, sources, ingest, rows, linkage, timelines, selections, pseudonymizer)


def _person_task(person: str, selection: Any, rows_by_series: Mapping[str, list[Any]], *,
                 plan: JobPlan, settings: Settings, out_dir: Path,
                 link_rows: list[dict[str, Any]]) -> PersonTask | None:
    from priors.provenance.digests import pair_key

    if selection.current is None:
        return None
    current = selection.current
    pairs: list[PairTask] = []
    for choice in selection.pairs:
        if not choice.change_candidate:
            continue
        current_ref = _series_ref(choice.current_series, current, rows_by_series)
        prior_ref = _series_ref(choice.prior_series, choice.prior_study, rows_by_series)
        pair = PairTask(
            pair_id=_pair_id(current_ref, prior_ref), current=current_ref, prior=prior_ref,
            reasons=[{"reason": text} for text in choice.reasons]
            + [{"values": dict(choice.values)}])
        current_digest, prior_digest = current_ref.digest(), prior_ref.digest()
        if current_digest and prior_digest:
            pair.pair_key = pair_key(
                current_digest, prior_digest,
                registration_config=dataclasses.asdict(settings.registration),
                model_version=_model_version_for(current_ref, settings))
        pairs.append(pair)
    if not pairs:
        return None
    return PersonTask(
        person=person, current_study_uid=current.study_instance_uid,
        package_dir=out_dir / current.study_instance_uid, pairs=pairs, job_id=plan.job_id,
        provenance_base={
            "sources": plan.source_descriptions,
            "link_decisions": link_rows,
            "selection": [_decision_row(item) for item in selection.decisions],
        })


def _model_version_for(series: SeriesRef, settings: Settings) -> str:
    """Return the model part of a pair key, known before the pair runs.

    The key names the bundle's weights for pairs in the model's declared scope and
    the baseline for the others, as the worker will decide.
    """
    name, version, weights, scope = _bundle_identity(str(resolve_bundle_dir(settings)))
    modalities, regions = scope
    if series.modality.upper() in modalities and series.body_part.upper() in regions:
        return f"{name}:{version}:{weights[:16]}"
    return "baseline"


@functools.lru_cache(maxsize=4)
def _bundle_identity(bundle_dir: str) -> tuple[str, str, str, tuple[frozenset, frozenset]]:
    """Read a bundle's name, version, weights SHA-256 and scope once per job process.

    The weights are hashed from the file, so retrained weights change every pair key
    even when the metadata was not updated.
    """
    import json

    from priors.provenance.digests import file_sha256

    root = Path(bundle_dir)
    metadata_path = root / "configs" / "metadata.json"
    weights_path = root / "models" / "model.pt"
    if not metadata_path.is_file() or not weights_path.is_file():
        return "baseline", "", "", (frozenset(), frozenset())
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    scope = metadata.get("scope", {})
    modalities = frozenset(value.upper() for value in scope.get("modalities", []))
    regions = frozenset(value.upper() for value in scope.get("body_regions", []))
    return (str(metadata.get("name", "model")), str(metadata.get("version", "")),
            file_sha256(weights_path), (modalities, regions))


def resolve_bundle_dir(settings: Settings) -> Path:
    """Return the model bundle folder: as configured, else relative to the repository."""
    configured = Path(settings.change.bundle).expanduser()
    if configured.is_absolute() or configured.exists():
        return configured.resolve()
    return (REPO_ROOT / configured).resolve()


def _series_ref(info: Any, study: Any, rows_by_series: Mapping[str, list[Any]]) -> SeriesRef:
    rows = _one_location_each(rows_by_series.get(info.series_instance_uid, []))
    instances = tuple(
        InstanceRef(
            sop_instance_uid=row.sop_instance_uid,
            series_instance_uid=row.series_instance_uid,
            study_instance_uid=row.study_instance_uid,
            source_id=row.source_id, location=row.location,
            transfer_syntax_uid=row.transfer_syntax_uid, file_sha256=row.file_sha256,
            pixel_sha256=row.pixel_sha256,
            path=row.path if row.path != row.location else "")
        for row in rows)
    date = study.date.isoformat() if getattr(study, "date", None) else ""
    body_part = info.body_part_examined or (study.body_parts[0] if study.body_parts else "")
    return SeriesRef(
        series_instance_uid=info.series_instance_uid,
        study_instance_uid=info.study_instance_uid, study_date=date, modality=info.modality,
        body_part=body_part, series_description=info.series_description,
        series_number=info.series_number, instances=instances)


def _one_location_each(rows: Sequence[Any]) -> list[Any]:
    """Keep one location per SOP Instance UID, the first by location for repeatability."""
    chosen: dict[str, Any] = {}
    for row in sorted(rows, key=lambda item: item.location):
        chosen.setdefault(row.sop_instance_uid, row)
    return list(chosen.values())


def _pair_id(current: SeriesRef, prior: SeriesRef) -> str:
    tag = hashlib.sha256(
        f"{current.series_instance_uid}\x00{prior.series_instance_uid}".encode()).hexdigest()[:8]
    number = "x" if prior.series_number is None else str(prior.series_number)
    current_number = "x" if current.series_number is None else str(current.series_number)
    return f"{prior.study_date or 'undated'}_s{number}_to_s{current_number}_{tag}"


def _note_not_chosen(plan: JobPlan, selection: Any, timeline: Sequence[Any],
                     rows_by_series: Mapping[str, list[Any]]) -> None:
    """Record why each valid instance of a person will not be used, where a reason exists."""
    reasons: dict[str, str] = {}
    for decision in selection.decisions:
        if decision.subject == "series" and decision.verdict == "rejected":
            reasons[decision.uid] = decision.reason
    for study in timeline:
        for _primary, copies in study.duplicate_series:
            for uid in copies:
                reasons.setdefault(uid, f"{REASON_DUPLICATE} (same pixel data in another "
                                        "series of the same study)")
    for series_uid, reason in reasons.items():
        for row in rows_by_series.get(series_uid, []):
            plan.not_chosen[row.location] = f"not chosen for pairing: {reason}"


def account_job(plan: JobPlan, used: set[str], rejected: Mapping[str, str] | None = None
                ) -> tuple[dict[str, int], list[dict[str, str]]]:
    """Give every file of the job's sources one outcome and store it in the catalog.

    Parameters
    ----------
    plan
        The job's plan.
    used
        Locations of the instances that are part of a volume in a prepared pair.
    rejected
        Location -> reason, for files that passed ingest but could not be decoded
        when their volume was built.

    Returns
    -------
    counts, files
        Counts by outcome plus ``found`` and ``absent``; and the skipped and rejected
        files with their reasons.
    """
    outcomes = []
    for source_id in plan.source_ids:
        for item in plan.catalog.file_outcomes(source_id=source_id):
            outcome, reason = item.outcome, item.reason
            if outcome == "indexed":
                if item.location in used:
                    outcome, reason = "used", ""
                elif rejected and item.location in rejected:
                    outcome, reason = "rejected", rejected[item.location]
                elif item.location in plan.not_chosen:
                    outcome, reason = "skipped", plan.not_chosen[item.location]
            outcomes.append((item.location, outcome, reason))
    _store_job_outcomes(plan, outcomes, rejected or {})

    counts = dict.fromkeys(("used", "indexed", "skipped", "rejected"), 0)
    files = []
    for location, outcome, reason in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome in ("skipped", "rejected"):
            files.append({"location": location, "outcome": outcome, "reason": reason})
    counts["found"] = len(outcomes)
    counts["absent"] = len(plan.absent_references)
    return counts, files


def write_package_manifest(result: PersonResult, *, plan: JobPlan,
                           run_ids: Mapping[str, str] | None = None) -> Path:
    """Write ``manifest.json`` of one person's context package.

    ``run_ids`` maps pair ids to their MLflow runs, recorded as ``mlflow_run_id``.
    """
    from priors.packaging import build_manifest, write_manifest

    current_series = []
    seen = set()
    for pair in result.pairs:
        uid = pair.current["series_instance_uid"]
        if uid not in seen:
            seen.add(uid)
            current_series.append(pair.current)
    pairs = []
    for pair in result.pairs:
        pairs.append({
            "pair_id": pair.pair_id,
            "pair_key": pair.pair_key,
            "status": pair.status,
            "reason": pair.reason,
            "current_series_instance_uid": pair.current["series_instance_uid"],
            "prior_study_instance_uid": pair.prior["study_instance_uid"],
            "prior_series_instance_uid": pair.prior["series_instance_uid"],
            "prior_study_date": pair.prior["study_date"],
            "selection_reasons": pair.selection_reasons,
            "registration": {
                "verdict": pair.registration.get("verdict", "not run"),
                "reason": pair.registration.get("reason", ""),
                "figures": pair.registration.get("metrics", {}),
                "matrix_lps": pair.registration.get("matrix_lps"),
                "ambiguous": pair.registration.get("ambiguous", False),
            },
            "change": {key: value for key, value in pair.change.items()
                       if key in ("method", "reason", "bundle", "version", "lesion_count")},
            "paths": _manifest_paths(pair.outputs),
        })
        if run_ids and run_ids.get(pair.pair_id):
            pairs[-1]["mlflow_run_id"] = run_ids[pair.pair_id]
    manifest = build_manifest(
        person_pseudonym=result.person, current_study_uid=result.current_study_uid,
        current_series=current_series, pairs=pairs, job_id=plan.job_id)
    if result.current_volume:
        manifest.setdefault("current_volume", Path(result.current_volume).name)
    return write_manifest(Path(result.package_dir), manifest)


def _manifest_paths(outputs: Mapping[str, str]) -> dict[str, Any]:
    """Map the pair's output files onto the manifest's path fields."""
    return {
        "transform": outputs.get("transform"),
        "registered_prior": outputs.get("registered_prior"),
        "change_maps": [outputs[name] for name in ("change_probability", "change_labels")
                        if name in outputs],
        "dicom_outputs": [outputs[name] for name in ("segmentation", "parametric_map")
                          if name in outputs],
        "lesions": outputs.get("lesions"),
        "provenance": outputs.get("provenance"),
        "provenance_prov": outputs.get("provenance_prov"),
        "previews": [outputs[name] for name in ("preview", "overlay") if name in outputs],
    }


def _link_decision_rows(linkage: Any, pseudonymizer: Pseudonymizer) -> list[dict[str, Any]]:
    rows = []
    for decision in linkage.decisions:
        keys = [linkage.records[index].key for index in decision.records]
        rows.append({
            "record_indices": list(decision.records),
            "records": [{"issuer": issuer,
                         "patient_id_pseudonym": pseudonymizer.record(issuer, patient_id)}
                        for issuer, patient_id in keys],
            "decision": decision.decision,
            "evidence": list(decision.evidence),
            "score": decision.score,
            "source": decision.source,
        })
    return rows


def _decision_row(decision: Any) -> dict[str, Any]:
    return {"subject": decision.subject, "uid": decision.uid, "verdict": decision.verdict,
            "reason": decision.reason, "values": dict(decision.values)}


def _instances_of_sources(catalog: Any, source_ids: Sequence[str]) -> list[Any]:
    """Return the valid instance locations that the job's sources contain."""
    return catalog.instances_of_sources(source_ids)


def _store_job_outcomes(plan: JobPlan, outcomes: Sequence[tuple[str, str, str]],
                        rejected: Mapping[str, str]) -> None:
    """Write the job's used, skipped and undecodable files to the catalog's job outcomes."""
    used = [location for location, outcome, _ in outcomes if outcome == "used"]
    if used:
        plan.catalog.mark_used(used, plan.job_id)
    by_reason: dict[tuple[str, str], list[str]] = defaultdict(list)
    for location, outcome, reason in outcomes:
        if outcome == "skipped" and location in plan.not_chosen:
            by_reason[(outcome, reason)].append(location)
        elif outcome == "rejected" and location in (rejected or {}):
            by_reason[(outcome, reason)].append(location)
    for (outcome, reason), locations in by_reason.items():
        if outcome == "skipped":
            plan.catalog.mark_skipped(locations, plan.job_id, reason=reason)
        else:
            plan.catalog.mark_rejected(locations, plan.job_id, reason=reason)


def _catalog_link_rows(linkage: Any) -> list[dict[str, Any]]:
    """Return link decisions as the catalog stores them, with the records' keys."""
    rows = []
    for decision in linkage.decisions:
        first, second = (linkage.records[index].key for index in decision.records)
        person = linkage.persons[linkage.person_of(decision.records[0])]
        rows.append({"record_a": first, "record_b": second,
                     "linked": decision.decision == "link", "pseudonym": person.pseudonym,
                     "evidence": {"decision": decision.decision, "score": decision.score,
                                  "source": decision.source,
                                  "facts": list(decision.evidence)}})
    return rows

