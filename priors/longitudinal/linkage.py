"""Link patient records of one person across issuers, with a decision per pair.

A patient record is (issuer, Patient ID). Records are never linked on Patient ID alone
across issuers, because two sites may give the same ID to different people. Links come
from three kinds of evidence, in this order of authority:

1. an explicit cross-reference table, as a PIX manager provides it (it wins over
   demographics, and a contradiction is reported as a conflict);
2. (0010,1002) Other Patient IDs Sequence in the data, and a Study Instance UID that
   two records share (a UID is globally unique, so both name one person's study). A
   contradiction with the demographics blocks the link and is reported;
3. demographic matching on the normalised name, birth date and sex, with a score.

Demographic rules: an automatic link needs the same birth date, the same sex and
names that agree in every script both records carry (tokens in any order, or one name
adding middle names). A day/month swap in the birth date, a one-character difference in
a name, or a changed family name with everything else equal make at most a "possible"
match, kept for review and never used for pairing. A different sex or an otherwise
different birth date blocks a link. Twins (same birth date, different given names)
therefore stay apart.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from priors.longitudinal.names import NameMatch, compare_names, normalise_name
from priors.longitudinal.types import PatientRecord, RecordKey, StudyInfo
from priors.pseudonym import Pseudonymizer

__all__ = [
    "CrossReference",
    "LinkConflict",
    "LinkDecision",
    "LinkageRules",
    "Linkage",
    "Person",
    "link_records",
    "read_cross_reference",
]

logger = logging.getLogger(__name__)

# Score of each name comparison kind (see NameMatch). Names weigh 0.6 of the total,
# birth date 0.3 and sex 0.1, so that no single attribute reaches the link threshold.
NAME_SCORES = {
    "same": 1.0,
    "middle": 0.95,
    "one_char": 0.85,
    "family_changed": 0.6,
    "no_common_script": 0.6,
    "different": 0.2,
}
NAME_WEIGHT = 0.6
BIRTH_DATE_WEIGHT = 0.3
SEX_WEIGHT = 0.1


@dataclass(frozen=True)
class LinkageRules:
    """Thresholds of demographic matching.

    A score at or above ``link_threshold`` links two records, provided birth date and
    sex are equal and present. A score at or above ``possible_threshold`` marks them
    for review. The defaults put a name with middle names added (0.97) above the link
    threshold and a one-character name difference (0.91) below it.
    """

    link_threshold: float = 0.95
    possible_threshold: float = 0.75


@dataclass(frozen=True)
class CrossReference:
    """One row of a cross-reference table: two records of the same person."""

    issuer_a: str
    patient_id_a: str = field(repr=False)
    issuer_b: str = ""
    patient_id_b: str = field(default="", repr=False)

    @property
    def keys(self) -> tuple[RecordKey, RecordKey]:
        """Return the two (issuer, Patient ID) keys."""
        return (self.issuer_a, self.patient_id_a), (self.issuer_b, self.patient_id_b)


@dataclass(frozen=True)
class LinkDecision:
    """The decision on one pair of records, with the evidence behind it.

    ``decision`` is ``link``, ``possible``, ``no_link`` or ``blocked``; ``evidence``
    lists facts without identifying values, so it may be logged and exported.
    """

    records: tuple[int, int]
    decision: str
    evidence: tuple[str, ...]
    score: float
    # "same_record", "cross_reference", "other_patient_ids", "shared_study_uid" or
    # "demographics".
    source: str


@dataclass(frozen=True)
class LinkConflict:
    """A contradiction found while linking, for a person to review."""

    kind: str
    records: tuple[int, ...]
    detail: str


@dataclass
class Person:
    """Records linked into one person."""

    record_indices: tuple[int, ...]
    pseudonym: str = ""
    conflicts: tuple[int, ...] = ()  # indices into Linkage.conflicts


@dataclass
class Linkage:
    """Result of :func:`link_records`."""

    records: tuple[PatientRecord, ...]
    persons: list[Person]
    decisions: list[LinkDecision]
    conflicts: list[LinkConflict]

    def person_of(self, record_index: int) -> int:
        """Return the index of the person that contains a record."""
        for index, person in enumerate(self.persons):
            if record_index in person.record_indices:
                return index
        raise KeyError(f"record index {record_index} belongs to no person")


def read_cross_reference(path: str | os.PathLike[str]) -> list[CrossReference]:
    """Read a cross-reference CSV with columns issuer_a, id_a, issuer_b, id_b.

    A header row naming those columns is optional.

    Raises
    ------
    ValueError
        When a row does not have four columns; the message gives the file and line.
    """
    rows: list[CrossReference] = []
    with open(path, newline="", encoding="utf-8") as stream:
        for line_number, row in enumerate(csv.reader(stream), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if line_number == 1 and [c.strip().lower() for c in row] == [
                "issuer_a",
                "id_a",
                "issuer_b",
                "id_b",
            ]:
                continue
            if len(row) != 4:
                raise ValueError(
                    f"{path}: line {line_number} has {len(row)} columns, expected 4 "
                    "(issuer_a, id_a, issuer_b, id_b)"
                )
            rows.append(CrossReference(*(cell.strip() for cell in row)))
    return rows


def link_records(
    records: Sequence[PatientRecord],
    *,
    cross_reference: Iterable[CrossReference | tuple[str, str, str, str]] = (),
    rules: LinkageRules | None = None,
    pseudonymizer: Pseudonymizer | None = None,
    studies: Sequence[StudyInfo] = (),
) -> Linkage:
    """Group patient records into persons.

    Parameters
    ----------
    records
        Records from :func:`~priors.longitudinal.summarize`.
    cross_reference
        Rows (issuer_a, id_a, issuer_b, id_b) stating that two records are one person.
    rules
        Thresholds; :class:`LinkageRules` defaults when None.
    pseudonymizer
        When given, each person's pseudonym is set from its smallest record key.
    studies
        Studies from the same :func:`~priors.longitudinal.summarize` call. Records whose
        studies share a Study Instance UID are linked unless their demographics
        contradict.

    Returns
    -------
    Linkage
        Persons (sorted by their smallest record index), every decision taken on a
        candidate pair, and the conflicts found.
    """
    rules = rules or LinkageRules()
    records = tuple(records)
    decisions: list[LinkDecision] = []
    conflicts: list[LinkConflict] = []
    by_key: dict[RecordKey, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_key[record.key].append(index)
    decided: set[tuple[int, int]] = set()

    _decide_same_record(records, by_key, decisions, conflicts, decided, rules)
    _decide_cross_reference(
        records, by_key, _as_rows(cross_reference), decisions, conflicts, decided, rules
    )
    _decide_other_ids(records, by_key, decisions, conflicts, decided, rules)
    _decide_shared_studies(records, studies, decisions, conflicts, decided, rules)
    for i, j in _candidate_pairs(records):
        if (i, j) in decided or records[i].key == records[j].key:
            continue
        decided.add((i, j))
        decision = _demographic_decision(records, i, j, rules, source="demographics")
        if decision.decision != "no_link":
            decisions.append(decision)

    persons = _group(len(records), decisions)
    _check_persons(records, persons, decisions, conflicts)
    for person in persons:
        person.conflicts = tuple(
            k for k, c in enumerate(conflicts) if set(c.records) & set(person.record_indices)
        )
        if pseudonymizer is not None:
            person.pseudonym = pseudonymizer.person([records[i].key for i in person.record_indices])
    logger.info(
        "linked %d records into %d persons: %d links, %d possible, %d conflicts",
        len(records),
        len(persons),
        sum(1 for d in decisions if d.decision == "link"),
        sum(1 for d in decisions if d.decision == "possible"),
        len(conflicts),
    )
    return Linkage(records, persons, decisions, conflicts)


def _as_rows(
    rows: Iterable[CrossReference | tuple[str, str, str, str]],
) -> list[CrossReference]:
    return [row if isinstance(row, CrossReference) else CrossReference(*row) for row in rows]


def _decide_same_record(records, by_key, decisions, conflicts, decided, rules) -> None:
    # One (issuer, Patient ID) with several demographic variants: one person if the
    # variants agree, else a conflict and no link.
    for indices in by_key.values():
        for i, j in combinations(indices, 2):
            decided.add((i, j))
            demographic = _demographic_decision(records, i, j, rules, source="same_record")
            if demographic.decision in ("link", "possible"):
                decisions.append(
                    LinkDecision(
                        (i, j),
                        "link",
                        ("same issuer and Patient ID", *demographic.evidence),
                        demographic.score,
                        "same_record",
                    )
                )
            else:
                decisions.append(demographic)
                conflicts.append(
                    LinkConflict(
                        "patient_id_reused",
                        (i, j),
                        "one issuer holds two different people's demographics under one "
                        f"Patient ID ({', '.join(demographic.evidence)})",
                    )
                )


def _decide_cross_reference(records, by_key, rows, decisions, conflicts, decided, rules) -> None:
    unknown = 0
    for row in rows:
        key_a, key_b = row.keys
        if key_a not in by_key or key_b not in by_key:
            unknown += 1
            continue
        for i in by_key[key_a]:
            for j in by_key[key_b]:
                pair = (min(i, j), max(i, j))
                if i == j or pair in decided:
                    continue
                decided.add(pair)
                demographic = _demographic_decision(records, *pair, rules, source="demographics")
                decisions.append(
                    LinkDecision(
                        pair,
                        "link",
                        ("cross-reference table row", *demographic.evidence),
                        demographic.score,
                        "cross_reference",
                    )
                )
                if demographic.decision in ("blocked", "no_link"):
                    conflicts.append(
                        LinkConflict(
                            "cross_reference_contradicts_demographics",
                            pair,
                            "the cross-reference links records whose demographics disagree "
                            f"({', '.join(demographic.evidence)})",
                        )
                    )
    if unknown:
        logger.info("%d cross-reference rows name records not in this set", unknown)


def _decide_other_ids(records, by_key, decisions, conflicts, decided, rules) -> None:
    for i, record in enumerate(records):
        for other_id, other_issuer in record.other_ids:
            for j in by_key.get((other_issuer, other_id), ()):
                pair = (min(i, j), max(i, j))
                if i == j or pair in decided:
                    continue
                decided.add(pair)
                demographic = _demographic_decision(records, *pair, rules, source="demographics")
                if demographic.decision == "blocked":
                    decisions.append(
                        LinkDecision(
                            pair,
                            "blocked",
                            ("Other Patient IDs Sequence names the record", *demographic.evidence),
                            demographic.score,
                            "other_patient_ids",
                        )
                    )
                    conflicts.append(
                        LinkConflict(
                            "other_ids_contradict_demographics",
                            pair,
                            "Other Patient IDs Sequence names a record whose demographics "
                            f"disagree ({', '.join(demographic.evidence)})",
                        )
                    )
                    continue
                decisions.append(
                    LinkDecision(
                        pair,
                        "link",
                        ("Other Patient IDs Sequence names the record", *demographic.evidence),
                        demographic.score,
                        "other_patient_ids",
                    )
                )


def _decide_shared_studies(records, studies, decisions, conflicts, decided, rules) -> None:
    holders: dict[str, set[int]] = defaultdict(set)
    for study in studies:
        if 0 <= study.record_index < len(records):
            holders[study.study_instance_uid].add(study.record_index)
    for uid, indices in sorted(holders.items()):
        for pair in combinations(sorted(indices), 2):
            if pair in decided:
                continue
            decided.add(pair)
            demographic = _demographic_decision(records, *pair, rules, source="demographics")
            evidence = ("both records hold the same Study Instance UID", *demographic.evidence)
            if demographic.decision == "blocked":
                decisions.append(
                    LinkDecision(pair, "blocked", evidence, demographic.score, "shared_study_uid")
                )
                conflicts.append(
                    LinkConflict(
                        "study_uid_shared_by_different_people",
                        pair,
                        f"Study Instance UID {uid} appears under records whose demographics "
                        f"disagree ({', '.join(demographic.evidence)})",
                    )
                )
                continue
            decisions.append(
                LinkDecision(pair, "link", evidence, demographic.score, "shared_study_uid")
            )


def _demographic_decision(
    records: Sequence[PatientRecord], i: int, j: int, rules: LinkageRules, *, source: str
) -> LinkDecision:
    a, b = records[i], records[j]
    evidence: list[str] = []

    name = compare_names(a.patient_name, b.patient_name)
    evidence.append(_name_evidence(name))
    birth_kind = _compare_birth_dates(a.birth_date, b.birth_date)
    evidence.append(f"birth date {birth_kind}")
    sex_kind = _compare_sex(a.sex, b.sex)
    evidence.append(f"sex {sex_kind}")

    birth_score = {"equal": 1.0, "day/month swapped": 0.5}.get(birth_kind, 0.0)
    sex_score = {"equal": 1.0, "missing": 0.5}.get(sex_kind, 0.0)
    score = round(
        NAME_WEIGHT * NAME_SCORES[name.kind]
        + BIRTH_DATE_WEIGHT * birth_score
        + SEX_WEIGHT * sex_score,
        4,
    )

    if sex_kind == "different" or birth_kind == "different":
        return LinkDecision((i, j), "blocked", tuple(evidence), score, source)
    exact = birth_kind == "equal" and sex_kind == "equal" and name.kind in ("same", "middle")
    if exact and score >= rules.link_threshold:
        decision = "link"
    elif score >= rules.possible_threshold and name.kind != "different":
        decision = "possible"
    else:
        decision = "no_link"
    return LinkDecision((i, j), decision, tuple(evidence), score, source)


def _name_evidence(match: NameMatch) -> str:
    if match.kind == "no_common_script":
        return "names share no script"
    labels = {
        "same": "same",
        "middle": "same apart from middle names",
        "one_char": "one character different",
        "family_changed": "family name changed, given names equal",
        "different": "different",
    }
    parts = [f"{script} {labels[kind]}" for script, kind in match.detail]
    return "name: " + "; ".join(parts)


def _compare_birth_dates(a: str, b: str) -> str:
    a, b = a.strip(), b.strip()
    if not a or not b:
        return "missing"
    if a == b:
        return "equal"
    if len(a) == len(b) == 8 and a[:4] == b[:4] and a[4:6] == b[6:8] and a[6:8] == b[4:6]:
        return "day/month swapped"
    return "different"


def _compare_sex(a: str, b: str) -> str:
    a, b = a.strip().upper(), b.strip().upper()
    if not a or not b or "O" in (a, b):
        return "missing"
    return "equal" if a == b else "different"


def _candidate_pairs(records: Sequence[PatientRecord]) -> list[tuple[int, int]]:
    """Return pairs sharing a birth date (either day/month order) or a name token.

    Blocking keeps the comparison near linear in the number of records.
    """
    blocks: dict[str, set[int]] = defaultdict(set)
    for index, record in enumerate(records):
        birth = record.birth_date.strip()
        if len(birth) == 8:
            blocks["b" + birth].add(index)
            blocks["b" + birth[:4] + birth[6:8] + birth[4:6]].add(index)
        for form in normalise_name(record.patient_name).values():
            for token in form.tokens:
                blocks["n" + token].add(index)
    pairs: set[tuple[int, int]] = set()
    for members in blocks.values():
        pairs.update(combinations(sorted(members), 2))
    return sorted(pairs)


def _group(count: int, decisions: Sequence[LinkDecision]) -> list[Person]:
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for decision in decisions:
        if decision.decision == "link":
            i, j = decision.records
            parent[max(root(i), root(j))] = min(root(i), root(j))
    groups: dict[int, list[int]] = defaultdict(list)
    for index in range(count):
        groups[root(index)].append(index)
    return [Person(tuple(members)) for _, members in sorted(groups.items())]


def _check_persons(records, persons, decisions, conflicts) -> None:
    # Links are transitive: A-B and B-C may join A and C although they disagree.
    explicit = {
        d.records for d in decisions if d.source == "cross_reference" and d.decision == "link"
    }
    reported = {c.records for c in conflicts}
    for person in persons:
        for i, j in combinations(person.record_indices, 2):
            if (i, j) in explicit or (i, j) in reported:
                continue
            birth = _compare_birth_dates(records[i].birth_date, records[j].birth_date)
            sex = _compare_sex(records[i].sex, records[j].sex)
            if birth == "different" or sex == "different":
                conflicts.append(
                    LinkConflict(
                        "linked_records_disagree",
                        (i, j),
                        f"records joined through other links disagree (birth date {birth}, "
                        f"sex {sex})",
                    )
                )
