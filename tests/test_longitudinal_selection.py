"""Timeline and prior selection on studies and series built in the test."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from priors.config import SelectionSettings
from priors.longitudinal import (
    SelectionRules,
    SeriesInfo,
    StudyInfo,
    build_timeline,
    select_pairs,
)
from priors.longitudinal.bodypart import regions_of
from priors.longitudinal.series import (
    kernel_class,
    mr_weighting,
    orientation_class,
    unusable_reason,
)

REFERENCE_DATE = dt.date(2025, 1, 1)
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def series(uid: str, study: str, **kw) -> SeriesInfo:
    values = dict(
        modality="CT",
        series_number=1,
        sop_class_uids=(CT_IMAGE,),
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        image_orientation_patient=AXIAL,
        orientation_count=1,
        slice_thickness=5.0,
        measured_slice_spacing=5.0,
        coverage_mm=300.0,
        instance_count=61,
        frame_count=61,
        convolution_kernel="B30f",
        acquisition_date="",
        locations=(f"/data/{uid}",),
        source_ids=("site",),
    )
    values.update(kw)
    return SeriesInfo(series_instance_uid=uid, study_instance_uid=study, **values)


def study(uid: str, date: str, members: list[SeriesInfo], **kw) -> StudyInfo:
    values = dict(
        record_key=("SITE", "1"),
        record_index=0,
        study_date=date,
        study_time="120000",
        study_description="CT CHEST",
        modalities=tuple(sorted({s.modality for s in members})),
        body_parts=(),
        series=tuple(dataclasses.replace(s, study_instance_uid=uid) for s in members),
        locations=tuple(loc for s in members for loc in s.locations),
        source_ids=("site",),
    )
    values.update(kw)
    return StudyInfo(study_instance_uid=uid, **values)


def chest_ct(uid: str, date: str, **kw) -> StudyInfo:
    return study(
        uid,
        date,
        [
            series(f"{uid}.1", uid, series_number=1, convolution_kernel="B30f"),
            series(
                f"{uid}.2",
                uid,
                series_number=2,
                convolution_kernel="B70f",
                slice_thickness=1.0,
                measured_slice_spacing=1.0,
                instance_count=300,
                frame_count=300,
            ),
        ],
        **kw,
    )


def timeline(*studies: StudyInfo):
    return build_timeline(list(studies), reference_date=REFERENCE_DATE)


def test_kernel_and_thickness_pairs() -> None:
    selection = select_pairs(timeline(chest_ct("1.1", "20200101"), chest_ct("1.2", "20240101")))
    pairs = {
        p.current_series.series_instance_uid: p.prior_series.series_instance_uid
        for p in selection.pairs
    }
    assert pairs == {"1.2.1": "1.1.1", "1.2.2": "1.1.2"}
    assert selection.current.study_instance_uid == "1.2"


def test_baseline_and_most_recent_kept() -> None:
    studies = [chest_ct(f"1.{year}", f"{year}0101") for year in range(2016, 2025)]
    selection = select_pairs(timeline(*studies), rules=SelectionRules(max_priors=3))
    roles = {p.study.date.year: p.role for p in selection.priors}
    assert roles == {2016: "baseline", 2023: "most recent", 2022: "interval"}
    dropped = [d for d in selection.decisions if "beyond max_priors" in d.reason]
    assert len(dropped) == 5


def test_lookback_window() -> None:
    rules = SelectionRules(lookback_years=2)
    selection = select_pairs(
        timeline(chest_ct("1.1", "20150101"), chest_ct("1.2", "20240101")), rules=rules
    )
    assert selection.priors == []
    assert any("lookback" in d.reason for d in selection.decisions)


def test_rules_from_settings() -> None:
    rules = SelectionRules.from_settings(SelectionSettings(max_priors=1), min_coverage_ratio=0.8)
    assert rules.max_priors == 1
    assert rules.min_coverage_ratio == 0.8
    assert rules.family_of("MR") == "MR"


def test_body_region_not_relevant() -> None:
    head = chest_ct("1.1", "20200101", study_description="CT HEAD")
    selection = select_pairs(timeline(head, chest_ct("1.2", "20240101")))
    assert selection.priors == []
    assert any(d.reason == "body region not relevant" for d in selection.decisions)


def test_cross_modality_context() -> None:
    mr = study(
        "1.1",
        "20200101",
        [
            series(
                "1.1.1",
                "1.1",
                modality="MR",
                sop_class_uids=(MR_IMAGE,),
                series_description="T2 AX",
                repetition_time=4000.0,
                echo_time=100.0,
                convolution_kernel="",
            )
        ],
        study_description="MRT Thorax",
    )
    selection = select_pairs(timeline(mr, chest_ct("1.2", "20240101")))
    assert [p.role for p in selection.priors] == ["context"]
    assert not selection.priors[0].change_candidate
    assert selection.pairs
    assert not any(p.change_candidate for p in selection.pairs)


def test_undated_study_never_current() -> None:
    selection = select_pairs(timeline(chest_ct("1.1", "20200101"), chest_ct("1.2", "")))
    assert selection.current.study_instance_uid == "1.1"


def test_named_current_study() -> None:
    studies = timeline(chest_ct("1.1", "20200101"), chest_ct("1.2", "20240101"))
    selection = select_pairs(studies, current_study_uid="1.1")
    assert selection.priors == []
    with pytest.raises(ValueError, match="current Study Instance UID 9.9 is not among"):
        select_pairs(studies, current_study_uid="9.9")


def test_date_fallback_and_implausible() -> None:
    fallback = chest_ct("1.1", "", study_time="")
    fallback = dataclasses.replace(
        fallback,
        series=tuple(
            dataclasses.replace(s, series_date="20190505", series_time="0800")
            for s in fallback.series
        ),
    )
    future = chest_ct("1.2", "20990101")
    studies = timeline(fallback, future)
    assert studies[0].date == dt.date(2019, 5, 5)
    assert studies[0].date_source == "series"
    assert studies[0].time == "080000"
    assert studies[1].date is None
    assert "study date 2099-01-01 implausible" in studies[1].date_notes


def test_same_uid_two_sources_merged() -> None:
    a = chest_ct("1.1", "20200101", source_ids=("site-a",), locations=("/a",))
    b = chest_ct("1.1", "20200101", source_ids=("site-b",), locations=("/b",))
    studies = timeline(a, b)
    assert len(studies) == 1
    assert studies[0].source_ids == ("site-a", "site-b")
    assert studies[0].study_instance_uids == ("1.1",)


def test_reimport_needs_matching_acquisition() -> None:
    hashed = [
        series("1.1.1", "1.1", pixel_sha256=frozenset({"h1", "h2"}), acquisition_time="101010"),
    ]
    copy = [
        series("2.1.1", "2.1", pixel_sha256=frozenset({"h1", "h2"}), acquisition_time="101010"),
    ]
    other_time = [
        series("3.1.1", "3.1", pixel_sha256=frozenset({"h1", "h2"}), acquisition_time="111111"),
    ]
    merged = timeline(study("1.1", "20200101", hashed), study("2.1", "20200101", copy))
    assert len(merged) == 1
    assert set(merged[0].study_instance_uids) == {"1.1", "2.1"}
    apart = timeline(study("1.1", "20200101", hashed), study("3.1", "20200101", other_time))
    assert len(apart) == 2


@pytest.mark.parametrize(
    ("changes", "label"),
    [
        ({"sop_class_uids": (SECONDARY_CAPTURE,)}, "Secondary Capture SOP class"),
        ({"image_type": ("DERIVED", "SECONDARY", "MIP")}, "derived view (MIP)"),
        ({"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}, "derived view (LOCALIZER)"),
        ({"series_description": "Dose Report"}, "derived view (Dose Report)"),
        ({"sop_class_uids": ("1.2.840.10008.5.1.4.1.1.88.67",)}, "X-Ray Radiation Dose SR"),
        ({"sop_class_uids": ("1.2.840.10008.5.1.4.1.1.11.1",)}, "presentation state"),
        ({"sop_class_uids": ("1.2.840.10008.5.1.4.1.1.1",)}, "projection radiograph"),
        (
            {
                "image_type": ("DERIVED", "SECONDARY"),
                "convolution_kernel": "",
                "acquisition_time": "",
            },
            "without acquisition attributes",
        ),
        ({"instance_count": 3, "frame_count": 3}, "3 slices (fewer than 6)"),
    ],
)
def test_unusable_series(changes: dict, label: str) -> None:
    reason = unusable_reason(series("1.1.1", "1.1", **changes))
    assert reason is not None
    assert label in reason.basis


def test_derived_secondary_with_acquisition_usable() -> None:
    reimported = series(
        "1.1.1",
        "1.1",
        image_type=("DERIVED", "SECONDARY", "OTHER"),
        convolution_kernel="B30f",
    )
    assert unusable_reason(reimported) is None


def test_classifiers() -> None:
    assert (
        orientation_class(series("1", "1", image_orientation_patient=SAGITTAL)).label == "sagittal"
    )
    assert orientation_class(series("1", "1", image_orientation_patient=CORONAL)).label == "coronal"
    oblique = (1.0, 0.0, 0.0, 0.0, 0.6, -0.8)
    assert orientation_class(series("1", "1", image_orientation_patient=oblique)).label == "oblique"
    assert kernel_class(series("1", "1", convolution_kernel="LUNG")).label == "sharp"
    assert kernel_class(series("1", "1", convolution_kernel="STANDARD")).label == "soft"
    assert kernel_class(series("1", "1", convolution_kernel="FC51")).label == "sharp"
    t1 = series("1", "1", modality="MR", repetition_time=500.0, echo_time=12.0)
    assert mr_weighting(t1).label == "T1"
    stir = series("1", "1", modality="MR", series_description="STIR SAG", repetition_time=3300.0)
    assert mr_weighting(stir).label == "STIR"


@pytest.mark.parametrize(
    ("text", "region"),
    [
        ("CT Thorax", "CHEST"),
        ("TC de tórax", "CHEST"),
        ("胸部CT", "CHEST"),
        ("L-SPINE MRI", "LSPINE"),
        ("腰椎 MRI", "LSPINE"),
        ("MRT LWS", "LSPINE"),
        ("MR Brain", "HEAD"),
        ("頭部MRI", "HEAD"),
        ("thoracic spine", "TSPINE"),
    ],
)
def test_region_keywords(text: str, region: str) -> None:
    assert regions_of([], [text]) == {region}
