"""Lesion histories of the synthetic cohort: where each lesion is and how big, per time point."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from priors.synthetic._geometry import rounded
from priors.synthetic.anatomy import Anatomy, Lesion, random_lung_lesion

# Lesion equivalent diameter at its largest, and the window of phantom z for lesion
# centres. 35 mm, plus a 13 mm radius, 15 mm of translation, about 20 mm of z change
# from 7 degree tilts and 5 mm of scan centring, stays within the +-90 mm of the
# default 180 mm thin coverage.
LESION_MAX_DIAMETER_MM = (14.0, 26.0)
LESION_Z_LIMIT_MM = 35.0
# Diameter ratios between time points that count as growth or shrinkage.
GROWN_RATIO = 1.2
SHRUNK_RATIO = 0.8


@dataclass(frozen=True)
class LesionTrack:
    """One lesion over time: its largest outline and its size at each time point."""

    lesion_id: int
    largest: Lesion
    # Radius scale per time point, None where the lesion is absent.
    scales: tuple[float | None, ...]

    def at(self, timepoint: int) -> Lesion | None:
        scale = self.scales[timepoint]
        if scale is None:
            return None
        rx, ry, rz = self.largest.radii_mm
        radii = (rx * scale, ry * scale, rz * scale)
        return dataclasses.replace(self.largest, radii_mm=radii)


def plan_lesions(anatomy: Anatomy, rng: np.random.Generator, n: int) -> list[LesionTrack]:
    """Place three or four separate lung lesions and give each a history over `n` time points."""
    # One lesion grows at every step, one is new at the second time point, one shrinks
    # and has resolved by the last, and half of the persons have one stable lesion.
    grow = tuple(1.3 ** (t - (n - 1)) for t in range(n))
    new = (None,) + (1.0,) * (n - 1)
    shrink = tuple(0.6**t for t in range(n - 1)) + (None,)
    schedules: list[tuple[float | None, ...]] = [grow, new, shrink]
    if rng.random() < 0.5:
        schedules.append((1.0,) * n)

    tracks: list[LesionTrack] = []
    for lesion_id, scales in enumerate(schedules, start=1):
        lesion = _place_lesion(anatomy, rng, [t.largest for t in tracks])
        tracks.append(LesionTrack(lesion_id, lesion, scales))
    return tracks


def _place_lesion(anatomy: Anatomy, rng: np.random.Generator, others: list[Lesion]) -> Lesion:
    for _ in range(200):
        lesion = random_lung_lesion(anatomy, rng, diameter_mm=LESION_MAX_DIAMETER_MM)
        if abs(lesion.center_mm[2]) > LESION_Z_LIMIT_MM:
            continue
        apart = all(
            np.linalg.norm(np.subtract(lesion.center_mm, other.center_mm))
            > 1.3 * (max(lesion.radii_mm) + max(other.radii_mm)) + 5.0
            for other in others
        )
        if apart:
            return lesion
    raise ValueError(
        f"could not place {len(others) + 1} separate lung lesions within z of "
        f"+-{LESION_Z_LIMIT_MM} mm; expected lungs of adult size"
    )


def lesions_at(tracks: list[LesionTrack], timepoint: int) -> tuple[Lesion, ...]:
    """Return the lesions present at a time point, in lesion id order."""
    return tuple(lesion for t in tracks if (lesion := t.at(timepoint)) is not None)


def lesion_events(tracks: list[LesionTrack]) -> list[dict[str, Any]]:
    """Describe each change of each lesion between consecutive time points, for the ground truth."""
    events = []
    for track in tracks:
        for later in range(1, len(track.scales)):
            before, after = track.scales[later - 1], track.scales[later]
            if before is None and after is None:
                continue
            if before is None:
                kind = "new"
            elif after is None:
                kind = "resolved"
            elif after / before >= GROWN_RATIO:
                kind = "grown"
            elif after / before <= SHRUNK_RATIO:
                kind = "shrunk"
            else:
                kind = "stable"
            diameter = track.largest.diameter_mm
            events.append(
                {
                    "lesion_id": track.lesion_id,
                    "kind": kind,
                    "timepoints": [later - 1, later],
                    "center_mm": rounded(track.largest.center_mm),
                    "diameter_mm": [
                        None if before is None else round(diameter * before, 3),
                        None if after is None else round(diameter * after, 3),
                    ],
                }
            )
    return events
