"""The result type shared by the change model and the subtraction baseline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CLASS_NAMES", "NEW_OR_GROWN", "NO_CHANGE", "RESOLVED_OR_SHRUNK", "ChangeOutput"]

NO_CHANGE = 0
NEW_OR_GROWN = 1
RESOLVED_OR_SHRUNK = 2

# Names used in lesion lists and evaluation tables, indexed by label value.
CLASS_NAMES = ("no_change", "new_or_grown", "resolved_or_shrunk")


@dataclass
class ChangeOutput:
    """Change maps of one current-versus-prior pair, on the current voxel grid.

    Attributes
    ----------
    probability
        (z, y, x) float32 probability of any change, ``1 - p(no change)``. The
        baseline stores its normalised difference magnitude squashed into [0, 1].
    labels
        (z, y, x) uint8: 0 no change, 1 new or grown tissue, 2 resolved or shrunk
        tissue.
    method
        ``"model"`` or ``"baseline"``.
    parameters
        Settings that produced the maps (threshold, roi size, overlap, ...), JSON-ready.
    """

    probability: np.ndarray
    labels: np.ndarray
    method: str
    parameters: dict[str, Any] = field(default_factory=dict)
