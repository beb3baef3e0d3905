"""Identity linkage and name normalisation on records built in the test.

All names, IDs and dates here are invented.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from priors.longitudinal import PatientRecord, StudyInfo, link_records, read_cross_reference
from priors.longitudinal.names import compare_names, normalise_name
from priors.pseudonym import Pseudonymizer


def record(issuer: str, patient_id: str, name: str, birth: str, sex: str, **kw) -> PatientRecord:
    return PatientRecord(
        issuer=issuer,
        patient_id=patient_id,
        source_ids=(issuer.lower(),),
        patient_name=name,
        birth_date=birth,
        sex=sex,
        **kw,
    )


def decision_for(linkage, i: int, j: int):
    found = [d for d in linkage.decisions if d.records == (i, j)]
    return found[0] if found else None


@pytest.mark.parametrize(
    ("first", "second", "kind"),
    [
        ("Müller^José", "MULLER^JOSE", "same"),
        ("Doe^John", "JOHN DOE", "same"),
        ("Doe^John^Paul", "Doe^John", "middle"),
        ("Doe^John", "Doe^Jon", "one_char"),
        ("Doe^Anna", "Smith^Anna", "family_changed"),
        ("Doe^Anna", "Doe^Emma", "different"),
        ("ﾔﾏﾀﾞ^ﾀﾛｳ", "ヤマダ^タロウ", "same"),
        ("やまだ^たろう", "ヤマダ^タロウ", "same"),
        ("YAMADA TARO=山田\u3000太郎=ﾔﾏﾀﾞ ﾀﾛｳ", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎", "same"),
        ("YAMADA^TARO", "山田^太郎", "no_common_script"),
    ],
)
def test_compare_names_kinds(first: str, second: str, kind: str) -> None:
    assert compare_names(first, second).kind == kind


def test_normalise_name_scripts() -> None:
    forms = normalise_name("YAMADA TARO=山田\u3000太郎=ﾔﾏﾀﾞ ﾀﾛｳ")
    assert set(forms) == {"latin", "han", "kana"}
    assert forms["kana"].tokens == ("ヤマダ", "タロウ")
    assert forms["han"].tokens == ("山田", "太郎")
    assert not forms["latin"].family_known


def test_twins_not_linked() -> None:
    records = [
        record("SITE-A", "100", "Doe^Anna", "20010304", "F"),
        record("SITE-B", "900", "Doe^Emma", "20010304", "F"),
    ]
    linkage = link_records(records)
    assert len(linkage.persons) == 2
    assert decision_for(linkage, 0, 1) is None


def test_middle_name_links() -> None:
    records = [
        record("SITE-A", "100", "Doe^John^Paul", "19800101", "M"),
        record("SITE-B", "900", "DOE^JOHN", "19800101", "M"),
    ]
    linkage = link_records(records)
    assert len(linkage.persons) == 1
    assert decision_for(linkage, 0, 1).decision == "link"


def test_married_name_only_possible() -> None:
    records = [
        record("SITE-A", "100", "Doe^Anna", "19800101", "F"),
        record("SITE-B", "900", "Smith^Anna", "19800101", "F"),
    ]
    linkage = link_records(records)
    assert len(linkage.persons) == 2
    decision = decision_for(linkage, 0, 1)
    assert decision.decision == "possible"
    assert any("family name changed" in e for e in decision.evidence)


def test_day_month_swap_only_possible() -> None:
    records = [
        record("SITE-A", "100", "Doe^John", "19800304", "M"),
        record("SITE-B", "900", "Doe^John", "19800403", "M"),
    ]
    linkage = link_records(records)
    assert len(linkage.persons) == 2
    decision = decision_for(linkage, 0, 1)
    assert decision.decision == "possible"
    assert "birth date day/month swapped" in decision.evidence


def test_one_character_name_only_possible() -> None:
    records = [
        record("SITE-A", "100", "Doe^John", "19800304", "M"),
        record("SITE-B", "900", "Doe^Jon", "19800304", "M"),
    ]
    linkage = link_records(records)
    assert len(linkage.persons) == 2
    assert decision_for(linkage, 0, 1).decision == "possible"


@pytest.mark.parametrize(("birth", "sex"), [("19800304", "F"), ("19810304", "M")])
def test_sex_or_birth_date_blocks(birth: str, sex: str) -> None:
    records = [
        record("SITE-A", "100", "Doe^John", "19800304", "M"),
        record("SITE-B", "900", "Doe^John", birth, sex),
    ]
    linkage = link_records(records)
    assert len(linkage.persons) == 2
    assert decision_for(linkage, 0, 1).decision == "blocked"


def test_same_id_two_issuers_not_linked() -> None:
    records = [
        record("SITE-A", "crlab", "Doe^John", "19800304", "M"),
        record("SITE-B", "crlab", "Roe^Richard", "19700101", "M"),
    ]
    linkage = link_records(records)
    assert len(linkage.persons) == 2
    assert not linkage.conflicts


def test_same_id_one_issuer_two_people_conflict() -> None:
    records = [
        record("SITE-A", "100", "Doe^John", "19800304", "M"),
        record("SITE-A", "100", "Roe^Mary", "19700101", "F"),
    ]
    linkage = link_records(records)
    assert len(linkage.persons) == 2
    assert [c.kind for c in linkage.conflicts] == ["patient_id_reused"]
    assert all(person.conflicts == (0,) for person in linkage.persons)


def test_same_id_one_issuer_name_variants_link() -> None:
    records = [
        record("SITE-A", "100", "Doe^John", "19800304", "M"),
        record("SITE-A", "100", "DOE^JOHN^^^", "19800304", "M"),
    ]
    linkage = link_records(records)
    assert len(linkage.persons) == 1
    assert decision_for(linkage, 0, 1).source == "same_record"


def test_other_patient_ids_link() -> None:
    records = [
        record("SITE-A", "100", "Doe^John", "19800304", "M", other_ids=(("900", "SITE-B"),)),
        record("SITE-B", "900", "", "", ""),
    ]
    linkage = link_records(records)
    assert len(linkage.persons) == 1
    assert decision_for(linkage, 0, 1).source == "other_patient_ids"


def test_other_patient_ids_contradiction_blocks() -> None:
    records = [
        record("SITE-A", "100", "Doe^John", "19800304", "M", other_ids=(("900", "SITE-B"),)),
        record("SITE-B", "900", "Roe^Mary", "19700101", "F"),
    ]
    linkage = link_records(records)
    assert len(linkage.persons) == 2
    assert [c.kind for c in linkage.conflicts] == ["other_ids_contradict_demographics"]


def test_cross_reference_overrides_and_reports(tmp_path: Path) -> None:
    table = tmp_path / "xref.csv"
    table.write_text("issuer_a,id_a,issuer_b,id_b\nSITE-A,100,SITE-B,900\n", encoding="utf-8")
    records = [
        record("SITE-A", "100", "Doe^John", "19800304", "M"),
        record("SITE-B", "900", "Doe^John", "19800403", "F"),
    ]
    linkage = link_records(records, cross_reference=read_cross_reference(table))
    assert len(linkage.persons) == 1
    assert decision_for(linkage, 0, 1).source == "cross_reference"
    assert [c.kind for c in linkage.conflicts] == ["cross_reference_contradicts_demographics"]


def test_cross_reference_bad_row(tmp_path: Path) -> None:
    table = tmp_path / "xref.csv"
    table.write_text("SITE-A,100,SITE-B\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"xref.csv: line 1 has 3 columns, expected 4"):
        read_cross_reference(table)


def test_transitive_disagreement_reported() -> None:
    records = [
        record("SITE-A", "100", "Doe^John", "19800304", "M"),
        record("SITE-B", "900", "Doe^John", "19800304", "M"),
        record("SITE-C", "500", "Doe^John", "19800304", "F"),
    ]
    linkage = link_records(records, cross_reference=[("SITE-B", "900", "SITE-C", "500")])
    assert len(linkage.persons) == 1
    kinds = sorted(c.kind for c in linkage.conflicts)
    assert kinds == ["cross_reference_contradicts_demographics", "linked_records_disagree"]


def test_pseudonym_from_smallest_record() -> None:
    records = [
        record("SITE-B", "900", "Doe^John", "19800304", "M"),
        record("SITE-A", "100", "Doe^John", "19800304", "M"),
    ]
    pseudonymizer = Pseudonymizer(b"k")
    linkage = link_records(records, pseudonymizer=pseudonymizer)
    assert linkage.persons[0].pseudonym == pseudonymizer.person([("SITE-A", "100")])


def test_record_repr_hides_identifiers() -> None:
    text = repr(record("SITE-A", "100", "Doe^John", "19800304", "M"))
    assert "100" not in text
    assert "Doe" not in text
    assert "19800304" not in text


def shared_study(uid: str, index: int, key: tuple[str, str]) -> StudyInfo:
    return StudyInfo(study_instance_uid=uid, record_key=key, record_index=index)


def test_shared_study_uid_links() -> None:
    records = [record("cd-a", "100", "", "", ""), record("cd-b", "100", "", "", "")]
    studies = [shared_study("1.2.3", 0, records[0].key), shared_study("1.2.3", 1, records[1].key)]
    linkage = link_records(records, studies=studies)
    assert len(linkage.persons) == 1
    assert decision_for(linkage, 0, 1).source == "shared_study_uid"


def test_shared_study_uid_contradiction() -> None:
    records = [
        record("cd-a", "100", "Doe^John", "19800304", "M"),
        record("cd-b", "200", "Roe^Mary", "19700101", "F"),
    ]
    studies = [shared_study("1.2.3", 0, records[0].key), shared_study("1.2.3", 1, records[1].key)]
    linkage = link_records(records, studies=studies)
    assert len(linkage.persons) == 2
    assert [c.kind for c in linkage.conflicts] == ["study_uid_shared_by_different_people"]
