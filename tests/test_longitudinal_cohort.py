"""Linkage and prior selection measured against the synthetic cohort's ground truth.

Each cohort is written once per seed and ingested through
:func:`priors.planning.gather_people` into an isolated PRIORS_HOME. The result is
compared with ``ground_truth.json``, which names the (issuer, Patient ID) records of
each person, the latest study, its priors, and which series is thin or thick. Each
seed in ``SEEDS`` gives two persons the same family name. A modified copy of the first
cohort adds the hard cases: a married-name change and a changed sex that only a
cross-reference table links, and a day/month swap that stays "possible".
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable, Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import pydicom
import pytest

from priors.config import load_settings
from priors.longitudinal import SelectionRules
from priors.planning import People, gather_people, plan_job
from priors.synthetic import write_cohort
from priors.synthetic.cohort import MASK_FOLDER

# Cohorts that give two persons one family name (a test below checks it).
SEEDS = (0, 2)
# Small images keep writing and ingesting one cohort to about 7 s.
MATRIX = 48
COVERAGE_MM = 100.0
MARRIED_FAMILY_NAME = "Marchetti"
DAYS_PER_YEAR = 365.25

RecordKey = tuple[str, str]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the module's catalogs and MLflow store out of the user's PRIORS_HOME."""
    folder = tmp_path_factory.mktemp("cohort-env")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PRIORS_CONFIG", raising=False)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("PRIORS_PSEUDONYM_KEY", "test-key-not-secret")
        patch.setenv("PRIORS_HOME", str(folder / "unused"))
        yield folder


@pytest.fixture(scope="module")
def cohort_dir(env: Path) -> Callable[[int], Path]:
    """Return a function writing (once) and returning the cohort of a seed."""
    written: dict[int, Path] = {}

    def get(seed: int) -> Path:
        if seed not in written:
            folder = env / f"cohort-{seed}"
            write_cohort(folder, seed=seed, matrix=MATRIX, coverage_mm=COVERAGE_MM)
            written[seed] = folder
        return written[seed]

    return get


def _sources(cohort: Path) -> list[Path]:
    return sorted(p for p in cohort.iterdir() if p.is_dir() and p.name != MASK_FOLDER)


