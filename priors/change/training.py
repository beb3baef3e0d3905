"""The supervised training loop of the change network (torch, CPU or GPU).

The loop takes ready examples and does not depend on their source. The training
job builds them from synthetic pairs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TrainingHistory", "train_change_network"]

logger = logging.getLogger(__name__)


@dataclass
class TrainingHistory:
    """Per-epoch mean losses and the run's totals."""

    epoch_loss: list[float] = field(default_factory=list)
    epoch_dice_loss: list[float] = field(default_factory=list)
    epoch_ce_loss: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    examples_seen: int = 0
    stopped_by_time: bool = False


def _crop_start(
    labels: np.ndarray, roi_size: Sequence[int], rng: np.random.Generator, focus: bool
) -> list[int]:
    """Choose a crop corner: anywhere, or (``focus``) so that a random change voxel is inside."""
    limits = [s - r for s, r in zip(labels.shape, roi_size, strict=True)]
    if focus:
        changed = np.flatnonzero(labels)
        if len(changed):
            voxel = np.unravel_index(int(changed[rng.integers(len(changed))]), labels.shape)
            # The change voxel lands anywhere in the middle half of the crop, so the
            # network does not learn that change sits at the centre.
            starts = []
            for position, size, limit in zip(voxel, roi_size, limits, strict=True):
                offset = int(rng.integers(size // 4, size - size // 4))
                starts.append(int(np.clip(position - offset, 0, limit)))
            return starts
    return [int(rng.integers(0, limit + 1)) for limit in limits]


def _random_crop_and_flip(
    inputs: np.ndarray,
    labels: np.ndarray,
    roi_size: Sequence[int],
    rng: np.random.Generator,
    *,
    focus: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    starts = _crop_start(labels, roi_size, rng, focus)
    window = tuple(slice(b, b + r) for b, r in zip(starts, roi_size, strict=True))
    inputs = inputs[(slice(None), *window)]
    labels = labels[window]
    # Left-right and anterior-posterior mirror images are plausible chests, head-feet ones are not.
    for axis in (1, 2):
        if rng.random() < 0.5:
            inputs = np.flip(inputs, axis=axis + 1)
            labels = np.flip(labels, axis=axis)
    return np.ascontiguousarray(inputs), np.ascontiguousarray(labels)


def train_change_network(
    network: Any,
    examples: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    roi_size: Sequence[int],
    epochs: int,
    fresh_examples: Callable[[], list[tuple[np.ndarray, np.ndarray]]] | None = None,
    focus_probability: float = 0.0,
    batch_size: int = 4,
    learning_rate: float = 2e-3,
    change_class_weight: float = 4.0,
    max_seconds: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainingHistory:
    """Train ``network`` in place on (inputs, labels) examples.

    Parameters
    ----------
    network
        A torch module mapping (B, C, z, y, x) inputs to (B, 3, z, y, x) logits.
    examples
        ``(inputs, labels)``: (C, z, y, x) float32 and (z, y, x) uint8, each at
        least ``roi_size``; a random ``roi_size`` crop of each is used per epoch.
    epochs
        Passes over the examples; fewer when ``max_seconds`` runs out first.
    fresh_examples
        Called before every step. The examples it returns replace the oldest ones
        of the pool, so that a generator running beside the loop keeps the data new.
        An epoch is then as many steps as one pass over the pool takes.
    focus_probability
        Share of crops placed so that they contain a change voxel, when the example
        has one; the rest are placed uniformly.
    change_class_weight
        Cross-entropy weight of the two change classes relative to no change, since
        change voxels are about 1 % of the training voxels.
    max_seconds
        Wall-time budget; the learning rate follows a cosine from ``learning_rate``
        to 0 over whichever of the steps or the time ends first.
    on_epoch
        Called with (epoch, mean loss) after each epoch.

    Returns
    -------
    TrainingHistory
    """
    import torch
    from monai.losses import DiceLoss

    if not examples:
        raise ValueError("no training examples given; expected at least one (inputs, labels) pair")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pool = list(examples)
    oldest = 0
    replaced = 0
    network.to(device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    weights = torch.tensor([1.0, change_class_weight, change_class_weight], device=device)
    cross_entropy = torch.nn.CrossEntropyLoss(weight=weights)
    # Dice is pooled over the batch and taken on the change classes only, because a
    # patch without change has no per-sample Dice.
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)

    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total_steps = steps_per_epoch * epochs
    history = TrainingHistory()
    started = time.monotonic()

    for epoch in range(epochs):
        order = rng.permutation(len(pool))
        totals = np.zeros(3)
        epoch_steps = 0
        for first in range(0, len(order), batch_size):
            elapsed = time.monotonic() - started
            progress = history.steps / total_steps
            if max_seconds:
                if elapsed >= max_seconds:
                    history.stopped_by_time = True
                    break
                progress = max(progress, elapsed / max_seconds)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

            if fresh_examples is not None:
                for example in fresh_examples():
                    pool[oldest] = example
                    oldest = (oldest + 1) % len(pool)
                    replaced += 1
            crops = [
                _random_crop_and_flip(
                    *pool[i], roi_size, rng, focus=bool(rng.random() < focus_probability)
                )
                for i in order[first : first + batch_size]
            ]
            inputs = torch.from_numpy(np.stack([c[0] for c in crops])).to(device)
            labels = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64)).to(device)
            logits = network(inputs)
            dice_loss = dice(logits, labels[:, None])
            ce_loss = cross_entropy(logits, labels)
            loss = dice_loss + ce_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.steps += 1
            epoch_steps += 1
            totals += (loss.item(), dice_loss.item(), ce_loss.item())

        # A last epoch cut short by the time budget averages over the steps it ran.
        if epoch_steps:
            mean = totals / epoch_steps
            history.epoch_loss.append(float(mean[0]))
            history.epoch_dice_loss.append(float(mean[1]))
            history.epoch_ce_loss.append(float(mean[2]))
            logger.info(
                "epoch %d: loss %.4f (dice %.4f, cross-entropy %.4f), %d steps, %d new examples, "
                "%.0f s",
                epoch + 1,
                mean[0],
                mean[1],
                mean[2],
                history.steps,
                replaced,
                time.monotonic() - started,
            )
            if on_epoch is not None:
                on_epoch(epoch, float(mean[0]))
        if history.stopped_by_time:
            logger.info(
                "training stopped by its %.0f s budget after %d steps", max_seconds, history.steps
            )
            break

    history.seconds = time.monotonic() - started
    history.examples_seen = len(pool) + replaced
    network.eval()
    return history
