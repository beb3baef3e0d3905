"""A person's studies in time order, with duplicates across sources merged.

Two kinds of duplicate become one study:

- the same Study Instance UID reached through two sources: one study, with the
  locations of both;
- the same acquisition re-imported at another site under new UIDs: recognised when
  every series of one copy has a series in the other with the same set of
  ``pixel_sha256`` values and the same acquisition date and time. The study keeps both
  UID sets, and the copy with the most series (then the smallest UID) supplies the
  series used for selection.

Dates: the study's date is (0008,0020) Study Date, falling back in order to the
earliest Series Date, Acquisition Date and Content Date of its series. A date that is
missing, unreadable, before :data:`EARLIEST_PLAUSIBLE_DATE` or after the reference day
is skipped with a note. A study with no plausible date sorts last and is never a
current study or a prior.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from priors.longitudinal.linkage import Linkage
from priors.longitudinal.types import RecordKey, SeriesInfo, StudyInfo

__all__ = [
    "EARLIEST_PLAUSIBLE_DATE",
    "TimelineStudy",
    "build_timeline",
    "person_studies",
]

logger = logging.getLogger(__name__)

# DICOM dates before this are placeholders (19000101 and 00000000 are common defaults).
EARLIEST_PLAUSIBLE_DATE = dt.date(1900, 1, 2)
# Study Date and the earliest Acquisition Date further apart than this get a note.
DATE_DISAGREEMENT_DAYS = 1


@dataclass(frozen=True)
class TimelineStudy:
    """One study of a person, possibly seen through several sources or UIDs."""

    # The primary UID first, then the UIDs of re-imported copies.
    study_instance_uids: tuple[str, ...]
    date: dt.date | None
    # HHMMSS, "" when unknown.
    time: str
    # Attribute that gave the date: "study", "series", "acquisition", "content" or "none".
    date_source: str
    description: str
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    # The series of the primary copy.
    series: tuple[SeriesInfo, ...]
    locations: tuple[str, ...]
    source_ids: tuple[str, ...]
    institution_names: tuple[str, ...]
    record_keys: tuple[RecordKey, ...] = field(repr=False, default=())
    # Series Instance UID of the primary copy -> the UIDs of the same series elsewhere.
    duplicate_series: tuple[tuple[str, tuple[str, ...]], ...] = ()
    date_notes: tuple[str, ...] = ()
    # The UID sets of every copy, primary first.
    copies: tuple[tuple[str, ...], ...] = ()

    @property
    def study_instance_uid(self) -> str:
        """Return the primary Study Instance UID."""
        return self.study_instance_uids[0]

    @property
    def has_images(self) -> bool:
        """Return True when any series has instances present at a location."""
        return any(series.instance_count > 0 and series.locations for series in self.series)

    @property
    def sort_key(self) -> tuple[dt.date, str, str]:
        """Return (date, time, UID); undated studies sort after all dated ones."""
        return (self.date or dt.date.max, self.time, self.study_instance_uid)


def person_studies(linkage: Linkage, studies: Sequence[StudyInfo]) -> list[list[StudyInfo]]:
    """Distribute studies over the persons of a linkage, in the order of ``persons``.

    A study goes to the person holding its ``record_index``; when the index is unset
    (-1), to every person holding a record with its record key.
    """
    owners: dict[int, int] = {}
    for person_index, person in enumerate(linkage.persons):
        for record_index in person.record_indices:
            owners[record_index] = person_index
    grouped: list[list[StudyInfo]] = [[] for _ in linkage.persons]
    for study in studies:
        if study.record_index in owners:
            grouped[owners[study.record_index]].append(study)
            continue
        targets = {
            owners[i] for i, record in enumerate(linkage.records) if record.key == study.record_key
        }
        for person_index in sorted(targets):
            grouped[person_index].append(study)
    return grouped


def build_timeline(
    studies: Sequence[StudyInfo], *, reference_date: dt.date | None = None
) -> list[TimelineStudy]:
    """Merge one person's studies and order them by date and time.

    Parameters
    ----------
    studies
        The person's studies (see :func:`person_studies`).
    reference_date
        Dates after this day are implausible; today by default.

    Returns
    -------
    list of TimelineStudy
        Oldest first; studies without a plausible date last.
    """
    today = reference_date or dt.date.today()
    by_uid: dict[str, list[StudyInfo]] = defaultdict(list)
    for study in studies:
        by_uid[study.study_instance_uid].append(study)
    merged = [_merge_same_uid(copies) for _, copies in sorted(by_uid.items())]

    groups = _reimport_groups(merged)
    timeline = [_timeline_study([merged[i] for i in group], today) for group in groups]
    timeline.sort(key=lambda study: study.sort_key)
    logger.info(
        "timeline: %d study records, %d UIDs, %d studies after merging re-imports",
        len(studies),
        len(merged),
        len(timeline),
    )
    return timeline


def _merge_same_uid(copies: Sequence[StudyInfo]) -> StudyInfo:
    if len(copies) == 1:
        return copies[0]
    series: dict[str, SeriesInfo] = {}
    for copy in copies:
        for info in copy.series:
            series[info.series_instance_uid] = (
                _merge_series(series[info.series_instance_uid], info)
                if info.series_instance_uid in series
                else info
            )
    first = copies[0]
    return dataclasses.replace(
        first,
        series=tuple(series[uid] for uid in sorted(series, key=lambda u: _series_order(series[u]))),
        locations=_union(c.locations for c in copies),
        source_ids=_union(c.source_ids for c in copies),
        institution_names=_union(c.institution_names for c in copies),
        modalities=_union(c.modalities for c in copies),
        body_parts=_union(c.body_parts for c in copies),
    )


def _merge_series(a: SeriesInfo, b: SeriesInfo) -> SeriesInfo:
    return dataclasses.replace(
        a,
        instance_count=max(a.instance_count, b.instance_count),
        frame_count=max(a.frame_count, b.frame_count),
        pixel_sha256=a.pixel_sha256 | b.pixel_sha256,
        locations=_union((a.locations, b.locations)),
        source_ids=_union((a.source_ids, b.source_ids)),
    )


def _series_order(info: SeriesInfo) -> tuple[float, str]:
    number = info.series_number if info.series_number is not None else float("inf")
    return (number, info.series_instance_uid)


def _reimport_groups(studies: Sequence[StudyInfo]) -> list[list[int]]:
    parent = list(range(len(studies)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    # Only studies that share at least one pixel hash are compared.
    by_hash: dict[str, set[int]] = defaultdict(set)
    for index, study in enumerate(studies):
        for info in study.series:
            for digest in info.pixel_sha256:
                by_hash[digest].add(index)
    candidates = sorted(
        {(i, j) for members in by_hash.values() for i in members for j in members if i < j}
    )
    for i, j in candidates:
        if _same_acquisition(studies[i], studies[j]):
            parent[max(root(i), root(j))] = min(root(i), root(j))
    groups: dict[int, list[int]] = defaultdict(list)
    for index in range(len(studies)):
        groups[root(index)].append(index)
    return list(groups.values())


def _same_acquisition(a: StudyInfo, b: StudyInfo) -> bool:
    """Return True when every series of the smaller study is in the other."""
    smaller, larger = sorted((a, b), key=lambda s: len(s.series))
    hashed = [s for s in smaller.series if s.pixel_sha256]
    if not hashed or len(hashed) < len(smaller.series):
        return False
    for info in hashed:
        match = next((o for o in larger.series if o.pixel_sha256 == info.pixel_sha256), None)
        if match is None:
            return False
        if (info.acquisition_date, info.acquisition_time) != (
            match.acquisition_date,
            match.acquisition_time,
        ):
            return False
    return True


def _timeline_study(copies: Sequence[StudyInfo], today: dt.date) -> TimelineStudy:
    ordered = sorted(copies, key=lambda s: (-len(s.series), s.study_instance_uid))
    primary = ordered[0]
    date, time, source, notes = _study_date(primary, today)

    duplicates: list[tuple[str, tuple[str, ...]]] = []
    for info in primary.series:
        others = tuple(
            other.series_instance_uid
            for copy in ordered[1:]
            for other in copy.series
            if info.pixel_sha256 and other.pixel_sha256 == info.pixel_sha256
        )
        if others:
            duplicates.append((info.series_instance_uid, others))

    return TimelineStudy(
        study_instance_uids=tuple(c.study_instance_uid for c in ordered),
        date=date,
        time=time,
        date_source=source,
        description=primary.study_description,
        modalities=_union(c.modalities for c in ordered),
        body_parts=_union(c.body_parts for c in ordered),
        series=primary.series,
        locations=_union(c.locations for c in ordered),
        source_ids=_union(c.source_ids for c in ordered),
        institution_names=_union(c.institution_names for c in ordered),
        record_keys=tuple(sorted({c.record_key for c in ordered})),
        duplicate_series=tuple(duplicates),
        date_notes=notes,
        copies=tuple(
            (c.study_instance_uid, *(s.series_instance_uid for s in c.series)) for c in ordered
        ),
    )


def _study_date(
    study: StudyInfo, today: dt.date
) -> tuple[dt.date | None, str, str, tuple[str, ...]]:
    candidates = [("study", study.study_date, study.study_time)]
    for source, date_field, time_field in (
        ("series", "series_date", "series_time"),
        ("acquisition", "acquisition_date", "acquisition_time"),
        ("content", "content_date", "content_time"),
    ):
        values = sorted(
            (getattr(s, date_field), getattr(s, time_field))
            for s in study.series
            if getattr(s, date_field)
        )
        candidates.append((source, *values[0]) if values else (source, "", ""))

    notes: list[str] = []
    chosen: tuple[dt.date, str, str] | None = None
    for source, text, time_text in candidates:
        parsed = _parse_date(text)
        if parsed is None:
            notes.append(f"{source} date {'missing' if not text else f'{text!r} unreadable'}")
            continue
        if not EARLIEST_PLAUSIBLE_DATE <= parsed <= today:
            notes.append(f"{source} date {parsed.isoformat()} implausible")
            continue
        chosen = (parsed, _normalise_time(time_text), source)
        break
    if chosen is None:
        return None, "", "none", tuple(notes)

    acquisition = _parse_date(candidates[2][1])
    if acquisition and abs((acquisition - chosen[0]).days) > DATE_DISAGREEMENT_DAYS:
        notes.append(
            f"acquisition date {acquisition.isoformat()} differs from the "
            f"{chosen[2]} date {chosen[0].isoformat()}"
        )
    return chosen[0], chosen[1], chosen[2], tuple(notes)


def _parse_date(text: str) -> dt.date | None:
    digits = text.strip().replace(".", "").replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def _normalise_time(text: str) -> str:
    """Return HHMMSS from a TM value (fraction dropped, missing parts as zeros)."""
    whole = text.strip().split(".")[0].replace(":", "")
    if not whole.isdigit():
        return ""
    return whole[:6].ljust(6, "0")


def _union(groups) -> tuple[str, ...]:
    return tuple(sorted({value for group in groups for value in group if value}))