def _gather(
    cohort: Path, home: Path, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> tuple[People, Any]:
    monkeypatch.setenv("PRIORS_HOME", str(home))
    settings = load_settings(None)
    return gather_people(_sources(cohort), settings=settings, issuers={}, **options), settings


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{seed}" for seed in SEEDS])
def ingested(
    request: pytest.FixtureRequest, env: Path, cohort_dir: Callable[[int], Path]
) -> tuple[dict[str, Any], People]:
    seed = request.param
    cohort = cohort_dir(seed)
    with pytest.MonkeyPatch.context() as patch:
        people, _ = _gather(cohort, env / f"home-{seed}", patch)
    truth = json.loads((cohort / "ground_truth.json").read_text())
    return truth, people


def _truth_keys(person: dict[str, Any]) -> set[RecordKey]:
    return {(record["issuer"], record["patient_id"]) for record in person["records"]}


def _pairs_by_person(groups: list[set[RecordKey]]) -> set[frozenset[RecordKey]]:
    return {frozenset(pair) for group in groups for pair in combinations(sorted(group), 2)}


def _linked_groups(people: People) -> list[set[RecordKey]]:
    linkage = people.linkage
    return [{linkage.records[i].key for i in p.record_indices} for p in linkage.persons]


def precision_recall(
    truth_groups: list[set[RecordKey]], found_groups: list[set[RecordKey]]
) -> tuple[float, float]:
    """Return precision and recall over record pairs (1.0 when there is nothing to find)."""
    true_pairs = _pairs_by_person(truth_groups)
    found_pairs = _pairs_by_person(found_groups)
    hits = len(true_pairs & found_pairs)
    precision = hits / len(found_pairs) if found_pairs else 1.0
    recall = hits / len(true_pairs) if true_pairs else 1.0
    return precision, recall


def _person_index(people: People, keys: set[RecordKey]) -> int:
    indices = {
        people.linkage.person_of(i)
        for i, record in enumerate(people.linkage.records)
        if record.key in keys
    }
    assert len(indices) == 1, f"records of one person fall into {len(indices)} persons"
    return indices.pop()


def _family_name(person: dict[str, Any]) -> str:
    # Two of the three sites write FAMILY^GIVEN; every person has a record at one of them.
    names = [r["patient_name"] for r in person["records"] if "^" in r["patient_name"]]
    return names[0].split("^")[0].casefold()


def test_linkage_precision_recall(ingested: tuple[dict[str, Any], People]) -> None:
    truth, people = ingested
    truth_groups = [_truth_keys(person) for person in truth["persons"]]
    found_groups = _linked_groups(people)
    assert set().union(*found_groups) == set().union(*truth_groups)
    precision, recall = precision_recall(truth_groups, found_groups)
    assert (precision, recall) == (1.0, 1.0)
    assert len(people.linkage.persons) == len(truth["persons"])
    assert not people.linkage.conflicts


def test_same_family_name_not_linked(ingested: tuple[dict[str, Any], People]) -> None:
    truth, people = ingested
    persons = truth["persons"]
    shared = [(a, b) for a, b in combinations(persons, 2) if _family_name(a) == _family_name(b)]
    assert shared, "the cohort no longer gives two persons the same family name"
    for a, b in shared:
        assert _person_index(people, _truth_keys(a)) != _person_index(people, _truth_keys(b))
    for decision in people.linkage.decisions:
        i, j = decision.records
        if people.linkage.person_of(i) != people.linkage.person_of(j):
            assert decision.decision in ("blocked", "no_link")


def _expected_priors(
    studies: list[dict[str, Any]], rules: SelectionRules
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Return the latest study, the earlier ones that must be kept, and the prior count.

    Inside the lookback window, every earlier study is kept up to ``max_priors``.
    Beyond that count only the baseline and the most recent are fixed, because the
    selection chooses which interval studies fill the other places.
    """
    ordered = sorted(studies, key=lambda study: study["study_date"])
    current = ordered[-1]
    current_date = dt.date.fromisoformat(_iso(current["study_date"]))
    window = dt.timedelta(days=rules.lookback_years * DAYS_PER_YEAR)
    earlier = [
        study
        for study in ordered[:-1]
        if current_date - dt.date.fromisoformat(_iso(study["study_date"])) <= window
    ]
    count = min(len(earlier), rules.max_priors)
    if len(earlier) > rules.max_priors:
        earlier = [earlier[0], earlier[-1]]
    return current, earlier, count


def _iso(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}"


def test_selection_against_truth(ingested: tuple[dict[str, Any], People]) -> None:
    truth, people = ingested
    rules = SelectionRules()
    for person in truth["persons"]:
        index = _person_index(people, _truth_keys(person))
        selection = people.selections[index]
        current, expected, count = _expected_priors(person["studies"], rules)
        assert selection.current is not None
        assert current["study_instance_uid"] in selection.current.study_instance_uids
        chosen = {
            uid for prior in selection.priors if prior.change_candidate
            for uid in prior.study.study_instance_uids
        }  # fmt: skip
        for study in expected:
            assert study["study_instance_uid"] in chosen, f"{person['person']}: prior missed"
        assert len([p for p in selection.priors if p.change_candidate]) == count
        # Every ground-truth pair with this current study names a chosen prior.
        truth_priors = {
            pair["prior_study_instance_uid"]
            for pair in person["pairs"]
            if pair["current_study_instance_uid"] == current["study_instance_uid"]
        }
        assert truth_priors <= chosen
        assert not chosen & {current["study_instance_uid"]}


def test_series_pairs_thin_with_thin(ingested: tuple[dict[str, Any], People]) -> None:
    truth, people = ingested
    for person in truth["persons"]:
        index = _person_index(people, _truth_keys(person))
        selection = people.selections[index]
        role = {uid: kind for study in person["studies"] for kind, uid in study["series"].items()}
        seen: dict[str, set[str]] = {}
        for pair in selection.pairs:
            current_kind = role[pair.current_series.series_instance_uid]
            prior_kind = role[pair.prior_series.series_instance_uid]
            assert current_kind == prior_kind, (
                f"{person['person']}: {current_kind} series paired with a {prior_kind} one"
            )
            assert current_kind in ("thin", "thick")
            assert pair.reasons and pair.change_candidate
            seen.setdefault(pair.prior_study.study_instance_uid, set()).add(current_kind)
        assert seen, f"{person['person']}: no pairs"
        for kinds in seen.values():
            assert kinds == {"thin", "thick"}
        rejected = {
            d.uid for d in selection.decisions if d.subject == "series" and d.verdict == "rejected"
        }
        for study in person["studies"]:
            assert study["series"]["localizer"] in rejected | _other_studies(selection, study)
            assert study["series"]["dose_report"] in rejected | _other_studies(selection, study)


def _other_studies(selection: Any, study: dict[str, Any]) -> set[str]:
    # Series of studies the selection never looked at (outside the priors) are exempt.
    looked_at = {uid for p in selection.priors for uid in p.study.study_instance_uids}
    looked_at.update(selection.current.study_instance_uids)
    if study["study_instance_uid"] in looked_at:
        return set()
    return set(study["series"].values())


def test_link_decisions_in_catalog_and_provenance(
    env: Path,
    cohort_dir: Callable[[int], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from priors.pipeline import _seed_record
    from priors.provenance.record import ProvenanceRecord

    cohort = cohort_dir(0)
    truth = json.loads((cohort / "ground_truth.json").read_text())
    monkeypatch.setenv("PRIORS_HOME", str(tmp_path / "home"))
    settings = load_settings(None)
    plan = plan_job(
        _sources(cohort),
        settings=settings,
        issuers={},
        out_dir=tmp_path / "out",
        job_id="job-linkage-test",
    )

    stored = plan.catalog.link_decisions(job_id="job-linkage-test")
    assert stored
    person_of_key = {key: p["person"] for p in truth["persons"] for key in _truth_keys(p)}
    for row in stored:
        same = person_of_key[tuple(row["record_a"])] == person_of_key[tuple(row["record_b"])]
        assert row["linked"] == same
        assert row["evidence"]["decision"] in ("link", "blocked", "possible", "no_link")
        assert row["evidence"]["facts"] and "score" in row["evidence"]
        assert row["pseudonym"].startswith("P-")
    linked = {
        frozenset((tuple(r["record_a"]), tuple(r["record_b"]))) for r in stored if r["linked"]
    }
    for person in truth["persons"]:
        keys = _truth_keys(person)
        assert sum(1 for pair in linked if pair <= keys) >= len(keys) - 1

    assert plan.tasks
    identifiers = {key[1] for key in person_of_key} | {
        r["patient_name"] for p in truth["persons"] for r in p["records"]
    }
    for task in plan.tasks:
        record = ProvenanceRecord(job_id="job-linkage-test", person_pseudonym=task.person)
        _seed_record(record, task, task.pairs[0])
        document = record.to_dict()
        links = [d for d in document["link_decisions"] if d["decision"] == "link"]
        assert links, f"person {task.person}: no link decision in the pair's provenance"
        for decision in links:
            assert decision["evidence"] and decision["score"] >= 0.95
            assert all(r["patient_id_pseudonym"] for r in decision["records"])
        text = json.dumps(document)
        for value in identifiers:
            assert value not in text


def _rewrite_record(
    cohort: Path,
    person: dict[str, Any],
    record: dict[str, Any],
    change: Callable[[pydicom.Dataset], None],
) -> None:
    folders = [
        cohort / study["path"]
        for study in person["studies"]
        if (study["issuer"], study["patient_id"]) == (record["issuer"], record["patient_id"])
    ]
    assert folders
    for folder in folders:
        for path in sorted(folder.rglob("*.dcm")):
            ds = pydicom.dcmread(path)
            change(ds)
            ds.save_as(path, enforce_file_format=True)


def _folder_record(person: dict[str, Any], *, avoid: set[str] = frozenset()) -> dict[str, Any]:
    """Return a record of the person whose studies are all in site folders (not on CD)."""
    for record in person["records"]:
        studies = [s for s in person["studies"] if s["patient_id"] == record["patient_id"]]
        if record["site"] not in avoid and all(s["delivery"] == "folder" for s in studies):
            return record
    raise AssertionError(f"{person['person']} has no record outside the CD")


@pytest.fixture(scope="module")
def hard_cases(env: Path, cohort_dir: Callable[[int], Path]) -> dict[str, Any]:
    """Copy the seed-0 cohort and change three records into the hard cases."""
    cohort = env / "cohort-0-hard"
    shutil.copytree(cohort_dir(0), cohort)
    truth = json.loads((cohort / "ground_truth.json").read_text())
    swap_person, married_person, sex_person = truth["persons"][:3]

    swapped = _folder_record(swap_person)
    birth = swap_person["birth_date"]
    assert int(birth[6:8]) <= 12, "seed 0 birth day cannot be read as a month"
    assert birth[4:6] != birth[6:8], "seed 0 birth day equals its month"

    def swap(ds: pydicom.Dataset) -> None:
        ds.PatientBirthDate = birth[:4] + birth[6:8] + birth[4:6]

    _rewrite_record(cohort, swap_person, swapped, swap)

    married = _folder_record(married_person)
    family = _family_name(married_person)

    def marry(ds: pydicom.Dataset) -> None:
        name = str(ds.PatientName)
        for old, new in (
            (family.upper(), MARRIED_FAMILY_NAME.upper()),
            (family.title(), MARRIED_FAMILY_NAME),
            (family, MARRIED_FAMILY_NAME.lower()),
        ):
            name = name.replace(old, new)
        assert name != str(ds.PatientName)
        ds.PatientName = name

    _rewrite_record(cohort, married_person, married, marry)

    flipped = _folder_record(sex_person)

    def flip(ds: pydicom.Dataset) -> None:
        ds.PatientSex = "F" if ds.PatientSex == "M" else "M"

    _rewrite_record(cohort, sex_person, flipped, flip)

    def partner(person: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        return next(r for r in person["records"] if r["patient_id"] != record["patient_id"])

    table = env / "pix.csv"
    rows = ["issuer_a,id_a,issuer_b,id_b"]
    for person, record in ((married_person, married), (sex_person, flipped)):
        other = partner(person, record)
        rows.append(
            f"{record['issuer']},{record['patient_id']},{other['issuer']},{other['patient_id']}"
        )
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {
        "cohort": cohort, "truth": truth, "table": table,
        "swapped": (swapped["issuer"], swapped["patient_id"]),
        "married": (married["issuer"], married["patient_id"]),
        "flipped": (flipped["issuer"], flipped["patient_id"]),
    }  # fmt: skip


def _decisions_between(people: People, key: RecordKey, others: set[RecordKey]) -> list[Any]:
    records = people.linkage.records
    return [
        d for d in people.linkage.decisions
        if {records[d.records[0]].key, records[d.records[1]].key} & {key}
        and {records[d.records[0]].key, records[d.records[1]].key} - {key} <= others
    ]  # fmt: skip


def test_hard_cases_without_cross_reference(
    hard_cases: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    people, _ = _gather(hard_cases["cohort"], tmp_path / "home", monkeypatch)
    truth = hard_cases["truth"]
    by_key = {key: p for p in truth["persons"] for key in _truth_keys(p)}
    groups = _linked_groups(people)
    for name in ("swapped", "married", "flipped"):
        key = hard_cases[name]
        assert {key} in groups, f"the {name} record was linked on demographics alone"
    for name in ("swapped", "married"):
        key = hard_cases[name]
        partners = _truth_keys(by_key[key]) - {key}
        verdicts = {d.decision for d in _decisions_between(people, key, partners)}
        assert verdicts == {"possible"}, f"{name}: {verdicts}"
    key = hard_cases["flipped"]
    partners = _truth_keys(by_key[key]) - {key}
    assert {d.decision for d in _decisions_between(people, key, partners)} == {"blocked"}
    precision, recall = precision_recall([_truth_keys(p) for p in truth["persons"]], groups)
    assert precision == 1.0
    assert recall < 1.0


def test_hard_cases_with_cross_reference(
    hard_cases: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    people, _ = _gather(
        hard_cases["cohort"], tmp_path / "home", monkeypatch, cross_reference=hard_cases["table"]
    )
    truth = hard_cases["truth"]
    groups = _linked_groups(people)
    # The table links the married and the flipped record; the swap stays apart.
    expected = []
    for person in truth["persons"]:
        keys = _truth_keys(person)
        if hard_cases["swapped"] in keys:
            expected += [keys - {hard_cases["swapped"]}, {hard_cases["swapped"]}]
        else:
            expected.append(keys)
    assert sorted(map(sorted, groups)) == sorted(map(sorted, expected))
    assert precision_recall(expected, groups) == (1.0, 1.0)

    records = people.linkage.records
    by_source = {}
    for decision in people.linkage.decisions:
        keys = {records[i].key for i in decision.records}
        if decision.source == "cross_reference":
            by_source[frozenset(keys)] = decision
    assert len(by_source) == 2
    for decision in by_source.values():
        assert decision.decision == "link"
        assert decision.evidence[0] == "cross-reference table row"

    conflicts = [
        c for c in people.linkage.conflicts if c.kind == "cross_reference_contradicts_demographics"
    ]
    assert len(conflicts) == 1
    assert hard_cases["flipped"] in {records[i].key for i in conflicts[0].records}
    assert "sex different" in conflicts[0].detail


def test_cli_timeline_cross_reference(
    hard_cases: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from priors.cli import main

    monkeypatch.setenv("PRIORS_HOME", str(tmp_path / "home"))
    sources = [str(path) for path in _sources(hard_cases["cohort"])]
    assert (
        main(["timeline", *sources, "--json", "--cross-reference", str(hard_cases["table"])]) == 0
    )
    document = json.loads(capsys.readouterr().out)
    persons = document["persons"]
    assert len(persons) == len(hard_cases["truth"]["persons"]) + 1
    kinds = [c["kind"] for p in persons for c in p["conflicts"]]
    assert "cross_reference_contradicts_demographics" in kinds
    sources_of_links = {link["source"] for p in persons for link in p["links"]}
    assert "cross_reference" in sources_of_links
    # The day/month swap is offered for review, in both directions.
    assert sum(len(p["possible_matches"]) for p in persons) >= 2


@pytest.mark.parametrize(
    ("first", "second", "kind"),
    [
        ("rosa marchetti", "Brennick^Rosa^Q", "family_changed"),
        ("MARCHETTI^ROSA", "Brennick^Rosa^Q", "family_changed"),
        ("rosa marchetti", "rosa brennick", "different"),
        ("anna doe", "rosa doe", "different"),
        ("Doe^Anna", "Doe^Rosa", "different"),
    ],
)
def test_married_name_readings(first: str, second: str, kind: str) -> None:
    from priors.longitudinal.names import compare_names

    assert compare_names(first, second).kind == kind
