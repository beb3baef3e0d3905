"""Splitting the frames of one series into stacks, each a set of parallel slices."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from priors.dicom._pixels import PixelDecodeError
from priors.dicom._volume_frames import Frame

__all__ = [
    "ORIENTATION_TOLERANCE",
    "SAME_POSITION_TOLERANCE_MM",
    "Stack",
    "StackRejection",
    "slice_normal",
    "split_series",
]

logger = logging.getLogger(__name__)

# Largest difference between direction cosines of slices in one stack. Rounding of
# (0020,0037) leaves differences near 1e-6, but disc-angled blocks of a spine MR differ by 5e-3.
ORIENTATION_TOLERANCE = 1e-3

# Two frames whose Image Position (Patient) values are closer than this share one position.
# Positions are typically written to 1e-3 mm or finer, and slices of one stack lie at least
# 0.1 mm apart.
SAME_POSITION_TOLERANCE_MM = 0.01


@dataclass
class Stack:
    """Frames of one stack in slice order, with the labels and decisions that made it."""

    frames: list[Frame]
    label_parts: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    # 0-based time point and the number of time points when the stack is one time point
    # of several at the same positions; None otherwise.
    time_point: tuple[int, int] | None = None
    # Label parts shared by all time points of the acquisition group.
    group_label_parts: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ", ".join(self.label_parts)


@dataclass
class StackRejection:
    """Frames that could not form a stack, with the reason."""

    label: str
    reason: str
    frames: list[Frame]


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Return the unit slice normal, row cosine × column cosine, of an orientation."""
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def _cluster_orientations(frames: Sequence[Frame]) -> list[list[Frame]]:
    clusters: list[list[Frame]] = []
    for frame in frames:
        for cluster in clusters:
            reference = cluster[0].image_orientation_patient
            if np.max(np.abs(frame.image_orientation_patient - reference)) <= ORIENTATION_TOLERANCE:
                cluster.append(frame)
                break
        else:
            clusters.append([frame])
    return clusters


def _mean_position_key(frames: Sequence[Frame]) -> tuple[float, ...]:
    """Order clusters by mean position: feet to head, then front to back, then right to left."""
    mean = np.mean([f.image_position_patient for f in frames], axis=0)
    return (round(float(mean[2]), 3), round(float(mean[1]), 3), round(float(mean[0]), 3))


def _split_by(
    groups: list[tuple[list[str], list[Frame]]],
    key: Callable[[Frame], Hashable],
    describe: Callable[[Any], str],
) -> list[tuple[list[str], list[Frame]]]:
    """Split every group by a key, labelling the parts only when the key varies."""
    result = []
    for labels, frames in groups:
        buckets: dict[Hashable, list[Frame]] = {}
        for frame in frames:
            buckets.setdefault(key(frame), []).append(frame)
        if len(buckets) == 1:
            result.append((labels, frames))
            continue
        for value in sorted(buckets, key=str):
            result.append((labels + [describe(value)], buckets[value]))
    return result


def _by_acquisition(frames: Sequence[Frame]) -> list[tuple[list[str], list[Frame]]]:
    """Split by orientation, image size and spacing, echo, image type and stack ID."""
    groups: list[tuple[list[str], list[Frame]]] = []
    clusters = sorted(_cluster_orientations(frames), key=_mean_position_key)
    for number, cluster in enumerate(clusters, start=1):
        labels = [f"orientation {number} of {len(clusters)}"] if len(clusters) > 1 else []
        groups.append((labels, cluster))

    groups = _split_by(
        groups,
        lambda f: (f.rows, f.columns, round(f.pixel_spacing[0], 4), round(f.pixel_spacing[1], 4)),
        lambda v: "{}x{} pixels of {} x {} mm".format(*v),
    )
    groups = _split_by(groups, lambda f: f.echo, lambda v: f"echo {v}")
    groups = _split_by(groups, lambda f: f.image_type, lambda v: "image type " + "\\".join(v))
    groups = _split_by(groups, lambda f: f.stack_id, lambda v: f"stack {v}")
    return groups


def _position_groups(frames: list[Frame], normal: np.ndarray) -> list[list[Frame]]:
    """Group frames by position, in slice order along the normal."""

    def order(frame: Frame) -> tuple:
        return (
            float(frame.image_position_patient @ normal),
            frame.temporal_key,
            frame.sop_instance_uid,
            frame.frame_index,
        )

    groups: list[list[Frame]] = []
    for frame in sorted(frames, key=order):
        if groups:
            previous = groups[-1][0].image_position_patient
            distance = np.linalg.norm(frame.image_position_patient - previous)
            if distance <= SAME_POSITION_TOLERANCE_MM:
                groups[-1].append(frame)
                continue
        groups.append([frame])
    return groups


def _describe_position(frame: Frame) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in frame.image_position_patient) + ") mm"


