"""Batched change-model inference: the model's ``predict_batch``, the benchmark and the pipeline.

A pair predicted in a stack must get what it gets alone. The pairs come from the
training stream of ``priors.synthetic.pairs`` (40 x 80 x 80 voxels at the bundle's
spacing), cropped or given another spacing where a test needs other grid shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from priors.change import ChangeModel, ChangeOutput, load_change_model
from priors.change.benchmark import compare_methods
from priors.change.evaluation import evaluate_pairs
from priors.synthetic.pairs import training_pairs

BUNDLE = Path(__file__).resolve().parents[1] / "models" / "ct_chest_change"
# Batching changes only how windows are grouped into forward passes, so float32
# results may differ in the last bits. 1e-4 is far below any threshold that matters.
PROBABILITY_TOLERANCE = 1e-4
PAIR_SEED = 11


@pytest.fixture(scope="module")
def model() -> ChangeModel:
    return load_change_model(BUNDLE, device="cpu", torch_threads=1)


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    return [(p.current, p.prior, p.spacing) for p in training_pairs(PAIR_SEED, 4)]


def _alone(model: ChangeModel, pair) -> ChangeOutput:
    current, prior, spacing = pair
    return model.predict(current, prior, spacing=spacing)


def _assert_same(batched: ChangeOutput, alone: ChangeOutput) -> None:
    assert batched.labels.shape == alone.labels.shape
    np.testing.assert_array_equal(batched.labels, alone.labels)
    np.testing.assert_allclose(
        batched.probability, alone.probability, rtol=0, atol=PROBABILITY_TOLERANCE
    )
    assert batched.probability.dtype == np.float32
    assert batched.labels.dtype == np.uint8


def _cropped(pair, x_voxels: int):
    current, prior, spacing = pair
    return current[:, :, :x_voxels].copy(), prior[:, :, :x_voxels].copy(), spacing


def test_batch_matches_one_by_one(model, pairs):
    batched = model.predict_batch(pairs, batch_size=4)

    assert len(batched) == len(pairs)
    for output, pair in zip(batched, pairs, strict=True):
        alone = _alone(model, pair)
        _assert_same(output, alone)
        assert output.parameters["pair_batch"] == 4
        assert alone.parameters["pair_batch"] == 1
        without_batch = {k: v for k, v in output.parameters.items() if k != "pair_batch"}
        assert without_batch == {k: v for k, v in alone.parameters.items() if k != "pair_batch"}


def test_wider_forward_pass_matches_alone(model, pairs, monkeypatch):
    """On an accelerator a stack's forward passes take more windows, with the same results."""
    import priors.change.model as change_model

    monkeypatch.setattr(change_model, "_device_type", lambda device: "cuda")
    batched = model.predict_batch(pairs[:3], batch_size=3)
    monkeypatch.undo()

    for output, pair in zip(batched, pairs, strict=False):
        _assert_same(output, _alone(model, pair))


def test_batch_keeps_input_order(model, pairs):
    forward = model.predict_batch(pairs, batch_size=4)
    backward = model.predict_batch(pairs[::-1], batch_size=4)

    for output, reversed_output in zip(forward, backward[::-1], strict=True):
        np.testing.assert_array_equal(output.labels, reversed_output.labels)
        np.testing.assert_allclose(
            output.probability, reversed_output.probability, atol=PROBABILITY_TOLERANCE
        )


def test_mixed_shapes_in_one_call(model, pairs):
    resampled = (pairs[3][0], pairs[3][1], (1.0, 1.0, 2.0))
    mixed = [
        pairs[0],
        _cropped(pairs[1], 64),
        pairs[2],
        resampled,
        _cropped(pairs[3], 64),
    ]

    outputs = model.predict_batch(mixed, batch_size=4)

    assert [o.parameters["pair_batch"] for o in outputs] == [2, 2, 2, 1, 2]
    assert [o.labels.shape for o in outputs] == [pair[0].shape for pair in mixed]
    assert outputs[3].parameters["resampled"] is True
    for output, pair in zip(outputs, mixed, strict=True):
        _assert_same(output, _alone(model, pair))


