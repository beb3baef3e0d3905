"""The committed MONAI bundle: loading, scope and sliding-window prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from priors.change import ChangeModel, load_change_model

BUNDLE = Path(__file__).resolve().parents[1] / "models" / "ct_chest_change"
# The brief for committed weights: a small network, well under 10 MB.
MAX_WEIGHTS_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def model() -> ChangeModel:
    return load_change_model(BUNDLE, device="cpu", torch_threads=1)


def test_bundle_parses_with_monai():
    import torch
    from monai.bundle import ConfigParser
    from monai.inferers import SlidingWindowInferer

    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    network = parser.get_parsed_content("network_def")
    inferer = parser.get_parsed_content("inferer")
    state = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)

    network.load_state_dict(state)
    assert isinstance(inferer, SlidingWindowInferer)
    assert (BUNDLE / "models" / "model.pt").stat().st_size < MAX_WEIGHTS_BYTES


def test_bundle_metadata_scope_and_training():
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text(encoding="utf-8"))

    assert metadata["scope"] == {"modalities": ["CT"], "body_regions": ["CHEST"]}
    inference = json.loads((BUNDLE / "configs" / "inference.json").read_text(encoding="utf-8"))
    inputs = metadata["network_data_format"]["inputs"]["image"]

    # The metadata, the preprocessing and the network agree on the input channels.
    channels = inference["preprocessing"]["channels"]
    assert inputs["num_channels"] == len(channels)
    assert inputs["num_channels"] == inference["network_def"]["in_channels"]
    assert len(inputs["channel_def"]) == len(channels)
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    training = metadata["training"]
    assert training["generator_version"]
    assert training["pairs"] > 0
    assert "lesion_f1_5mm" in training["held_out"]["model"]


def test_model_attributes(model):
    assert model.name == "CT chest change detection"
    assert model.version
    assert len(model.weights_sha256) == 64
    assert model.device == "cpu"
    assert model.bundle_dir == BUNDLE


def test_model_predicts_small_random_pair(model):
    rng = np.random.default_rng(0)
    # Smaller than the roi on every axis, so the inferer pads and crops back.
    shape = (20, 40, 36)
    current = rng.normal(40.0, 20.0, shape).astype(np.float32)
    prior = rng.normal(40.0, 20.0, shape).astype(np.float32)

    output = model.predict(current, prior, spacing=(1.5, 1.5, 2.0))

    assert output.method == "model"
    assert output.probability.shape == shape
    assert output.probability.dtype == np.float32
    assert output.labels.shape == shape
    assert output.labels.dtype == np.uint8
    assert set(np.unique(output.labels)) <= {0, 1, 2}
    assert 0.0 <= output.probability.min() <= output.probability.max() <= 1.0
    assert output.parameters["roi_size"] == [32, 64, 64]
    assert output.parameters["weights_sha256"] == model.weights_sha256
    assert output.parameters["resampled"] is False


def test_model_resamples_other_spacing(model):
    rng = np.random.default_rng(1)
    shape = (12, 50, 50)
    current = rng.normal(-850.0, 20.0, shape).astype(np.float32)

    output = model.predict(current, current.copy(), spacing=(0.8, 0.8, 3.0))

    assert output.labels.shape == shape
    assert output.probability.shape == shape
    assert output.parameters["resampled"] is True


def test_model_rejects_mismatched_pair(model):
    with pytest.raises(ValueError, match="expected two 3-D"):
        model.predict(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), spacing=(1.0, 1.0, 1.0))


def test_in_scope_accepts_ct_chest(model):
    assert model.in_scope(modality="CT", body_part="chest") == (True, "")


def test_in_scope_rejects_mr(model):
    ok, reason = model.in_scope(modality="MR", body_part="LSPINE")

    assert not ok
    assert reason == "model not applicable: trained for CT CHEST, pair is MR LSPINE"


def test_in_scope_rejects_missing_body_part(model):
    ok, reason = model.in_scope(modality="CT", body_part="")

    assert not ok
    assert reason.endswith("pair is CT (no body part)")


def test_load_reports_missing_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata file of the change bundle not found"):
        load_change_model(tmp_path)
