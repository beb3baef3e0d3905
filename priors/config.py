"""Configuration: built-in defaults, one TOML file, then ``PRIORS_*`` variables.

Precedence, lowest first:

1. the defaults of the dataclasses below;
2. the TOML file named by ``--config`` or ``PRIORS_CONFIG``;
3. environment variables. A top-level field ``catalog_url`` is set by
   ``PRIORS_CATALOG_URL``; a field of a section by ``PRIORS_<SECTION>__<FIELD>``,
   for example ``PRIORS_REGISTRATION__SEED=7``.

This module imports no other part of priors.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

__all__ = [
    "ChangeSettings",
    "ConfigError",
    "RegistrationSettings",
    "SelectionSettings",
    "Settings",
    "load_settings",
]

ENV_PREFIX = "PRIORS_"
# PRIORS_* variables that are not settings: the configuration path and the test data.
NON_SETTING_VARIABLES = frozenset({"PRIORS_CONFIG", "PRIORS_TEST_DATA"})

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """Invalid configuration file or environment variable."""


@dataclass
class RegistrationSettings:
    """Parameters of the registration of a prior onto the current volume.

    Rigid always runs; ``affine`` and ``bspline`` add stages after it.
    """

    seed: int = 20240601
    threads: int = 1
    # Fraction of voxels sampled by the metric at each level.
    sampling_fraction: float = 0.25
    histogram_bins: int = 32
    iterations: int = 200
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    # Superior-inferior start offsets tried, in mm; the best by the metric is kept.
    si_start_offsets_mm: tuple[float, ...] = (0.0,)
    # Starts, comma-separated: "moments" (centres of the body masks), "geometry"
    # (centres of the grids), "identity" (patient coordinates as stored).
    initialisations: str = "moments"
    # "auto" (correlation for CT-CT, Mattes mutual information otherwise),
    # "mattes" or "correlation".
    metric: str = "auto"
    affine: bool = False
    # Deformable B-spline stage after rigid (and affine); control points this far
    # apart (mm), at most this many gradient-descent iterations per level.
    bspline: bool = False
    bspline_mesh_spacing_mm: float = 80.0
    bspline_iterations: int = 50
    # Register both ways and measure |reverse(forward(p)) - p| over the body.
    inverse_consistency: bool = False
    # Quality thresholds: below these a pair is held back from the model. min_ncc is
    # for CT-CT, mr_min_ncc for MR-MR.
    min_overlap_fraction: float = 0.5
    min_ncc: float = 0.5
    mr_min_ncc: float = 0.3


@dataclass
class SelectionSettings:
    """Rules that pick the priors of a current study."""

    lookback_years: float = 10.0
    max_priors: int = 3
    # Modality families compared with each other for a change pair.
    modality_families: dict[str, list[str]] = field(
        default_factory=lambda: {"CT": ["CT"], "MR": ["MR"], "PT": ["PT"]}
    )


@dataclass
class ChangeSettings:
    """Change-detection model and baseline."""

    bundle: str = "models/ct_chest_change"
    # Sliding-window batch size; windows are padded to the model's roi.
    sw_batch_size: int = 2
    overlap: float = 0.25
    # Torch intra-op threads in each worker; 0 lets torch decide.
    torch_threads: int = 1
    device: str = "auto"


@dataclass
class Settings:
    """All settings of priors.

    Paths that are left empty are derived from ``home`` (see ``resolved``).
    """

    home: Path = field(default_factory=lambda: Path("~/.priors").expanduser())
    catalog_url: str = ""
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "priors"
    pseudonym_key: str = ""
    ray_address: str = ""
    ray_num_cpus: int = 0
    # PACS reachable by name: [sources.<name>] tables (see priors.sources.pacs).
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    registration: RegistrationSettings = field(default_factory=RegistrationSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    change: ChangeSettings = field(default_factory=ChangeSettings)

    def resolved(self) -> Settings:
        """Return a copy with empty paths and URLs filled in from ``home``."""
        home = Path(self.home).expanduser().resolve()
        tracking = self.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        return dataclasses.replace(
            self,
            home=home,
            catalog_url=self.catalog_url or f"sqlite:///{home / 'catalog.db'}",
            mlflow_tracking_uri=tracking or f"sqlite:///{home / 'mlflow.db'}",
        )

    @property
    def mlflow_artifact_root(self) -> Path:
        """Artifact folder used when priors creates the MLflow experiment itself."""
        return Path(self.home).expanduser().resolve() / "mlartifacts"

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as plain JSON-ready values, without the secret key."""
        data = dataclasses.asdict(self)
        data["home"] = str(self.home)
        data["pseudonym_key"] = "<redacted>" if self.pseudonym_key else ""
        return data


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    *,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, the TOML file and the environment.

    Parameters
    ----------
    config_path
        TOML file; when ``None``, ``PRIORS_CONFIG`` names it, if set.
    environ
        Environment to read, ``os.environ`` by default.

    Raises
    ------
    ConfigError
        When the file cannot be read or a key or value does not fit the model.
    """
    env = dict(os.environ if environ is None else environ)
    settings = Settings()
    path = config_path or env.get("PRIORS_CONFIG")
    if path:
        try:
            with open(path, "rb") as stream:
                data = tomllib.load(stream)
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{path}: cannot read configuration: {err}") from err
        _apply(settings, data, origin=str(path))
    _apply(settings, _environment_overrides(env), origin="environment")
    return settings.resolved()


def _environment_overrides(env: dict[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in NON_SETTING_VARIABLES:
            continue
        key = name[len(ENV_PREFIX):].lower()
        section, _, sub = key.partition("__")
        if section not in _FIELD_NAMES:
            # Other tools may share the prefix; a typo is worth a warning, not a failure.
            log.warning("environment variable %s names no priors setting; ignored", name)
            continue
        if sub:
            overrides.setdefault(section, {})[sub] = value
        else:
            overrides[key] = value
    return overrides


_FIELD_NAMES = frozenset(item.name for item in dataclasses.fields(Settings))


def _apply(target: Any, data: dict[str, Any], *, origin: str) -> None:
    hints = get_type_hints(type(target))
    names = {f.name for f in dataclasses.fields(target)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{origin}: unknown setting {key!r} in {type(target).__name__}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: setting {key!r} must be a table")
            _apply(current, value, origin=origin)
            continue
        setattr(target, key, _coerce(value, hints[key], key=key, origin=origin))


def _coerce(value: Any, hint: Any, *, key: str, origin: str) -> Any:
    text_value = isinstance(value, str)
    hint_text = str(hint)
    try:
        if hint is bool:
            if text_value:
                lowered = value.strip().lower()
                if lowered not in {"1", "0", "true", "false", "yes", "no"}:
                    raise ValueError(value)
                return lowered in {"1", "true", "yes"}
            return bool(value)
        if hint is int:
            return int(value)
        if hint is float:
            return float(value)
        if hint is Path:
            return Path(value).expanduser()
        if hint_text.startswith("tuple"):
            items = value.split(",") if text_value else list(value)
            item_type = float if "float" in hint_text else int
            return tuple(item_type(item) for item in items)
        if hint_text.startswith("dict") and not isinstance(value, dict):
            raise ValueError("expected a table")
        return value
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{origin}: setting {key!r} has invalid value {value!r}: {err}") from err
