"""Reading a MONAI bundle's training record for the model registry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from priors.provenance.digests import jsonable

__all__ = ["split_training_record", "stated_weights_sha256"]


def split_training_record(
    training: Mapping[str, Any],
) -> tuple[dict[str, str], dict[str, float], str]:
    """Split a bundle's training record into parameters, metrics and the training run id.

    Numbers under a key containing ``metric`` become metrics; other values become
    parameters named ``training.<key>``.
    """
    params: dict[str, str] = {}
    metrics: dict[str, float] = {}
    training_run_id = ""

    def visit(value: Any, path: list[str], in_metrics: bool) -> None:
        nonlocal training_run_id
        if isinstance(value, Mapping):
            for key, item in value.items():
                visit(item, [*path, str(key)], in_metrics or "metric" in str(key).lower())
            return
        name = ".".join(path)
        if in_metrics and not isinstance(value, bool) and isinstance(value, int | float):
            metrics[name] = float(value)
            return
        if "run_id" in path[-1].lower() and isinstance(value, str):
            training_run_id = value
        text = value if isinstance(value, str) else json.dumps(jsonable(value))
        params[f"training.{name}"] = text

    visit(training, [], False)
    return params, metrics, training_run_id


def stated_weights_sha256(metadata: Mapping[str, Any]) -> str | None:
    for container in (metadata, metadata.get("training") or {}):
        value = container.get("weights_sha256")
        if isinstance(value, str) and value:
            return value
    return None
