"""Longitudinal layer on real headers: the two spine CDs and pydicom's DICOMDIR set.

Headers are read here with pydicom into stand-ins for ``InstanceHeader``, so these
tests do not depend on the DICOM layer. Identifying values are read from the files and
never written into this module.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from priors.longitudinal import (
    build_timeline,
    link_records,
    person_studies,
    select_pairs,
    summarize,
)
from priors.longitudinal.report import explain_text, render_timeline_table, timeline_json
from priors.pseudonym import Pseudonymizer

pytestmark = pytest.mark.shared_data

# The spine CDs were produced in 2018; any later day works as the reference.
REFERENCE_DATE = dt.date(2025, 1, 1)


@dataclass
class Entry:
    header: Any
    source_id: str
    issuer: str
    location: str
    pixel_sha256: str | None


def _value(ds: pydicom.Dataset, keyword: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return value


def _header(ds: pydicom.Dataset) -> SimpleNamespace:
    other_ids = tuple(
        (str(item.get("PatientID", "")), str(item.get("IssuerOfPatientID", "")))
        for item in ds.get("OtherPatientIDsSequence", [])
    )
    fields = {
        name: _value(ds, keyword)
        for name, keyword in {
            "sop_class_uid": "SOPClassUID",
            "sop_instance_uid": "SOPInstanceUID",
            "study_instance_uid": "StudyInstanceUID",
            "series_instance_uid": "SeriesInstanceUID",
            "frame_of_reference_uid": "FrameOfReferenceUID",
            "patient_id": "PatientID",
            "issuer_of_patient_id": "IssuerOfPatientID",
            "patient_birth_date": "PatientBirthDate",
            "patient_sex": "PatientSex",
            "accession_number": "AccessionNumber",
            "study_date": "StudyDate",
            "study_time": "StudyTime",
            "series_date": "SeriesDate",
            "series_time": "SeriesTime",
            "acquisition_date": "AcquisitionDate",
            "acquisition_time": "AcquisitionTime",
            "content_date": "ContentDate",
            "content_time": "ContentTime",
            "modality": "Modality",
            "body_part_examined": "BodyPartExamined",
            "study_description": "StudyDescription",
            "series_description": "SeriesDescription",
            "series_number": "SeriesNumber",
            "instance_number": "InstanceNumber",
            "image_type": "ImageType",
            "image_position_patient": "ImagePositionPatient",
            "image_orientation_patient": "ImageOrientationPatient",
            "pixel_spacing": "PixelSpacing",
            "slice_thickness": "SliceThickness",
            "spacing_between_slices": "SpacingBetweenSlices",
            "rows": "Rows",
            "columns": "Columns",
            "number_of_frames": "NumberOfFrames",
            "convolution_kernel": "ConvolutionKernel",
            "contrast_bolus_agent": "ContrastBolusAgent",
            "echo_time": "EchoTime",
            "repetition_time": "RepetitionTime",
            "manufacturer": "Manufacturer",
            "manufacturer_model_name": "ManufacturerModelName",
            "institution_name": "InstitutionName",
            "station_name": "StationName",
        }.items()
    }
    fields["patient_name"] = str(ds.get("PatientName", ""))
    fields["other_patient_ids"] = other_ids
    return SimpleNamespace(**fields)


def read_entries(folder: Path, source_id: str) -> list[Entry]:
    """Read every DICOM file under a folder (DICOMDIR excluded) into stand-in entries."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            continue
        if "PixelData" not in ds:
            continue
        digest = hashlib.sha256(ds.PixelData).hexdigest()
        entries.append(Entry(_header(ds), source_id, "", str(path), digest))
    return entries


@pytest.fixture(scope="module")
def spine(shared_data: Path) -> SimpleNamespace:
    entries = read_entries(shared_data / "spine-cd-a", "cd-a") + read_entries(
        shared_data / "spine-cd-b", "cd-b"
    )
    records, studies = summarize(entries)
    linkage = link_records(records, pseudonymizer=Pseudonymizer(b"test-key"))
    grouped = person_studies(linkage, studies)
    timelines = [build_timeline(s, reference_date=REFERENCE_DATE) for s in grouped]
    selections = [select_pairs(t) for t in timelines]
    return SimpleNamespace(
        records=records,
        studies=studies,
        linkage=linkage,
        timelines=timelines,
        selections=selections,
    )


def _series_number(series: Any) -> int | None:
    return series.series_number


def test_spine_records_link_as_one_person(spine: SimpleNamespace) -> None:
    assert len(spine.records) == 2
    assert spine.records[0].patient_id != spine.records[1].patient_id
    assert len(spine.linkage.persons) == 1
    links = [d for d in spine.linkage.decisions if d.decision == "link"]
    assert len(links) == 1
    assert links[0].source == "demographics"
    assert "birth date equal" in links[0].evidence
    assert not spine.linkage.conflicts


