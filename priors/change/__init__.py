"""Change detection on registered current-versus-prior pairs.

Works on numpy arrays in SimpleITK's axis order (z, y, x), with spacing given as
``(sx, sy, sz)`` in mm. Knows neither DICOM nor MLflow. ``torch`` and ``monai`` are
imported only when a model is loaded or trained.
"""

from priors.change.baseline import subtraction_baseline
from priors.change.evaluation import evaluate_pairs
from priors.change.lesions import summarize_lesions
from priors.change.model import ChangeModel, load_change_model
from priors.change.output import (
    CLASS_NAMES,
    NEW_OR_GROWN,
    NO_CHANGE,
    RESOLVED_OR_SHRUNK,
    ChangeOutput,
)

__all__ = [
    "CLASS_NAMES",
    "NEW_OR_GROWN",
    "NO_CHANGE",
    "RESOLVED_OR_SHRUNK",
    "ChangeModel",
    "ChangeOutput",
    "evaluate_pairs",
    "load_change_model",
    "subtraction_baseline",
    "summarize_lesions",
]
