"""Longitudinal layer: identity linkage across sites, timelines and prior selection.

The layer reads header summaries only; it touches neither pixels nor the network.
Typical use::

    records, studies = summarize(entries)
    linkage = link_records(records, cross_reference=rows, pseudonymizer=pseudonymizer)
    for person, studies_of_person in zip(linkage.persons, person_studies(linkage, studies)):
        timeline = build_timeline(studies_of_person)
        selection = select_pairs(timeline)
"""

from __future__ import annotations

from priors.longitudinal.linkage import (
    CrossReference,
    Linkage,
    LinkageRules,
    LinkConflict,
    LinkDecision,
    Person,
    link_records,
    read_cross_reference,
)
from priors.longitudinal.selection import (
    Decision,
    PairChoice,
    PriorChoice,
    Selection,
    SelectionRules,
    select_pairs,
)
from priors.longitudinal.summary import summarize
from priors.longitudinal.timeline import TimelineStudy, build_timeline, person_studies
from priors.longitudinal.types import InstanceEntry, PatientRecord, SeriesInfo, StudyInfo

__all__ = [
    "CrossReference",
    "Decision",
    "InstanceEntry",
    "LinkConflict",
    "LinkDecision",
    "Linkage",
    "LinkageRules",
    "PairChoice",
    "PatientRecord",
    "Person",
    "PriorChoice",
    "Selection",
    "SelectionRules",
    "SeriesInfo",
    "StudyInfo",
    "TimelineStudy",
    "build_timeline",
    "link_records",
    "person_studies",
    "read_cross_reference",
    "select_pairs",
    "summarize",
]