def test_spine_reimported_study_appears_once(spine: SimpleNamespace) -> None:
    timeline = spine.timelines[0]
    assert [s.date for s in timeline] == [dt.date(2018, 1, 7), dt.date(2018, 1, 13)]
    first = timeline[0]
    assert len(first.study_instance_uids) == 2
    assert len(first.copies) == 2
    assert len(first.duplicate_series) == 5
    assert set(first.source_ids) == {"cd-a", "cd-b"}
    assert len(first.locations) == 134


def test_spine_sagittal_pairs(spine: SimpleNamespace) -> None:
    selection = spine.selections[0]
    assert selection.current.date == dt.date(2018, 1, 13)
    pairs = {p.current_series.series_number: p.prior_series.series_number for p in selection.pairs}
    assert pairs[4001] == 6
    assert pairs[5001] == 7
    assert all(p.change_candidate for p in selection.pairs)


def test_spine_locator_rejected(spine: SimpleNamespace) -> None:
    selection = spine.selections[0]
    assert 3001 not in {p.current_series.series_number for p in selection.pairs}
    locator = [
        d
        for d in selection.decisions
        if d.subject == "series" and d.reason.startswith("series 3001 ")
    ]
    assert len(locator) == 1
    assert "locator" in locator[0].reason
    assert locator[0].values["slices"] == 5


def test_spine_axial_not_paired_with_sagittal(spine: SimpleNamespace) -> None:
    selection = spine.selections[0]
    sagittal = {6, 7, 12}
    for pair in selection.pairs:
        if pair.current_series.series_number == 6001:
            assert pair.prior_series.series_number not in sagittal
        if pair.prior_series.series_number in (8, 9):
            assert pair.current_series.series_number == 6001


def test_spine_derived_secondary_kept(spine: SimpleNamespace) -> None:
    prior = spine.timelines[0][0]
    assert all(s.image_type[:2] == ("DERIVED", "SECONDARY") for s in prior.series)
    rejected = {d.uid for d in spine.selections[0].decisions if d.subject == "series"}
    assert not rejected & {s.series_instance_uid for s in prior.series}


def test_spine_json_has_no_identifiers(spine: SimpleNamespace, shared_data: Path) -> None:
    import json

    document = timeline_json(
        spine.linkage, spine.timelines, spine.selections, Pseudonymizer(b"test-key")
    )
    text = json.dumps(document, ensure_ascii=False)
    person = document["persons"][0]
    assert len(person["records"]) == 2
    assert person["links"][0]["decision"] == "link"
    assert [s["date"] for s in person["studies"]] == ["2018-01-07", "2018-01-13"]
    assert len(person["studies"][0]["study_instance_uids"]) == 2
    assert {p["current"]["series_instance_uid"] for p in person["pairs"]}
    for record in spine.records:
        assert record.patient_id not in text
        assert record.birth_date not in text
        for group in record.patient_name.split("="):
            assert group not in text
    table = render_timeline_table(spine.timelines[0])
    assert "2018-01-07" in table
    explanation = explain_text(spine.linkage, spine.selections)
    assert "locator" in explanation
    for record in spine.records:
        assert record.patient_id not in table + explanation


def test_pydicom_dicomdir_timeline() -> None:
    data = pytest.importorskip("pydicom.data")
    try:
        dicomdir = Path(data.get_testdata_file("DICOMDIR"))
    except (OSError, ValueError) as err:  # pragma: no cover - depends on the install
        pytest.skip(f"pydicom's DICOMDIR test file is not available offline: {err}")
    entries = read_entries(dicomdir.parent, "pydicom-dicomdir")
    records, studies = summarize(entries)
    linkage = link_records(records)
    grouped = person_studies(linkage, studies)
    timelines = [build_timeline(s, reference_date=REFERENCE_DATE) for s in grouped]

    assert len(linkage.persons) == 2
    sizes = sorted(len(t) for t in timelines)
    assert sizes == [2, 4]
    for timeline in timelines:
        dates = [s.date for s in timeline]
        assert dates == sorted(dates)
    selections = [select_pairs(t) for t in timelines]
    for selection in selections:
        assert selection.current is not None
        assert selection.current.date == max(s.date for s in timelines[selections.index(selection)])


def test_spine_with_instance_header(shared_data: Path) -> None:
    header_module = pytest.importorskip("priors.dicom.header")
    entries = []
    for folder, source in (("spine-cd-a", "cd-a"), ("spine-cd-b", "cd-b")):
        for entry in read_entries(shared_data / folder, source):
            header = header_module.read_header(entry.location)
            entries.append(Entry(header, source, "", entry.location, entry.pixel_sha256))
    records, studies = summarize(entries)
    linkage = link_records(records, studies=studies)
    assert len(linkage.persons) == 1
    timeline = build_timeline(person_studies(linkage, studies)[0], reference_date=REFERENCE_DATE)
    assert len(timeline) == 2
    pairs = {
        p.current_series.series_number: p.prior_series.series_number
        for p in select_pairs(timeline).pairs
    }
    assert pairs[4001] == 6
    assert pairs[5001] == 7
