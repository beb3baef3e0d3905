"""Evaluate the change model and the subtraction baseline on the held-out synthetic pairs.

Prints a table of both methods, logs it to MLflow and, with ``--json FILE``, writes
``{"model": {...}, "baseline": {...}}`` with the figures that ``evaluate_pairs``
defines. The held-out seed and generator settings come from the bundle's
``configs/evaluate.json``.

Example::

    python jobs/evaluate_change_model.py --json out/change_evaluation.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from priors.argtypes import positive_int
from priors.change.benchmark import compare_methods, format_table
from priors.synthetic import pairs as synthetic_pairs

logger = logging.getLogger("priors.jobs.evaluate_change_model")


REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPOSITORY_ROOT / "models" / "ct_chest_change"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="MONAI bundle folder")
    parser.add_argument(
        "--pairs",
        type=positive_int,
        default=None,
        help="number of held-out pairs (default from evaluate.json)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the model and baseline figures to this JSON file",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=2,
        help="torch intra-op threads on the CPU; 1 runs faster on a host busy with other work",
    )
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu or cuda")
    parser.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")
    return parser.parse_args(argv)


def evaluate_bundle(
    bundle: Path, *, pairs: int | None = None, device: str = "auto", threads: int = 2
) -> dict[str, dict]:
    """Generate the held-out pairs of ``bundle``'s evaluate.json and compare model and baseline."""
    from priors.change.model import load_change_model

    settings = json.loads((bundle / "configs" / "evaluate.json").read_text(encoding="utf-8"))
    count = pairs or settings["pairs"]
    started = time.monotonic()
    held_out = synthetic_pairs.held_out_pairs(
        settings["seed"], count, shape=settings["pair_shape"], spacing=settings["spacing_mm"]
    )
    logger.info(
        "generated %d held-out pairs (seed %d) in %.0f s",
        count,
        settings["seed"],
        time.monotonic() - started,
    )
    model = load_change_model(bundle, device=device, torch_threads=threads)
    reports = compare_methods(held_out, model=model)
    for report in reports.values():
        report["held_out_seed"] = settings["seed"]
        report["generator_version"] = synthetic_pairs.GENERATOR_VERSION
        report["weights_sha256"] = model.weights_sha256
    return reports


def log_to_mlflow(bundle: Path, reports: dict[str, dict], table: str) -> str:
    import mlflow
    from train_change_model import flatten_metrics, start_mlflow_run

    with start_mlflow_run("evaluate-ct-chest-change") as run:
        model_report = reports["model"]
        mlflow.log_params(
            {
                "bundle": str(bundle),
                "held_out_seed": model_report["held_out_seed"],
                "pairs": model_report["pairs"],
                "generator_version": model_report["generator_version"],
                "weights_sha256": model_report["weights_sha256"],
            }
        )
        mlflow.set_tag("priors.job", "evaluate_change_model")
        for name, report in reports.items():
            mlflow.log_metrics(flatten_metrics(report, name))
        mlflow.log_dict(reports, "evaluation.json")
        mlflow.log_text(table, "evaluation.txt")
        return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    reports = evaluate_bundle(
        arguments.bundle, pairs=arguments.pairs, device=arguments.device, threads=arguments.threads
    )
    table = format_table(reports)
    print(table)
    if arguments.json is not None:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
        logger.info("wrote %s", arguments.json)
    if not arguments.no_mlflow:
        run_id = log_to_mlflow(arguments.bundle, reports, table)
        logger.info("logged the evaluation to MLflow run %s", run_id)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
