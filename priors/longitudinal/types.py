"""Records the longitudinal layer reads: patient records, series and studies.

The pipeline builds these from the catalog with :func:`priors.longitudinal.summarize`.
They hold no pixels, only the header values that linkage, the timeline and prior
selection compare, already converted to numbers where a comparison is numeric.
Identifying fields (name, Patient ID, birth date) are left out of ``repr`` so that a
record printed in a log or a traceback shows no clear identifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "InstanceEntry",
    "PatientRecord",
    "RecordKey",
    "SeriesInfo",
    "StudyInfo",
]

# (issuer, Patient ID): the identity of one patient record.
RecordKey = tuple[str, str]


class InstanceEntry(Protocol):
    """One catalogued instance as :func:`summarize` reads it.

    ``header`` is an ``InstanceHeader`` or any object with the same attribute names.
    ``issuer`` is the source's configured issuer and may be empty. ``pixel_sha256``
    is ``None`` when the pixel data was not hashed.
    """

    header: Any
    source_id: str
    issuer: str
    location: str
    pixel_sha256: str | None


@dataclass(frozen=True)
class PatientRecord:
    """Demographics that one issuer records under one Patient ID.

    When one (issuer, Patient ID) carries two different sets of demographics,
    :func:`summarize` returns one record for each set, and linkage reports the
    conflict.
    """

    issuer: str
    patient_id: str = field(repr=False)
    source_ids: tuple[str, ...] = ()
    # Decoded (0010,0010) Patient's Name, with "=" between component groups.
    patient_name: str = field(default="", repr=False)
    # (0010,0030) Patient's Birth Date as stored (YYYYMMDD), "" when absent.
    birth_date: str = field(default="", repr=False)
    sex: str = ""
    # (Patient ID, issuer) pairs from (0010,1002) Other Patient IDs Sequence.
    other_ids: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def key(self) -> RecordKey:
        """Return the record's (issuer, Patient ID)."""
        return (self.issuer, self.patient_id)


@dataclass(frozen=True)
class SeriesInfo:
    """Header summary of one series for prior selection, as numbers where possible."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    series_number: int | None = None
    series_description: str = ""
    body_part_examined: str = ""
    sop_class_uids: tuple[str, ...] = ()
    # The most frequent (0008,0008) Image Type of the series.
    image_type: tuple[str, ...] = ()
    frame_of_reference_uid: str = ""
    # The most frequent (0020,0037) Image Orientation (Patient): row then column cosines.
    image_orientation_patient: tuple[float, ...] | None = None
    # Distinct orientations among the instances; above 1 for angled blocks or 3-plane scouts.
    orientation_count: int = 0
    # (row spacing, column spacing) in mm, from (0028,0030) Pixel Spacing.
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    # (0018,0088) Spacing Between Slices as stored, which may contradict the positions.
    spacing_between_slices: float | None = None
    # Median step between distinct slice positions along the slice normal, mm.
    measured_slice_spacing: float | None = None
    # Extent of the slice positions along the slice normal (last minus first), mm.
    coverage_mm: float | None = None
    rows: int | None = None
    columns: int | None = None
    instance_count: int = 0
    # Slices: frames summed over instances (1 per single-frame instance).
    frame_count: int = 0
    convolution_kernel: str = ""
    contrast_bolus_agent: str = ""
    echo_time: float | None = None
    repetition_time: float | None = None
    # Earliest acquisition date and time of the instances, as stored.
    acquisition_date: str = ""
    acquisition_time: str = ""
    series_date: str = ""
    series_time: str = ""
    content_date: str = ""
    content_time: str = ""
    manufacturer: str = ""
    manufacturer_model_name: str = ""
    institution_name: str = ""
    station_name: str = ""
    pixel_sha256: frozenset[str] = frozenset()
    # Instances whose pixel data has no hash yet.
    unhashed_count: int = 0
    locations: tuple[str, ...] = ()
    source_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class StudyInfo:
    """One Study Instance UID of one patient record, gathered over every source."""

    study_instance_uid: str
    record_key: RecordKey = field(repr=False)
    # Index into the record list :func:`summarize` returned alongside this study.
    record_index: int = -1
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    series: tuple[SeriesInfo, ...] = ()
    locations: tuple[str, ...] = ()
    source_ids: tuple[str, ...] = ()
    institution_names: tuple[str, ...] = ()

    @property
    def instance_count(self) -> int:
        """Return the number of instances over all series."""
        return sum(series.instance_count for series in self.series)