def test_batch_size_limits_stack(model, pairs):
    outputs = model.predict_batch(pairs[:3], batch_size=2)

    assert [o.parameters["pair_batch"] for o in outputs] == [2, 2, 1]
    _assert_same(outputs[2], _alone(model, pairs[2]))


def test_batch_of_one_equals_predict(model, pairs):
    (output,) = model.predict_batch(pairs[:1])

    _assert_same(output, _alone(model, pairs[0]))
    assert output.parameters["pair_batch"] == 1


def test_class_probabilities_give_the_labels(model, pairs):
    from priors.change.postprocess import label_changes

    probabilities = model.class_probabilities(pairs[:2])
    outputs = model.predict_batch(pairs[:2])

    settings = {
        key: outputs[0].parameters[key]
        for key in ("change_threshold", "min_volume_mm3", "min_peak", "border_margin_mm")
    }
    for pair, pair_probabilities, output in zip(pairs, probabilities, outputs, strict=False):
        assert pair_probabilities.shape == (3, *pair[0].shape)
        np.testing.assert_allclose(pair_probabilities.sum(axis=0), 1.0, atol=1e-5)
        relabelled = label_changes(pair_probabilities, spacing=pair[2], **settings)
        np.testing.assert_array_equal(relabelled, output.labels)
        np.testing.assert_allclose(1.0 - pair_probabilities[0], output.probability, atol=1e-6)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_voxels_rejected(model, pairs, value):
    current, prior, spacing = pairs[0]
    broken = prior.copy()
    broken[3, 4, 5] = value

    with pytest.raises(ValueError, match="pair 1: the prior volume has 1 NaN or infinite"):
        model.predict_batch([pairs[1], (current, broken, spacing)])


@pytest.mark.parametrize("spacing", [(1.5, 0.0, 2.0), (1.5, 1.5, -2.0), (np.nan, 1.5, 2.0)])
def test_bad_spacing_rejected(model, pairs, spacing):
    current, prior, _ = pairs[0]
    with pytest.raises(ValueError, match="must be three positive finite mm"):
        model.predict(current, prior, spacing=spacing)


def test_empty_batch(model):
    assert model.predict_batch([]) == []


def test_default_batch_size_from_config(model):
    config = json.loads((BUNDLE / "configs" / "inference.json").read_text(encoding="utf-8"))

    assert model.pair_batch_size == config.get("pair_batch_size", 4)


def test_bad_pair_rejected_before_inference(model, pairs):
    bad = (np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1.0, 1.0, 1.0))

    with pytest.raises(ValueError, match=r"pair 1: .*expected two 3-D"):
        model.predict_batch([pairs[0], bad])


def test_batch_size_below_one_rejected(model, pairs):
    with pytest.raises(ValueError, match="batch_size is 0, expected at least 1"):
        model.predict_batch(pairs, batch_size=0)


def test_compare_methods_batches_the_model(model, monkeypatch):
    labelled = training_pairs(PAIR_SEED, 3)
    stacks: list[int] = []
    predict_batch = model.predict_batch

    def counting_predict_batch(pairs, **options):
        stacks.append(len(pairs))
        return predict_batch(pairs, **options)

    monkeypatch.setattr(model, "predict_batch", counting_predict_batch)
    reports = compare_methods(labelled, model=model, batch_size=2)
    monkeypatch.undo()

    assert stacks == [2, 1]

    alone = [_alone(model, (p.current, p.prior, p.spacing)) for p in labelled]
    expected = evaluate_pairs(
        alone,
        [p.labels for p in labelled],
        spacing=[p.spacing for p in labelled],
        misregistration_mm=[float(p.nuisances.get("misregistration_mm", 0.0)) for p in labelled],
    )
    assert reports["model"]["lesion_f1_5mm"] == expected["lesion_f1_5mm"]
    assert reports["model"]["pairs"] == 3
    assert reports["model"]["seconds_per_pair"] > 0
    assert reports["baseline"]["seconds_per_pair"] > 0


# The pipeline path: one person's pairs reach the model through one predict_batch call.


