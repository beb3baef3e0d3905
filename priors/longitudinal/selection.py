"""Choose a current study's relevant priors and pair comparable series.

Study level: a prior must be dated before the current study, inside the lookback
window and relevant by body region. Priors of the current study's modality family are
change-model candidates. At most ``max_priors`` of them are kept, and the baseline (the
oldest relevant) and the most recent are kept first. A prior of another modality whose
body region matches is kept as context and never becomes a change pair.

Series level: each usable current series is paired with the closest usable series of
each kept prior that has the same orientation class, the same MR weighting or CT kernel
and thickness class, the same contrast phase where readable, and enough coverage along
the slice normal. Every choice and rejection is recorded with its reason and values.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from priors.longitudinal.bodypart import DEFAULT_REGION_KEYWORDS, regions_of, regions_related
from priors.longitudinal.series import (
    MIN_VOLUME_SLICES,
    Classified,
    contrast_phase,
    kernel_class,
    mr_weighting,
    orientation_class,
    thickness_class,
    unusable_reason,
)
from priors.longitudinal.timeline import TimelineStudy
from priors.longitudinal.types import SeriesInfo

__all__ = [
    "Decision",
    "PairChoice",
    "PriorChoice",
    "Selection",
    "SelectionRules",
    "select_pairs",
]

logger = logging.getLogger(__name__)

DAYS_PER_YEAR = 365.25
# Cost added when a matching attribute is unknown on either side, so that a series
# with the attribute known and equal wins over one where it cannot be checked.
UNKNOWN_ATTRIBUTE_COST = 0.5
UNKNOWN_PHASE_COST = 0.25
ORIENTATION_COUNT_COST = 0.25


@dataclass(frozen=True)
class SelectionRules:
    """Rules of prior selection; build from ``SelectionSettings`` with :meth:`from_settings`."""

    lookback_years: float = 10.0
    max_priors: int = 3
    modality_families: Mapping[str, Sequence[str]] = field(
        default_factory=lambda: {"CT": ["CT"], "MR": ["MR"], "PT": ["PT"]}
    )
    min_volume_slices: int = MIN_VOLUME_SLICES
    # A prior series must cover at least this fraction of the current series' extent
    # along the slice normal, else registration has too little overlap to work with.
    min_coverage_ratio: float = 0.5
    # Slice thicknesses further apart than this factor are not comparable.
    max_thickness_ratio: float = 2.0
    region_keywords: Mapping[str, Sequence[str]] = field(
        default_factory=lambda: dict(DEFAULT_REGION_KEYWORDS)
    )
    cross_modality_context: bool = True

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> SelectionRules:
        """Build rules from a ``priors.config.SelectionSettings`` and keyword overrides."""
        values: dict[str, Any] = {
            "lookback_years": float(settings.lookback_years),
            "max_priors": int(settings.max_priors),
            "modality_families": dict(settings.modality_families),
        }
        values.update(overrides)
        return cls(**values)

    def family_of(self, modality: str) -> str:
        """Return the family a modality belongs to (the modality itself when unlisted)."""
        for family, members in self.modality_families.items():
            if modality in members:
                return family
        return modality


@dataclass(frozen=True)
class Decision:
    """One choice or rejection: what, the verdict, why, and the values behind it."""

    subject: str  # "study", "series" or "pair"
    uid: str
    verdict: str  # "current", "chosen", "rejected" or "context"
    reason: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PriorChoice:
    """A prior study kept for the current one."""

    study: TimelineStudy
    role: str  # "baseline", "most recent", "interval" or "context"
    reasons: tuple[str, ...]
    change_candidate: bool


@dataclass(frozen=True)
class PairChoice:
    """One current series with one prior series."""

    current_series: SeriesInfo
    prior_series: SeriesInfo
    prior_study: TimelineStudy
    reasons: tuple[str, ...]
    change_candidate: bool
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Selection:
    """Result of :func:`select_pairs`."""

    current: TimelineStudy | None
    priors: list[PriorChoice]
    pairs: list[PairChoice]
    decisions: list[Decision]


def select_pairs(
    person_studies: Sequence[TimelineStudy],
    *,
    rules: SelectionRules | None = None,
    current_study_uid: str | None = None,
) -> Selection:
    """Select the current study, its priors and the series pairs.

    Parameters
    ----------
    person_studies
        One person's timeline (see :func:`~priors.longitudinal.build_timeline`).
    rules
        Selection rules; :class:`SelectionRules` defaults when None.
    current_study_uid
        Any Study Instance UID of the study to treat as current; by default the most
        recent dated study with image instances present.

    Raises
    ------
    ValueError
        When ``current_study_uid`` is not in ``person_studies``.
    """
    rules = rules or SelectionRules()
    decisions: list[Decision] = []
    current = _current_study(person_studies, current_study_uid, decisions)
    if current is None:
        return Selection(None, [], [], decisions)

    usable_current = _usable_series(current, rules, decisions)
    priors = _choose_priors(current, person_studies, rules, decisions)
    pairs: list[PairChoice] = []
    for prior in priors:
        usable_prior = _usable_series(prior.study, rules, decisions)
        for series in usable_current:
            pair = _match_series(series, usable_prior, prior, rules, decisions)
            if pair is not None:
                pairs.append(pair)
    logger.info(
        "selection for study %s: %d priors, %d pairs, %d decisions",
        current.study_instance_uid,
        len(priors),
        len(pairs),
        len(decisions),
    )
    return Selection(current, priors, pairs, decisions)


def _current_study(
    studies: Sequence[TimelineStudy], uid: str | None, decisions: list[Decision]
) -> TimelineStudy | None:
    if uid is not None:
        for study in studies:
            if uid in study.study_instance_uids:
                decisions.append(Decision("study", uid, "current", "named by the caller"))
                return study
        raise ValueError(f"current Study Instance UID {uid} is not among the person's studies")
    dated = [s for s in studies if s.date is not None and s.has_images]
    if not dated:
        decisions.append(
            Decision("study", "", "rejected", "no dated study with image instances present")
        )
        return None
    current = max(dated, key=lambda s: s.sort_key)
    decisions.append(
        Decision(
            "study",
            current.study_instance_uid,
            "current",
            "most recent study with image instances present",
            {"date": current.date.isoformat() if current.date else "", "time": current.time},
        )
    )
    return current


def _study_regions(study: TimelineStudy, rules: SelectionRules) -> set[str]:
    return regions_of(
        [*study.body_parts, *(s.body_part_examined for s in study.series)],
        [study.description, *(s.series_description for s in study.series)],
        keywords=rules.region_keywords,
    )


def _choose_priors(
    current: TimelineStudy,
    studies: Sequence[TimelineStudy],
    rules: SelectionRules,
    decisions: list[Decision],
) -> list[PriorChoice]:
    current_families = {rules.family_of(m) for m in current.modalities}
    current_regions = _study_regions(current, rules)
    if current.date is None:
        decisions.append(
            Decision(
                "study",
                current.study_instance_uid,
                "rejected",
                "the current study has no plausible date, so no study can be placed before it",
            )
        )
        return []
    window_start = current.date - dt.timedelta(days=rules.lookback_years * DAYS_PER_YEAR)
    same_family: list[tuple[TimelineStudy, list[str]]] = []
    context: list[tuple[TimelineStudy, list[str]]] = []

    for study in studies:
        if study is current:
            continue
        uid = study.study_instance_uid
        values: dict[str, Any] = {
            "date": study.date.isoformat() if study.date else "",
            "modalities": list(study.modalities),
        }
        if study.date is None:
            decisions.append(Decision("study", uid, "rejected", "no plausible date", values))
            continue
        if study.sort_key >= current.sort_key:
            decisions.append(
                Decision("study", uid, "rejected", "not before the current study", values)
            )
            continue
        if study.date < window_start:
            values["window_start"] = window_start.isoformat()
            decisions.append(
                Decision(
                    "study",
                    uid,
                    "rejected",
                    f"older than the {rules.lookback_years:g}-year lookback window",
                    values,
                )
            )
            continue
        if not study.has_images:
            decisions.append(
                Decision("study", uid, "rejected", "no image instances present", values)
            )
            continue

        families = {rules.family_of(m) for m in study.modalities}
        shared = families & current_families
        regions = _study_regions(study, rules)
        related = regions_related(current_regions, regions)
        values.update(current_regions=sorted(current_regions), prior_regions=sorted(regions))
        reasons = [f"{study.date.isoformat()}, {(current.date - study.date).days} days before"]
        if current_regions and regions and not related:
            decisions.append(Decision("study", uid, "rejected", "body region not relevant", values))
            continue
        if related:
            reasons.append(f"body region {', '.join(sorted(related))} matches")
        if shared:
            if not related:
                reasons.append("body region unknown on one side; not excluded")
            reasons.append(f"same modality family ({', '.join(sorted(shared))})")
            same_family.append((study, reasons))
        elif related and rules.cross_modality_context:
            reasons.append(
                f"modality {'/'.join(study.modalities)} differs from "
                f"{'/'.join(current.modalities)}: context, not a change-model candidate"
            )
            context.append((study, reasons))
        else:
            reason = (
                "different modality family and body region unknown"
                if not related
                else "different modality family"
            )
            decisions.append(Decision("study", uid, "rejected", reason, values))

    chosen = _limit_priors(same_family, rules, decisions)
    context.sort(key=lambda item: item[0].sort_key, reverse=True)
    for index, (study, reasons) in enumerate(context):
        if index >= rules.max_priors:
            decisions.append(
                Decision(
                    "study",
                    study.study_instance_uid,
                    "rejected",
                    f"more than {rules.max_priors} context studies; older ones dropped",
                )
            )
            continue
        decisions.append(Decision("study", study.study_instance_uid, "context", "; ".join(reasons)))
        chosen.append(PriorChoice(study, "context", tuple(reasons), change_candidate=False))
    return chosen


def _limit_priors(
    candidates: list[tuple[TimelineStudy, list[str]]],
    rules: SelectionRules,
    decisions: list[Decision],
) -> list[PriorChoice]:
    candidates = sorted(candidates, key=lambda item: item[0].sort_key)
    if not candidates:
        return []
    roles: dict[int, str] = {len(candidates) - 1: "most recent"}
    if rules.max_priors >= 2 or len(candidates) == 1:
        roles.setdefault(0, "baseline")
    for index in range(len(candidates) - 2, 0, -1):
        if len(roles) >= rules.max_priors:
            break
        roles.setdefault(index, "interval")

    chosen: list[PriorChoice] = []
    for index, (study, reasons) in enumerate(candidates):
        uid = study.study_instance_uid
        if index not in roles:
            decisions.append(
                Decision(
                    "study",
                    uid,
                    "rejected",
                    f"relevant, but beyond max_priors={rules.max_priors} "
                    "(baseline and most recent are kept first)",
                )
            )
            continue
        role = roles[index]
        all_reasons = (*reasons, f"role: {role}")
        decisions.append(Decision("study", uid, "chosen", "; ".join(all_reasons)))
        chosen.append(PriorChoice(study, role, all_reasons, change_candidate=True))
    return chosen


def _usable_series(
    study: TimelineStudy, rules: SelectionRules, decisions: list[Decision]
) -> list[SeriesInfo]:
    usable: list[SeriesInfo] = []
    for series in study.series:
        reason = unusable_reason(series, min_slices=rules.min_volume_slices)
        if reason is None:
            usable.append(series)
            continue
        decisions.append(
            Decision(
                "series",
                series.series_instance_uid,
                "rejected",
                f"series {series.series_number} ({reason.label}): {reason.basis}",
                reason.values,
            )
        )
    return usable


def _match_series(
    current: SeriesInfo,
    candidates: Sequence[SeriesInfo],
    prior: PriorChoice,
    rules: SelectionRules,
    decisions: list[Decision],
) -> PairChoice | None:
    scored: list[tuple[float, SeriesInfo, list[str], dict[str, Any]]] = []
    for candidate in candidates:
        verdict = _compare_series(current, candidate, rules, change=prior.change_candidate)
        if isinstance(verdict, str):
            decisions.append(
                Decision(
                    "pair",
                    candidate.series_instance_uid,
                    "rejected",
                    f"prior series {candidate.series_number} for current series "
                    f"{current.series_number}: {verdict}",
                    _series_values(current, candidate),
                )
            )
            continue
        cost, reasons = verdict
        scored.append((cost, candidate, reasons, _series_values(current, candidate)))
    if not scored:
        decisions.append(
            Decision(
                "pair",
                current.series_instance_uid,
                "rejected",
                f"current series {current.series_number}: no comparable series in the prior "
                f"of {prior.study.date}",
            )
        )
        return None

    scored.sort(key=lambda item: (item[0], item[1].series_number or 0, item[1].series_instance_uid))
    cost, best, reasons, values = scored[0]
    values["cost"] = round(cost, 4)
    for other_cost, other, _, _ in scored[1:]:
        decisions.append(
            Decision(
                "pair",
                other.series_instance_uid,
                "rejected",
                f"prior series {other.series_number} for current series {current.series_number}: "
                f"series {best.series_number} matches closer (cost {other_cost:.3f} > {cost:.3f})",
            )
        )
    decisions.append(
        Decision(
            "pair",
            best.series_instance_uid,
            "chosen" if prior.change_candidate else "context",
            f"current series {current.series_number} with prior series {best.series_number}: "
            + "; ".join(reasons),
            values,
        )
    )
    return PairChoice(current, best, prior.study, tuple(reasons), prior.change_candidate, values)


def _compare_series(
    current: SeriesInfo, prior: SeriesInfo, rules: SelectionRules, *, change: bool
) -> str | tuple[float, list[str]]:
    """Return a rejection reason, or the matching cost and the reasons for a match."""
    reasons: list[str] = []
    cost = 0.0
    if change and rules.family_of(current.modality) != rules.family_of(prior.modality):
        return f"modality {prior.modality} is not in the family of {current.modality}"

    plane_current, plane_prior = orientation_class(current), orientation_class(prior)
    if "unknown" in (plane_current.label, plane_prior.label):
        return "orientation unknown"
    if plane_current.label != plane_prior.label:
        return f"orientation {plane_prior.label} differs from {plane_current.label}"
    reasons.append(f"both {plane_current.label}")
    if current.orientation_count != prior.orientation_count:
        cost += ORIENTATION_COUNT_COST

    if change and current.modality == "MR":
        outcome = _same_label(mr_weighting(current), mr_weighting(prior), "MR weighting")
        if isinstance(outcome, str):
            return outcome
        cost += outcome[0]
        reasons.append(outcome[1])
    if change and current.modality == "CT":
        for classify, name in ((kernel_class, "kernel"), (thickness_class, "slice thickness")):
            outcome = _same_label(classify(current), classify(prior), name)
            if isinstance(outcome, str):
                return outcome
            cost += outcome[0]
            reasons.append(outcome[1])
    if change:
        outcome = _same_label(contrast_phase(current), contrast_phase(prior), "contrast phase")
        if isinstance(outcome, str):
            return outcome
        cost += min(outcome[0], UNKNOWN_PHASE_COST)
        if outcome[0] == 0.0:
            reasons.append(outcome[1])

    thickness = _relative_difference(current.slice_thickness, prior.slice_thickness)
    if thickness is not None:
        assert current.slice_thickness is not None and prior.slice_thickness is not None
        thin, thick = sorted((current.slice_thickness, prior.slice_thickness))
        ratio = thick / max(thin, 1e-6)
        if ratio > rules.max_thickness_ratio:
            return (
                f"slice thickness {prior.slice_thickness:g} mm against "
                f"{current.slice_thickness:g} mm "
                f"(ratio {ratio:.2f} > {rules.max_thickness_ratio:g})"
            )
        cost += thickness
        reasons.append(
            f"slice thickness {prior.slice_thickness:g} mm against {current.slice_thickness:g} mm"
        )
    spacing = _relative_difference(current.measured_slice_spacing, prior.measured_slice_spacing)
    if spacing is not None:
        cost += spacing
        reasons.append(
            f"slice spacing {prior.measured_slice_spacing:.2f} mm against "
            f"{current.measured_slice_spacing:.2f} mm"
        )

    if current.coverage_mm and prior.coverage_mm is not None:
        coverage = prior.coverage_mm / current.coverage_mm
        if coverage < rules.min_coverage_ratio:
            return (
                f"covers {prior.coverage_mm:.1f} mm of the current {current.coverage_mm:.1f} mm "
                f"(ratio {coverage:.2f} < {rules.min_coverage_ratio:g})"
            )
        cost += max(0.0, 1.0 - coverage)
        reasons.append(f"coverage {prior.coverage_mm:.1f} mm against {current.coverage_mm:.1f} mm")
    else:
        cost += UNKNOWN_ATTRIBUTE_COST
        reasons.append("coverage unknown")
    return cost, reasons


def _same_label(current: Classified, prior: Classified, name: str) -> str | tuple[float, str]:
    if current.label and prior.label:
        if current.label != prior.label:
            return (
                f"{name} {prior.label} ({prior.basis}) differs from {current.label} "
                f"({current.basis})"
            )
        return 0.0, f"{name} {current.label} on both"
    return UNKNOWN_ATTRIBUTE_COST, f"{name} unknown on one side"


def _relative_difference(current: float | None, prior: float | None) -> float | None:
    if current is None or prior is None or current <= 0:
        return None
    return abs(prior - current) / current


def _series_values(current: SeriesInfo, prior: SeriesInfo) -> dict[str, Any]:
    def summary(series: SeriesInfo) -> dict[str, Any]:
        return {
            "series_number": series.series_number,
            "series_description": series.series_description,
            "orientation": orientation_class(series).label,
            "slice_thickness_mm": series.slice_thickness,
            "measured_slice_spacing_mm": series.measured_slice_spacing,
            "coverage_mm": series.coverage_mm,
            "repetition_time_ms": series.repetition_time,
            "echo_time_ms": series.echo_time,
            "convolution_kernel": series.convolution_kernel,
        }

    return {"current": summary(current), "prior": summary(prior)}
