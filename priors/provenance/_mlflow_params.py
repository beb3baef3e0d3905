"""MLflow parameters and metrics: flattening, secret redaction and batched logging."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from priors.provenance.digests import jsonable

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["flatten_params", "log_metrics", "log_params", "redact_secrets"]

logger = logging.getLogger(__name__)

# MLflow 3 limits: 100 params and 1000 metrics per log_batch call, 6000 characters
# per parameter value, 250 per key.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE_LENGTH = 6000
MAX_PARAM_KEY_LENGTH = 250

# Parameter names, matched on their last dotted part, whose values are never logged.
SECRET_NAME_PARTS = ("key", "password", "secret", "token")


def flatten_params(
    params: Mapping[str, Any], *, prefix: str = "", redact_secrets: bool = False
) -> dict[str, str]:
    """Flatten nested settings into MLflow parameters with dotted names.

    Lists become JSON text. Values longer than MLflow's limit are cut, ending in
    ``"..."``. With ``redact_secrets``, a name whose last part contains ``key``,
    ``password``, ``secret`` or ``token`` gets ``"<redacted>"``.
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}.", redact_secrets=redact_secrets))
            continue
        if redact_secrets and value not in (None, "") and _is_secret_name(str(key)):
            text = "<redacted>"
        elif isinstance(value, str):
            text = value
        else:
            text = json.dumps(jsonable(value), sort_keys=True)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            logger.warning(
                "parameter %s is %d characters; cut to %d", name, len(text), MAX_PARAM_VALUE_LENGTH
            )
            text = text[: MAX_PARAM_VALUE_LENGTH - 3] + "..."
        if len(name) > MAX_PARAM_KEY_LENGTH:
            raise ValueError(
                f"parameter name {name[:60]}... is {len(name)} characters, "
                f"expected at most {MAX_PARAM_KEY_LENGTH}"
            )
        flat[name] = text
    return flat


def redact_secrets(value: Any) -> Any:
    """Copy nested settings with the values of secret-named keys set to ``"<redacted>"``.

    Names are matched as in ``flatten_params``; empty values stay empty.
    """
    if isinstance(value, Mapping):
        return {
            key: "<redacted>"
            if _is_secret_name(str(key))
            and item not in (None, "")
            and not isinstance(item, Mapping)
            else redact_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact_secrets(item) for item in value]
    return value


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in SECRET_NAME_PARTS)


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Log parameters in batches of at most ``PARAMS_PER_BATCH``."""
    from mlflow.entities import Param

    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[start : start + PARAMS_PER_BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, Any]) -> None:
    """Log numeric metrics in batches; NaN and infinite values are skipped.

    Raises
    ------
    TypeError
        When a value is not a number.
    """
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    items = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric {key!r} is {value!r}, expected a number")
        if not math.isfinite(value):
            # MLflow stores NaN, but a NaN figure is better read as "not measured".
            logger.info("metric %s is %s, so it is not logged", key, value)
            continue
        items.append(Metric(key, float(value), timestamp, 0))
    for start in range(0, len(items), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[start : start + METRICS_PER_BATCH])