def _drop_identical(groups: list[list[Frame]], decisions: list[str]) -> list[list[Frame]]:
    """Drop frames whose stored pixels equal an earlier frame's at the same position."""
    result = []
    for group in groups:
        if len(group) == 1:
            result.append(group)
            continue
        kept: list[Frame] = []
        seen: dict[str, Frame] = {}
        for frame in group:
            digest = frame.frame_sha256()
            if digest in seen:
                message = (
                    f"dropped duplicate {frame.path} (frame {frame.frame_index + 1}): "
                    f"same pixels as {seen[digest].path} at {_describe_position(frame)}"
                )
                decisions.append(message)
                warnings.warn(message, stacklevel=4)
                continue
            seen[digest] = frame
            kept.append(frame)
        result.append(kept)
    return result


def _resolve_positions(
    labels: list[str], frames: list[Frame], temporal_policy: str
) -> tuple[list[Stack], list[StackRejection]]:
    """Turn one acquisition group into stacks, separating time points at shared positions."""
    label = ", ".join(labels)
    normal = slice_normal(frames[0].image_orientation_patient)
    decisions: list[str] = []
    try:
        groups = _drop_identical(_position_groups(frames, normal), decisions)
    except PixelDecodeError as err:
        return [], [StackRejection(label, str(err), list(frames))]
    counts = {len(group) for group in groups}

    if counts == {1}:
        stack = Stack(frames=[group[0] for group in groups], label_parts=labels)
        stack.decisions.extend(decisions)
        return [stack], []

    all_frames = [frame for group in groups for frame in group]
    temporal_keys_differ = all(
        len({frame.temporal_key for frame in group}) == len(group) for group in groups
    )
    # A cine at one position is a volume only as one slice over time, that is in 4-D.
    if len(groups) == 1 and not (temporal_policy == "4d" and temporal_keys_differ):
        reason = (
            f"{len(all_frames)} frames with different pixels share one position "
            f"{_describe_position(all_frames[0])}: a time series or repeated 2-D images, "
            "not a volume"
        )
        return [], [StackRejection(label, reason, all_frames)]

    if not temporal_keys_differ:
        conflicted = next(g for g in groups if len({f.temporal_key for f in g}) < len(g))
        reason = (
            f"conflicting instances at position {_describe_position(conflicted[0])}: "
            + ", ".join(f.path for f in conflicted)
            + " have different pixel data and the same (0020,0100) Temporal Position "
            "Identifier, (0018,1060) Trigger Time and (0020,0012) Acquisition Number"
        )
        return [], [StackRejection(label, reason, all_frames)]

    if len(counts) > 1:
        crowded = max(groups, key=len)
        reason = (
            f"positions hold between {min(counts)} and {max(counts)} frames, expected the "
            "same number of time points at every position. Position "
            f"{_describe_position(crowded[0])} holds " + ", ".join(f.path for f in crowded)
        )
        return [], [StackRejection(label, reason, all_frames)]

    time_points = counts.pop()
    if temporal_policy == "reject":
        reason = (
            f"{time_points} time points at each of {len(groups)} positions "
            "(temporal_policy='reject')"
        )
        return [], [StackRejection(label, reason, all_frames)]
    kept = 1 if temporal_policy == "first" else time_points
    stacks = []
    for index in range(kept):
        stack = Stack(
            frames=[group[index] for group in groups],
            label_parts=labels + [f"time point {index + 1} of {time_points}"],
            time_point=(index, time_points),
            group_label_parts=list(labels),
        )
        stack.decisions.extend(decisions)
        stack.decisions.append(
            f"split {time_points} time points at each of {len(groups)} positions "
            f"(temporal_policy={temporal_policy!r}), ordered by temporal position, "
            "trigger time, acquisition number and instance number"
        )
        stacks.append(stack)
    return stacks, []


def split_series(
    frames: Sequence[Frame], *, temporal_policy: str
) -> tuple[list[Stack], list[StackRejection]]:
    """Split the frames of one series into stacks of parallel slices at distinct positions.

    Frames are split by orientation, image size and pixel spacing, echo, image type and
    enhanced Stack ID. Identical frames at one position are dropped with a warning.
    Several different frames at each position become one stack per time point (also
    with ``temporal_policy="4d"``, where the caller joins the built time points).
    """
    stacks: list[Stack] = []
    rejections: list[StackRejection] = []
    groups = _by_acquisition(frames)
    for labels, group in groups:
        made, rejected = _resolve_positions(labels, group, temporal_policy)
        if len(groups) > 1:
            for stack in made:
                stack.decisions.insert(
                    0,
                    f"split the series into {len(groups)} stacks, of which this is {stack.label!r}",
                )
        stacks.extend(made)
        rejections.extend(rejected)
    return stacks, rejections
