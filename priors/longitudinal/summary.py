"""Summarize catalogued instances into patient records and studies.

:func:`summarize` is the layer's entry point: it applies the issuer rule, groups
instances by patient record, study and series, and reduces each series to the numbers
that prior selection compares (orientation, spacing, coverage along the slice normal).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from priors.longitudinal.types import (
    InstanceEntry,
    PatientRecord,
    RecordKey,
    SeriesInfo,
    StudyInfo,
)

__all__ = ["summarize"]

logger = logging.getLogger(__name__)

# Two orientations closer than this (largest difference of a direction cosine) are
# one orientation: headers print cosines with 5 to 8 decimals.
ORIENTATION_TOLERANCE = 1e-3
# Slice positions closer than this along the normal are one slice position (mm).
POSITION_TOLERANCE_MM = 0.01


def summarize(
    instances: Iterable[InstanceEntry],
) -> tuple[list[PatientRecord], list[StudyInfo]]:
    """Group instances into patient records and studies.

    The issuer of a record is (0010,0021) Issuer of Patient ID when present, else
    the issuer the Other Patient IDs Sequence gives for the same Patient ID, else the
    source's configured issuer, else the source identifier. One (issuer, Patient ID)
    with two different sets of demographics gives two records.

    Parameters
    ----------
    instances
        Objects with ``header``, ``source_id``, ``issuer``, ``location`` and
        ``pixel_sha256`` (see :class:`~priors.longitudinal.types.InstanceEntry`).

    Returns
    -------
    records, studies
        Records in order of first appearance; one study per Study Instance UID and
        record, with its series, sorted by Study Instance UID.
    """
    record_index: dict[tuple[str, str, str, str, str], int] = {}
    record_sources: list[list[str]] = []
    record_other_ids: list[set[tuple[str, str]]] = []
    record_demographics: list[tuple[str, str, str, str, str]] = []
    study_entries: dict[tuple[str, int], list[InstanceEntry]] = defaultdict(list)

    count = 0
    for entry in instances:
        count += 1
        header = entry.header
        issuer = _issuer_of(entry)
        patient_id = _text(header.patient_id)
        demographics = (
            issuer,
            patient_id,
            _text(header.patient_name),
            _text(header.patient_birth_date),
            _text(header.patient_sex).upper(),
        )
        index = record_index.get(demographics)
        if index is None:
            index = len(record_demographics)
            record_index[demographics] = index
            record_demographics.append(demographics)
            record_sources.append([])
            record_other_ids.append(set())
        if entry.source_id not in record_sources[index]:
            record_sources[index].append(entry.source_id)
        for other_id, other_issuer in header.other_patient_ids or ():
            pair = (_text(other_id), _text(other_issuer))
            if pair[0] and (pair[1], pair[0]) != (issuer, patient_id):
                record_other_ids[index].add(pair)
        study_entries[(_text(header.study_instance_uid), index)].append(entry)

    records = [
        PatientRecord(
            issuer=issuer,
            patient_id=patient_id,
            source_ids=tuple(record_sources[index]),
            patient_name=name,
            birth_date=birth_date,
            sex=sex,
            other_ids=tuple(sorted(record_other_ids[index])),
        )
        for index, (issuer, patient_id, name, birth_date, sex) in enumerate(record_demographics)
    ]
    studies = [
        _study_info(uid, records[index].key, index, entries)
        for (uid, index), entries in sorted(study_entries.items())
    ]
    logger.info(
        "summarized %d instances into %d patient records and %d studies",
        count,
        len(records),
        len(studies),
    )
    return records, studies


def _issuer_of(entry: InstanceEntry) -> str:
    header = entry.header
    issuer = _text(header.issuer_of_patient_id)
    if issuer:
        return issuer
    patient_id = _text(header.patient_id)
    for other_id, other_issuer in header.other_patient_ids or ():
        if _text(other_id) == patient_id and _text(other_issuer):
            return _text(other_issuer)
    return _text(entry.issuer) or _text(entry.source_id)


def _study_info(
    uid: str, key: RecordKey, index: int, entries: Sequence[InstanceEntry]
) -> StudyInfo:
    by_series: dict[str, list[InstanceEntry]] = defaultdict(list)
    for entry in entries:
        by_series[_text(entry.header.series_instance_uid)].append(entry)
    series = tuple(
        sorted(
            (_series_info(series_uid, members) for series_uid, members in by_series.items()),
            key=lambda info: (
                info.series_number if info.series_number is not None else math.inf,
                info.series_instance_uid,
            ),
        )
    )
    headers = [entry.header for entry in entries]
    return StudyInfo(
        study_instance_uid=uid,
        record_key=key,
        record_index=index,
        study_date=_mode(_text(h.study_date) for h in headers),
        study_time=_mode(_text(h.study_time) for h in headers),
        study_description=_mode(_text(h.study_description) for h in headers),
        modalities=tuple(sorted({s.modality for s in series if s.modality})),
        body_parts=tuple(sorted({s.body_part_examined for s in series if s.body_part_examined})),
        series=series,
        locations=_unique(entry.location for entry in entries),
        source_ids=_unique(entry.source_id for entry in entries),
        institution_names=_unique(_text(h.institution_name) for h in headers),
    )


def _series_info(uid: str, entries: Sequence[InstanceEntry]) -> SeriesInfo:
    headers = [entry.header for entry in entries]
    first = headers[0]
    orientations = [_floats(h.image_orientation_patient, 6) for h in headers]
    orientation = _main_orientation([o for o in orientations if o is not None])
    spacing = _mode_value(_floats(h.pixel_spacing, 2) for h in headers)
    spacing_value, coverage = _slice_geometry(headers, orientation)
    hashes = frozenset(e.pixel_sha256 for e in entries if e.pixel_sha256)
    acquisitions = sorted(
        (_text(h.acquisition_date), _text(h.acquisition_time))
        for h in headers
        if _text(h.acquisition_date) or _text(h.acquisition_time)
    )
    acquisition = acquisitions[0] if acquisitions else ("", "")
    return SeriesInfo(
        series_instance_uid=uid,
        study_instance_uid=_text(first.study_instance_uid),
        modality=_mode(_text(h.modality).upper() for h in headers),
        series_number=_to_int(first.series_number),
        series_description=_mode(_text(h.series_description) for h in headers),
        body_part_examined=_mode(_text(h.body_part_examined).upper() for h in headers),
        sop_class_uids=tuple(sorted({_text(h.sop_class_uid) for h in headers})),
        image_type=_mode_value(tuple(_text(v).upper() for v in h.image_type or ()) for h in headers)
        or (),
        frame_of_reference_uid=_mode(_text(h.frame_of_reference_uid) for h in headers),
        image_orientation_patient=orientation,
        orientation_count=_distinct_orientations([o for o in orientations if o is not None]),
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slice_thickness=_mode_value(_to_float(h.slice_thickness) for h in headers),
        spacing_between_slices=_mode_value(_to_float(h.spacing_between_slices) for h in headers),
        measured_slice_spacing=spacing_value,
        coverage_mm=coverage,
        rows=_mode_value(_to_int(h.rows) for h in headers),
        columns=_mode_value(_to_int(h.columns) for h in headers),
        instance_count=len({_text(h.sop_instance_uid) for h in headers}),
        frame_count=sum(max(_to_int(h.number_of_frames) or 1, 1) for h in _unique_headers(headers)),
        convolution_kernel=_mode(_kernel_text(h.convolution_kernel) for h in headers),
        contrast_bolus_agent=_mode(_text(h.contrast_bolus_agent) for h in headers),
        echo_time=_mode_value(_to_float(h.echo_time) for h in headers),
        repetition_time=_mode_value(_to_float(h.repetition_time) for h in headers),
        acquisition_date=acquisition[0],
        acquisition_time=acquisition[1],
        series_date=_mode(_text(h.series_date) for h in headers),
        series_time=_mode(_text(h.series_time) for h in headers),
        content_date=min((_text(h.content_date) for h in headers if h.content_date), default=""),
        content_time=min((_text(h.content_time) for h in headers if h.content_time), default=""),
        manufacturer=_mode(_text(h.manufacturer) for h in headers),
        manufacturer_model_name=_mode(_text(h.manufacturer_model_name) for h in headers),
        institution_name=_mode(_text(h.institution_name) for h in headers),
        station_name=_mode(_text(h.station_name) for h in headers),
        pixel_sha256=hashes,
        unhashed_count=sum(1 for e in entries if not e.pixel_sha256),
        locations=_unique(e.location for e in entries),
        source_ids=_unique(e.source_id for e in entries),
    )


def _unique_headers(headers: Sequence[Any]) -> list[Any]:
    # The same instance reached through two sources counts once.
    seen: dict[str, Any] = {}
    for header in headers:
        seen.setdefault(_text(header.sop_instance_uid), header)
    return list(seen.values())


def _slice_geometry(
    headers: Sequence[Any], orientation: tuple[float, ...] | None
) -> tuple[float | None, float | None]:
    """Return the median slice step and the extent along the slice normal, in mm."""
    if orientation is None:
        return None, None
    normal = _normal(orientation)
    projections: list[float] = []
    for header in headers:
        position = _floats(header.image_position_patient, 3)
        if position is not None:
            projections.append(sum(p * n for p, n in zip(position, normal, strict=True)))
    distinct: list[float] = []
    for value in sorted(projections):
        if not distinct or value - distinct[-1] > POSITION_TOLERANCE_MM:
            distinct.append(value)
    if not distinct:
        return None, None
    coverage = distinct[-1] - distinct[0]
    if len(distinct) < 2:
        return None, coverage
    steps = [b - a for a, b in zip(distinct, distinct[1:], strict=False)]
    return statistics.median(steps), coverage


def _normal(orientation: Sequence[float]) -> tuple[float, float, float]:
    """Return the unit slice normal (row cosine cross column cosine)."""
    r, c = orientation[:3], orientation[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    length = math.sqrt(sum(v * v for v in n)) or 1.0
    return (n[0] / length, n[1] / length, n[2] / length)


def _same_orientation(a: Sequence[float], b: Sequence[float]) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= ORIENTATION_TOLERANCE


def _orientation_groups(orientations: Sequence[tuple[float, ...]]) -> list[list[tuple[float, ...]]]:
    groups: list[list[tuple[float, ...]]] = []
    for orientation in orientations:
        for group in groups:
            if _same_orientation(group[0], orientation):
                group.append(orientation)
                break
        else:
            groups.append([orientation])
    return groups


def _main_orientation(orientations: Sequence[tuple[float, ...]]) -> tuple[float, ...] | None:
    groups = _orientation_groups(orientations)
    if not groups:
        return None
    return max(groups, key=len)[0]


def _distinct_orientations(orientations: Sequence[tuple[float, ...]]) -> int:
    return len(_orientation_groups(orientations))


def _kernel_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "\\".join(_text(v) for v in value)
    return _text(value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(value).strip()


def _to_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
        if value is None:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _to_int(value: Any) -> int | None:
    number = _to_float(value)
    return int(number) if number is not None else None


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        return None
    return numbers


def _mode(values: Iterable[str]) -> str:
    """Return the most frequent non-empty text, the smallest on a tie, or ""."""
    counts = Counter(v for v in values if v)
    if not counts:
        return ""
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]


def _mode_value(values: Iterable[Any]) -> Any:
    """Return the most frequent value that is not None or empty, first seen on a tie."""
    counts: Counter[Any] = Counter(v for v in values if v is not None and v != ())
    if not counts:
        return None
    return counts.most_common(1)[0][0]


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({v for v in values if v}))
