"""Training examples from synthetic pairs, made in the trainer's process or streamed from another.

An example is ``(inputs, labels)``: the network input that ``stack_inputs`` builds
from a synthetic pair and the pair's (z, y, x) uint8 change labels.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from priors.change.preprocessing import stack_inputs
from priors.synthetic import pairs as synthetic_pairs

__all__ = ["ExampleStream", "make_examples"]

logger = logging.getLogger(__name__)


def make_examples(
    seed: int,
    count: int,
    *,
    first: int = 0,
    preprocessing: Mapping[str, Any],
    shape: Sequence[int],
    spacing: Sequence[float],
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[synthetic_pairs.TrainingPair]]:
    """Return the examples of training pairs ``first`` to ``first + count - 1``, and the pairs."""
    pairs = synthetic_pairs.training_pairs(seed, count, first=first, shape=shape, spacing=spacing)
    examples = [(stack_inputs(p.current, p.prior, preprocessing), p.labels) for p in pairs]
    return examples, pairs


def _produce(
    output: multiprocessing.Queue,
    stop: Any,
    seed: int,
    first: int,
    preprocessing: dict[str, Any],
    shape: list[int],
    spacing: list[float],
    parent: int,
) -> None:
    index = first
    # A parent killed by SIGTERM never sets ``stop``, so a changed parent id ends the loop.
    # The id comes from the parent, because it may die before this process has started.
    while not stop.is_set() and os.getppid() == parent:
        examples, pairs = make_examples(
            seed, 1, first=index, preprocessing=preprocessing, shape=shape, spacing=spacing
        )
        item = (index, examples[0], pairs[0].has_change)
        while not stop.is_set() and os.getppid() == parent:
            try:
                output.put(item, timeout=0.5)
                break
            except queue.Full:
                continue
        index += 1
    # Exit without joining the queue's feeder thread, which blocks while no process reads.
    output.cancel_join_thread()


class ExampleStream:
    """Generate training examples in a child process, pair after pair of the training stream.

    Use as a context manager; ``take()`` returns whatever examples are ready without
    waiting. The child starts at pair ``first`` and counts up, so a stream seeded
    like the initial pool continues it without repeating a pair.

    Parameters
    ----------
    seed, first
        Training-stream seed and the index of the first pair to generate.
    preprocessing
        The bundle's ``preprocessing`` settings, for ``stack_inputs``.
    shape, spacing
        Grid of each pair, (z, y, x) voxels and ``(sx, sy, sz)`` mm.
    capacity
        Maximum number of examples in the queue; the child waits while it is full.
    """

    def __init__(
        self,
        seed: int,
        *,
        first: int,
        preprocessing: Mapping[str, Any],
        shape: Sequence[int],
        spacing: Sequence[float],
        capacity: int = 16,
    ) -> None:
        # Spawn, not fork: the parent may hold torch and Ray threads that a fork copies
        # in a locked state.
        context = multiprocessing.get_context("spawn")
        self._queue = context.Queue(maxsize=capacity)
        self._stop = context.Event()
        self._process = context.Process(
            target=_produce,
            args=(
                self._queue,
                self._stop,
                int(seed),
                int(first),
                dict(preprocessing),
                [int(s) for s in shape],
                [float(s) for s in spacing],
                os.getpid(),
            ),
            name="priors-example-stream",
            daemon=True,
        )
        self.produced = 0
        self.without_change = 0

    def __enter__(self) -> ExampleStream:
        self._process.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def take(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return the examples that are ready now, possibly none."""
        ready = []
        while True:
            try:
                _, example, has_change = self._queue.get_nowait()
            except queue.Empty:
                break
            ready.append(example)
            self.produced += 1
            self.without_change += not has_change
        if not ready and not self._process.is_alive() and self._process.exitcode not in (None, 0):
            raise RuntimeError(
                f"the example generator process stopped with exit code {self._process.exitcode}"
            )
        return ready

    def close(self) -> None:
        """Stop the child process and drop what it has queued."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._queue.close()
        self._queue.join_thread()
