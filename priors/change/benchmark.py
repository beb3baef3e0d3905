"""Model-versus-baseline comparison on a set of pairs with known change labels."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from priors.change.baseline import subtraction_baseline
from priors.change.evaluation import evaluate_pairs
from priors.change.model import ChangeModel

__all__ = ["LabelledPair", "compare_methods", "format_table"]

logger = logging.getLogger(__name__)


class LabelledPair(Protocol):
    """A registered pair with its true change labels, such as a synthetic pair."""

    current: np.ndarray
    prior: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    nuisances: dict[str, Any]


def compare_methods(
    pairs: Iterable[LabelledPair], *, model: ChangeModel | None, batch_size: int | None = None
) -> dict[str, dict]:
    """Run the model (when given) and the subtraction baseline on every pair and evaluate both.

    The model runs on chunks of ``batch_size`` pairs through
    :meth:`ChangeModel.predict_batch` (None: the bundle's ``pair_batch_size``), as
    the pipeline runs it. The baseline runs on one pair at a time.

    Returns
    -------
    dict
        ``{"model": report, "baseline": report}`` as ``evaluate_pairs`` returns them,
        each with ``seconds_per_pair`` added (for the model, its batched time divided
        by the number of pairs); ``"model"`` is absent without a model.
    """
    methods = ["baseline"] if model is None else ["model", "baseline"]
    predictions: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    truths, spacings, shifts = [], [], []
    chunk_size = 1
    if model is not None:
        chunk_size = model.pair_batch_size if batch_size is None else batch_size
        if chunk_size < 1:
            raise ValueError(f"batch_size is {batch_size}, expected at least 1")
    chunk: list[LabelledPair] = []
    for pair in pairs:
        truths.append(pair.labels)
        spacings.append(pair.spacing)
        shifts.append(float(pair.nuisances.get("misregistration_mm", 0.0)))
        started = time.perf_counter()
        output = subtraction_baseline(pair.current, pair.prior, spacing=pair.spacing)
        seconds["baseline"] += time.perf_counter() - started
        predictions["baseline"].append(output.labels)
        if model is not None:
            chunk.append(pair)
            if len(chunk) >= chunk_size:
                seconds["model"] += _predict_chunk(model, chunk, predictions["model"])
                chunk = []
    if model is not None and chunk:
        seconds["model"] += _predict_chunk(model, chunk, predictions["model"])

    reports = {}
    for name in methods:
        report = evaluate_pairs(
            predictions[name], truths, spacing=spacings, misregistration_mm=shifts
        )
        report["seconds_per_pair"] = seconds[name] / max(1, len(truths))
        reports[name] = report
    logger.info("compared %s on %d pairs", " and ".join(methods), len(truths))
    return reports


def _predict_chunk(
    model: ChangeModel, chunk: list[LabelledPair], labels: list[np.ndarray]
) -> float:
    """Append the model's labels of ``chunk`` to ``labels`` and return the seconds taken."""
    started = time.perf_counter()
    outputs = model.predict_batch(
        [(pair.current, pair.prior, pair.spacing) for pair in chunk], batch_size=len(chunk)
    )
    elapsed = time.perf_counter() - started
    labels.extend(output.labels for output in outputs)
    return elapsed


def format_table(reports: dict[str, dict]) -> str:
    """Return a plain-text table of the main figures, one column per method."""
    rows = [
        ("lesion F1, changes >= 5 mm", lambda r: r["lesion_f1_5mm"]),
        ("lesion precision >= 5 mm", lambda r: r["lesion_precision_5mm"]),
        ("lesion recall >= 5 mm", lambda r: r["lesion_recall_5mm"]),
        ("lesion F1, all sizes", lambda r: r["lesion_f1_all"]),
        ("F1 new or grown >= 5 mm", lambda r: r["per_class"]["new_or_grown"]["f1"]),
        ("F1 resolved or shrunk >= 5 mm", lambda r: r["per_class"]["resolved_or_shrunk"]["f1"]),
        ("voxel Dice", lambda r: r["voxel_dice"]),
        ("false positives per no-change pair", lambda r: r["fp_per_no_change_pair"]),
        ("seconds per pair", lambda r: r["seconds_per_pair"]),
    ]
    methods = list(reports)
    first = next(iter(reports.values()))
    for stratum in first["by_size"]:
        rows.append((f"recall, size {stratum}", lambda r, s=stratum: r["by_size"][s]["recall"]))
    for stratum in first.get("by_misregistration", {}):
        rows.append(
            (
                f"F1 >= 5 mm, misregistration {stratum}",
                lambda r, s=stratum: r["by_misregistration"].get(s, {}).get("lesion_f1_5mm"),
            )
        )

    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{'':<{width}}" + "".join(f"{name:>12}" for name in methods)]
    for label, read in rows:
        cells = []
        for name in methods:
            value = read(reports[name])
            cells.append(f"{'-':>12}" if value is None else f"{value:>12.3f}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    lines.append(
        f"pairs: {first['pairs']} ({first['no_change_pairs']} without change), "
        f"changes >= 5 mm: {first['changes_5mm']}"
    )
    return "\n".join(lines)
