"""Time the change model on pairs one at a time against pairs batched in stacks.

The pairs come from the training stream of ``priors.synthetic.pairs`` (40 x 80 x 80
voxels at the bundle's spacing, so no resampling). Each way of running is warmed up on
one stack first, so that one-off costs of the first calls are left out. Then it is
timed ``--repeats`` times over all pairs, and the fastest run counts because the host
may be busy. The script prints seconds per pair for both, their ratio, and the
largest probability difference between the two.

Run from the repository root::

    .venv/bin/python benchmarks/change_batch.py [--pairs 16] [--batch-size 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO_ROOT / "models" / "ct_chest_change"


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    """Return the shortest wall time of ``repeats`` calls of ``run``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="change bundle")
    parser.add_argument("--pairs", type=int, default=16, help="training-stream pairs")
    parser.add_argument("--seed", type=int, default=0, help="training-stream seed")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per stack")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each way")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or auto")
    args = parser.parse_args(argv)

    import torch

    from priors.change import load_change_model
    from priors.synthetic.pairs import training_pairs

    torch.set_num_threads(args.threads)
    model = load_change_model(args.bundle, device=args.device, torch_threads=args.threads)
    pairs = [(p.current, p.prior, p.spacing) for p in training_pairs(args.seed, args.pairs)]

    def one_by_one():
        return [model.predict(current, prior, spacing=spacing) for current, prior, spacing in pairs]

    def batched():
        return model.predict_batch(pairs, batch_size=args.batch_size)

    # Warm-up: the first calls carry one-off costs (allocation, kernel set-up).
    model.predict(pairs[0][0], pairs[0][1], spacing=pairs[0][2])
    model.predict_batch(pairs[: args.batch_size], batch_size=args.batch_size)
    single_s = _best_seconds(one_by_one, args.repeats) / len(pairs)
    batched_s = _best_seconds(batched, args.repeats) / len(pairs)

    one_by_one_outputs, batched_outputs = one_by_one(), batched()
    difference = max(
        float(np.abs(a.probability - b.probability).max())
        for a, b in zip(one_by_one_outputs, batched_outputs, strict=True)
    )
    labels_equal = all(
        np.array_equal(a.labels, b.labels)
        for a, b in zip(one_by_one_outputs, batched_outputs, strict=True)
    )

    shape = "x".join(str(n) for n in pairs[0][0].shape)
    print(
        f"{len(pairs)} pairs of {shape} voxels, torch {torch.__version__} on "
        f"{model.device} with {torch.get_num_threads()} thread(s), best of {args.repeats}"
    )
    print(f"one by one:           {single_s:.3f} s per pair")
    print(f"batched ({args.batch_size} per stack): {batched_s:.3f} s per pair")
    print(f"ratio one-by-one / batched: {single_s / batched_s:.2f}")
    print(f"largest probability difference: {difference:.2e}; labels equal: {labels_equal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
