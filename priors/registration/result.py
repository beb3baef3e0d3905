"""The result of one registration and the 4 x 4 form of its transform."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

__all__ = ["RegistrationResult", "transform_matrix_lps"]


def transform_matrix_lps(transform: sitk.Transform) -> np.ndarray:
    """Return the 4 x 4 homogeneous matrix (LPS mm) of an affine ``transform``.

    The matrix is read from the images of the origin and the unit vectors, so it
    works for any affine ITK transform, composites included. For a non-affine
    transform (B-spline) it is the affine part at the origin only.
    """
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:3, axis] = np.asarray(transform.TransformPoint(unit)) - origin
    matrix[:3, 3] = origin
    return matrix


@dataclass
class RegistrationResult:
    """A prior registered onto a current volume, with its checks and provenance.

    ``transform`` maps current (fixed) points to prior (moving) points, in LPS mm, so
    ``resample_onto(current, prior, transform)`` puts the prior on the current grid.
    """

    transform: sitk.Transform
    matrix_lps: list[list[float]]
    verdict: str
    reason: str
    metrics: dict = field(default_factory=dict)
    candidates: list[dict] = field(default_factory=list)
    ambiguous: bool = False
    parameters: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when the quality checks passed."""
        return self.verdict == "pass"

    def as_dict(self) -> dict:
        """Return every field but the transform object as JSON-ready values.

        The transform appears as its ITK class name, parameters and fixed parameters.
        """
        return {
            "transform": {
                "class": self.transform.GetName(),
                "parameters": list(self.transform.GetParameters()),
                "fixed_parameters": list(self.transform.GetFixedParameters()),
            },
            "matrix_lps": self.matrix_lps,
            "verdict": self.verdict,
            "reason": self.reason,
            "metrics": self.metrics,
            "candidates": self.candidates,
            "ambiguous": self.ambiguous,
            "parameters": self.parameters,
            "timings": self.timings,
        }
