"""The training loop's crops, its example pool and the process that streams new examples."""

from __future__ import annotations

import time

import numpy as np
import pytest

from priors.change.examples import ExampleStream, make_examples
from priors.change.training import _random_crop_and_flip, train_change_network

PREPROCESSING = {
    "center_hu": 40.0,
    "scale_hu": 50.0,
    "channels": ["current", "prior", "current - prior"],
}


def _example(shape=(16, 32, 32), change_at=None, channels=3):
    inputs = np.zeros((channels, *shape), dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    if change_at is not None:
        labels[change_at] = 1
        inputs[(slice(None), *change_at)] = 1.0
    return inputs, labels


def test_focused_crops_contain_the_change():
    inputs, labels = _example(change_at=(15, 31, 0))
    rng = np.random.default_rng(3)

    focused = [
        _random_crop_and_flip(inputs, labels, (8, 16, 16), rng, focus=True)[1].any()
        for _ in range(50)
    ]
    uniform = [
        _random_crop_and_flip(inputs, labels, (8, 16, 16), rng, focus=False)[1].any()
        for _ in range(200)
    ]

    assert all(focused)
    # A corner voxel falls in about 1 in 9 x 17 x 17 uniform crops.
    assert sum(uniform) < 20


def test_focused_crop_without_change():
    inputs, labels = _example()
    crop_inputs, crop_labels = _random_crop_and_flip(
        inputs, labels, (8, 16, 16), np.random.default_rng(0), focus=True
    )
    assert crop_inputs.shape == (3, 8, 16, 16)
    assert crop_labels.shape == (8, 16, 16)


def _tiny_network():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=3, out_channels=3, channels=(4, 8), strides=(2,))


def test_training_takes_fresh_examples_into_the_pool():
    import torch

    torch.set_num_threads(1)
    pool = [_example(change_at=(slice(4, 8), slice(8, 16), slice(8, 16))) for _ in range(4)]
    handed_out = []

    def fresh():
        batch = [_example(change_at=(slice(2, 6), slice(2, 10), slice(2, 10)))]
        handed_out.extend(batch)
        return batch

    history = train_change_network(
        _tiny_network(),
        pool,
        roi_size=(8, 16, 16),
        epochs=3,
        batch_size=2,
        fresh_examples=fresh,
        focus_probability=0.5,
    )

    assert history.steps == 6
    assert len(handed_out) == 6
    assert history.examples_seen == 10
    assert len(history.epoch_loss) == 3
    assert all(np.isfinite(history.epoch_loss))


def test_training_rejects_empty_examples():
    with pytest.raises(ValueError, match="no training examples"):
        train_change_network(_tiny_network(), [], roi_size=(8, 16, 16), epochs=1)


def test_stream_continues_the_training_stream():
    shape, spacing = (16, 24, 24), (1.5, 1.5, 2.0)
    expected, _ = make_examples(
        5, 2, first=3, preprocessing=PREPROCESSING, shape=shape, spacing=spacing
    )

    received = []
    with ExampleStream(
        5, first=3, preprocessing=PREPROCESSING, shape=shape, spacing=spacing, capacity=2
    ) as stream:
        deadline = time.monotonic() + 120
        while len(received) < 2 and time.monotonic() < deadline:
            received.extend(stream.take())
            time.sleep(0.05)
    assert len(received) >= 2
    for (inputs, labels), (expected_inputs, expected_labels) in zip(
        received[:2], expected, strict=True
    ):
        assert np.array_equal(labels, expected_labels)
        assert np.allclose(inputs, expected_inputs)
    assert stream.produced == len(received)


_STREAM_SCRIPT = """
import sys
from priors.change.examples import ExampleStream
stream = ExampleStream(
    1, first=0, preprocessing={"center_hu": 40.0, "scale_hu": 50.0},
    shape=(16, 24, 24), spacing=(1.5, 1.5, 2.0), capacity=1,
)
stream.__enter__()
print(stream._process.pid, flush=True)
sys.stdin.read()
"""


def test_stream_child_exits_when_parent_is_killed():
    import os
    import signal
    import subprocess
    import sys

    parent = subprocess.Popen(
        [sys.executable, "-c", _STREAM_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=30)

    deadline = time.monotonic() + 30
    alive = True
    while alive and time.monotonic() < deadline:
        try:
            os.kill(child, 0)
            time.sleep(0.2)
        except ProcessLookupError:
            alive = False
    assert not alive
