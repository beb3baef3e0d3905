"""Export linkage, timelines and selections as JSON, a table and an explanation.

None of these outputs carries a clear identifier: Patient IDs appear as keyed
pseudonyms, and names and birth dates not at all. Link evidence is written without
values by :mod:`priors.longitudinal.linkage`, so it is exported as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from priors.longitudinal.linkage import Linkage
from priors.longitudinal.selection import PairChoice, Selection
from priors.longitudinal.timeline import TimelineStudy
from priors.longitudinal.types import SeriesInfo
from priors.pseudonym import Pseudonymizer

__all__ = ["explain_text", "render_timeline_table", "timeline_json"]

TABLE_COLUMNS = ("date", "site", "modality", "body part", "description", "series", "duplicates")


def timeline_json(
    linkage: Linkage,
    timelines: Sequence[Sequence[TimelineStudy]],
    selections: Sequence[Selection | None],
    pseudonymizer: Pseudonymizer,
) -> dict[str, Any]:
    """Build the JSON-ready timeline document of every person.

    Parameters
    ----------
    linkage
        The result of :func:`~priors.longitudinal.link_records`.
    timelines, selections
        One entry per person, in the order of ``linkage.persons``; a selection may be
        None for a person that was not selected for.
    pseudonymizer
        Computes the person and record pseudonyms.
    """
    persons: list[dict[str, Any]] = []
    for index, person in enumerate(linkage.persons):
        local = {record: position for position, record in enumerate(person.record_indices)}
        records = [linkage.records[i] for i in person.record_indices]
        links = [
            {
                "records": [local[d.records[0]], local[d.records[1]]],
                "decision": d.decision,
                "evidence": list(d.evidence),
                "score": d.score,
                "source": d.source,
            }
            for d in linkage.decisions
            if d.decision in ("link", "possible")
            and d.records[0] in local
            and d.records[1] in local
        ]
        possible = [
            {
                "record": local[mine],
                "other_person": pseudonymizer.person(
                    [
                        linkage.records[i].key
                        for i in linkage.persons[linkage.person_of(other)].record_indices
                    ]
                ),
                "evidence": list(d.evidence),
                "score": d.score,
            }
            for d in linkage.decisions
            if d.decision == "possible"
            for mine, other in (d.records, d.records[::-1])
            if mine in local and other not in local
        ]
        selection = selections[index] if index < len(selections) else None
        persons.append(
            {
                "id": pseudonymizer.person([r.key for r in records]),
                "records": [
                    {
                        "issuer": r.issuer,
                        "patient_id_pseudonym": pseudonymizer.record(r.issuer, r.patient_id),
                        "source": r.source_ids[0] if r.source_ids else "",
                        "sources": list(r.source_ids),
                        "sex": r.sex,
                    }
                    for r in records
                ],
                "links": links,
                "possible_matches": possible,
                "conflicts": [
                    {
                        "kind": linkage.conflicts[k].kind,
                        "records": [local.get(i, -1) for i in linkage.conflicts[k].records],
                        "detail": linkage.conflicts[k].detail,
                    }
                    for k in person.conflicts
                ],
                "studies": [_study_json(s) for s in timelines[index]],
                "current_study_instance_uid": (
                    selection.current.study_instance_uid
                    if selection and selection.current
                    else None
                ),
                "priors": [
                    {
                        "study_instance_uids": list(p.study.study_instance_uids),
                        "date": _date(p.study),
                        "role": p.role,
                        "change_candidate": p.change_candidate,
                        "reasons": list(p.reasons),
                    }
                    for p in (selection.priors if selection else [])
                ],
                "pairs": [_pair_json(p, selection) for p in selection.pairs] if selection else [],
                "selection_decisions": [
                    {
                        "subject": d.subject,
                        "uid": d.uid,
                        "verdict": d.verdict,
                        "reason": d.reason,
                        "values": dict(d.values),
                    }
                    for d in (selection.decisions if selection else [])
                ],
            }
        )
    return {"persons": persons}


def _date(study: TimelineStudy) -> str:
    return study.date.isoformat() if study.date else ""


def _study_json(study: TimelineStudy) -> dict[str, Any]:
    return {
        "date": _date(study),
        "time": study.time,
        "date_source": study.date_source,
        "date_notes": list(study.date_notes),
        "modality": "/".join(study.modalities),
        "description": study.description,
        "body_parts": list(study.body_parts),
        "study_instance_uids": list(study.study_instance_uids),
        "locations": list(study.locations),
        "sources": list(study.source_ids),
        "institutions": list(study.institution_names),
        "series": [
            {
                "series_instance_uid": s.series_instance_uid,
                "series_number": s.series_number,
                "series_description": s.series_description,
                "modality": s.modality,
                "instances": s.instance_count,
            }
            for s in study.series
        ],
        "duplicate_series": {uid: list(others) for uid, others in study.duplicate_series},
    }


def _pair_json(pair: PairChoice, selection: Selection) -> dict[str, Any]:
    assert selection.current is not None

    def side(study: TimelineStudy, series: SeriesInfo) -> dict[str, Any]:
        return {
            "study_date": _date(study),
            "study_instance_uid": study.study_instance_uid,
            "series_instance_uid": series.series_instance_uid,
            "series_number": series.series_number,
            "series_description": series.series_description,
        }

    return {
        "current": side(selection.current, pair.current_series),
        "prior": side(pair.prior_study, pair.prior_series),
        "reasons": list(pair.reasons),
        "values": dict(pair.values),
        "change_candidate": pair.change_candidate,
    }


def render_timeline_table(studies: Sequence[TimelineStudy]) -> str:
    """Render one person's timeline as a fixed-width text table.

    Columns: date, site (institution, else source), modality, body part, description,
    series count and duplicates (the number of extra UID sets merged into the study).
    """
    rows = [TABLE_COLUMNS]
    for study in studies:
        rows.append(
            (
                _date(study) or "undated",
                ", ".join(study.institution_names or study.source_ids),
                "/".join(study.modalities),
                ", ".join(study.body_parts),
                study.description,
                str(len(study.series)),
                str(len(study.study_instance_uids) - 1),
            )
        )
    widths = [max(len(row[k]) for row in rows) for k in range(len(TABLE_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def explain_text(
    linkage: Linkage,
    selections: Sequence[Selection | None],
    *,
    persons: Sequence[int] | None = None,
) -> str:
    """Write every link decision, conflict and selection decision as plain text.

    Records are named by their position in ``linkage.records`` and their issuer, never
    by Patient ID; persons by their pseudonym when it is set.

    Parameters
    ----------
    linkage
        The result of :func:`~priors.longitudinal.link_records`.
    selections
        One entry per person, in the order of ``linkage.persons``.
    persons
        Indices into ``linkage.persons`` to explain; all when None. Link decisions
        and conflicts are kept when they touch a record of one of these persons.
    """
    wanted = range(len(linkage.persons)) if persons is None else persons
    mine = {i for index in wanted for i in linkage.persons[index].record_indices}
    lines = ["Identity linkage"]
    for decision in linkage.decisions:
        i, j = decision.records
        if i not in mine and j not in mine:
            continue
        lines.append(
            f"  records {i} ({linkage.records[i].issuer}) and {j} ({linkage.records[j].issuer}): "
            f"{decision.decision} by {decision.source}, score {decision.score:.2f}; "
            + "; ".join(decision.evidence)
        )
    for conflict in linkage.conflicts:
        if not set(conflict.records) & mine:
            continue
        lines.append(
            f"  conflict {conflict.kind} on records {list(conflict.records)}: {conflict.detail}"
        )
    for index in wanted:
        person = linkage.persons[index]
        selection = selections[index] if index < len(selections) else None
        lines.append(f"Person {person.pseudonym or index}: selection")
        if selection is None:
            lines.append("  not selected")
            continue
        for choice in selection.decisions:
            lines.append(f"  {choice.subject} {choice.uid}: {choice.verdict}: {choice.reason}")
    return "\n".join(lines)