class _FakeModel:
    """Stands in for ChangeModel in the pipeline and records how it was called."""

    name = "fake change model"
    version = "0"
    weights_sha256 = "0" * 64
    device = "cpu"

    def __init__(
        self, *, pair_batch_size: int, batch_error: bool = False, failing_call: int | None = None
    ) -> None:
        self.pair_batch_size = pair_batch_size
        self.batch_error = batch_error
        self.failing_call = failing_call
        self.batch_calls: list[int] = []
        self.single_calls = 0

    def in_scope(self, *, modality: str, body_part: str) -> tuple[bool, str]:
        return True, ""

    def predict_batch(self, pairs, *, batch_size=None) -> list[ChangeOutput]:
        self.batch_calls.append(len(pairs))
        if self.batch_error:
            raise RuntimeError("out of device memory")
        return [self._output(current, len(pairs)) for current, _, _ in pairs]

    def predict(self, current, prior, *, spacing) -> ChangeOutput:
        self.single_calls += 1
        if self.single_calls == self.failing_call:
            raise RuntimeError("network returned NaN")
        return self._output(current, 1)

    @staticmethod
    def _output(current: np.ndarray, pair_batch: int) -> ChangeOutput:
        labels = np.zeros(current.shape, dtype=np.uint8)
        labels[2:5, 10:14, 10:14] = 1
        return ChangeOutput(labels.astype(np.float32), labels, "model", {"pair_batch": pair_batch})


@pytest.fixture(scope="module")
def person(tmp_path_factory):
    """Plan one synthetic person with one current study and three priors (four pairs)."""
    from priors.config import load_settings
    from priors.planning import plan_job
    from priors.synthetic import write_cohort
    from priors.synthetic.cohort import MASK_FOLDER

    root = tmp_path_factory.mktemp("batch-person")
    write_cohort(root / "cohort", seed=3, n_patients=1, n_timepoints=3, matrix=32, coverage_mm=80.0)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("PRIORS_HOME", str(root / "home"))
        monkeypatch.setenv("PRIORS_PSEUDONYM_KEY", "test-key-not-secret")
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.delenv("PRIORS_CONFIG", raising=False)
        settings = load_settings()
        sources = sorted(
            p for p in (root / "cohort").iterdir() if p.is_dir() and p.name != MASK_FOLDER
        )
        plan = plan_job(
            sources, settings=settings, issuers={}, out_dir=root / "out", job_id="batch-test"
        )
    (task,) = plan.tasks
    assert len(task.pairs) >= 2
    return task, settings


def _prepare(person, fake: _FakeModel):
    from priors.pipeline import prepare_person

    task, settings = person
    return prepare_person(task, settings=settings, model_loader=lambda: fake)


def test_pipeline_runs_person_pairs_in_one_batch(person):
    task, _ = person
    fake = _FakeModel(pair_batch_size=8)

    result = _prepare(person, fake)

    assert fake.batch_calls == [len(task.pairs)]
    assert fake.single_calls == 0
    assert [p.pair_id for p in result.pairs] == [p.pair_id for p in task.pairs]
    for pair in result.pairs:
        assert pair.status == "finished"
        assert pair.change["method"] == "model"
        assert pair.change["parameters"]["pair_batch"] == len(task.pairs)
        assert pair.change["lesion_count"] == 1
        assert (Path(pair.artifacts_dir) / "provenance.json").is_file()


def test_pipeline_batches_up_to_model_batch_size(person):
    task, _ = person
    fake = _FakeModel(pair_batch_size=2)

    result = _prepare(person, fake)

    full, rest = divmod(len(task.pairs), 2)
    assert fake.batch_calls == [2] * full
    assert fake.single_calls == rest
    assert {p.status for p in result.pairs} == {"finished"}


def test_pipeline_falls_back_to_single_pairs(person):
    task, _ = person
    fake = _FakeModel(pair_batch_size=8, batch_error=True, failing_call=2)

    result = _prepare(person, fake)

    assert fake.batch_calls == [len(task.pairs)]
    assert fake.single_calls == len(task.pairs)
    statuses = [p.status for p in result.pairs]
    assert statuses[1] == "failed"
    assert result.pairs[1].reason == "RuntimeError: network returned NaN"
    assert statuses[:1] + statuses[2:] == ["finished"] * (len(task.pairs) - 1)
    assert all(
        p.change["parameters"]["pair_batch"] == 1 for i, p in enumerate(result.pairs) if i != 1
    )
