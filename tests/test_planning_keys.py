"""The model part of a pair key follows the bundle's weights file and scope."""

from __future__ import annotations

import json

from priors.config import Settings
from priors.pipeline import SeriesRef
from priors.planning import _bundle_identity, _model_version_for


def _bundle(root, weights: bytes) -> None:
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(parents=True, exist_ok=True)
    metadata = {"name": "test bundle", "version": "1.0",
                "scope": {"modalities": ["CT"], "body_regions": ["CHEST"]}}
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (root / "models" / "model.pt").write_bytes(weights)


def _series(modality: str, body_part: str) -> SeriesRef:
    return SeriesRef("1.2.3", "1.2", "2020-01-01", modality, body_part, "", 1, ())


def test_model_version_follows_weights(tmp_path):
    settings = Settings()
    settings.change.bundle = str(tmp_path / "bundle")
    _bundle(tmp_path / "bundle", b"first weights")
    _bundle_identity.cache_clear()
    first = _model_version_for(_series("CT", "CHEST"), settings)

    _bundle(tmp_path / "bundle", b"retrained weights")
    _bundle_identity.cache_clear()
    second = _model_version_for(_series("CT", "CHEST"), settings)

    assert first.startswith("test bundle:1.0:")
    assert first != second


def test_model_version_outside_scope(tmp_path):
    settings = Settings()
    settings.change.bundle = str(tmp_path / "bundle")
    _bundle(tmp_path / "bundle", b"weights")
    _bundle_identity.cache_clear()
    assert _model_version_for(_series("MR", "LSPINE"), settings) == "baseline"
