"""Train the CT chest change model on synthetic pairs and publish it as a MONAI bundle.

Runs as ``python jobs/train_change_model.py`` (local) or through ``ray job submit``;
with Ray, pair generation and training run in one Ray task and this driver writes the
bundle and MLflow. It logs parameters, per-epoch losses, held-out metrics and the
bundle to MLflow, and registers the bundle as a version of the registered model
``priors-ct-chest-change`` tagged with the weights' SHA-256.

Example::

    python jobs/train_change_model.py --threads 1 --out /tmp/my_bundle
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from priors.argtypes import non_negative_int, positive_float, positive_int
from priors.change.examples import ExampleStream, make_examples
from priors.change.model import sha256_file
from priors.synthetic import pairs as synthetic_pairs

logger = logging.getLogger("priors.jobs.train_change_model")

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPOSITORY_ROOT / "models" / "ct_chest_change"
REGISTERED_MODEL_NAME = "priors-ct-chest-change"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="passes over the training pairs (default from train.json)",
    )
    parser.add_argument(
        "--pairs",
        type=positive_int,
        default=None,
        help="number of synthetic training pairs (default from train.json)",
    )
    parser.add_argument(
        "--minutes",
        type=positive_float,
        default=None,
        help="training wall-time budget in minutes; training stops when it runs out",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_BUNDLE,
        help=(
            "bundle folder to write the weights and metadata into "
            "(default: the repository's models/ct_chest_change, replaced in place)"
        ),
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=None,
        help="training seed (default from train.json); pairs come from the training stream",
    )
    parser.add_argument(
        "--held-out-pairs",
        type=positive_int,
        default=None,
        help="held-out pairs to evaluate on (default from evaluate.json)",
    )
    parser.add_argument(
        "--validation-pairs",
        type=positive_int,
        default=None,
        help="validation pairs to choose the post-processing on (default from train.json)",
    )
    parser.add_argument(
        "--ray",
        choices=("auto", "on", "off"),
        default="auto",
        help="run the training in a Ray task: auto uses Ray when a cluster address is configured",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=2,
        help="torch intra-op threads on the CPU; 1 runs faster on a host busy with other work",
    )
    parser.add_argument(
        "--no-stream",
        action="store_true",
        help="train on the initial pairs only, without a process generating new ones",
    )
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu or cuda")
    parser.add_argument(
        "--no-mlflow", action="store_true", help="skip MLflow logging and registration"
    )
    return parser.parse_args(argv)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def prepare_bundle(out: Path) -> None:
    """Copy the bundle's configs and docs into ``out`` when it is a new folder."""
    if out.resolve() == DEFAULT_BUNDLE.resolve():
        return
    for folder in ("configs", "docs"):
        shutil.copytree(DEFAULT_BUNDLE / folder, out / folder, dirs_exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)


def build_network(bundle: Path) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    return parser.get_parsed_content("network_def")


def generate_and_train(bundle: str, options: dict[str, Any]) -> dict[str, Any]:
    """Generate the training pairs and train the network; return weights and history.

    Runs in the driver or inside a Ray task, so it takes and returns plain values.
    """
    import torch

    from priors.change.model import resolve_device
    from priors.change.training import train_change_network

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(options["threads"])
    bundle_path = Path(bundle)
    preprocessing = read_json(bundle_path / "configs" / "inference.json")["preprocessing"]

    started = time.monotonic()
    grid = {"shape": options["pair_shape"], "spacing": options["spacing_mm"]}
    examples, pairs = make_examples(
        options["seed"], options["pairs"], preprocessing=preprocessing, **grid
    )
    generation_seconds = time.monotonic() - started
    change_voxels = float(np.mean([np.count_nonzero(p.labels) / p.labels.size for p in pairs]))
    no_change_pairs = sum(not p.has_change for p in pairs)
    del pairs
    logger.info("generated %d training pairs in %.0f s", len(examples), generation_seconds)

    network = build_network(bundle_path)
    device = resolve_device(options["device"])
    training = {
        "roi_size": options["roi_size"],
        "epochs": options["epochs"],
        "batch_size": options["batch_size"],
        "learning_rate": options["learning_rate"],
        "change_class_weight": options["change_class_weight"],
        "focus_probability": options["focus_probability"],
        "max_seconds": options["minutes"] * 60.0,
        "seed": options["seed"],
        "device": device,
    }
    streamed = {"produced": 0, "without_change": 0}
    if options["stream"]:
        # New pairs continue the training stream after the initial pool and replace
        # its oldest examples while the network trains.
        with ExampleStream(
            options["seed"], first=options["pairs"], preprocessing=preprocessing, **grid
        ) as stream:
            history = train_change_network(
                network, examples, fresh_examples=stream.take, **training
            )
            streamed = {"produced": stream.produced, "without_change": stream.without_change}
    else:
        history = train_change_network(network, examples, **training)
    state = {key: value.detach().cpu() for key, value in network.state_dict().items()}
    return {
        "state_dict": state,
        "history": history.__dict__,
        "generation_seconds": generation_seconds,
        "change_voxel_fraction": change_voxels,
        "no_change_pairs": no_change_pairs + streamed["without_change"],
        "pairs_seen": options["pairs"] + streamed["produced"],
        "device": device,
    }


def ray_address() -> str | None:
    """Return the Ray cluster address from the settings or ``RAY_ADDRESS``, if any."""
    from priors.config import load_settings

    return load_settings().ray_address or os.environ.get("RAY_ADDRESS") or None


def run_training(bundle: Path, options: dict[str, Any], *, use_ray: bool) -> dict[str, Any]:
    if not use_ray:
        return generate_and_train(str(bundle), options)
    import ray

    address = ray_address()
    if address is None:
        # A local Ray instance, reachable from this machine only.
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        ray.init(address=address, include_dashboard=False)
    gpus = 1 if options["device"] in ("auto", "cuda") and _cuda_available() else 0
    # The example stream runs in a process of its own, so it needs a CPU of its own.
    # A request above the cluster's CPUs would wait forever, so it is capped there.
    cpus = options["threads"] + (1 if options["stream"] else 0)
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    if cpus > cluster_cpus:
        logger.warning(
            "the Ray cluster has %d CPUs; the training task asks for %d instead of %d",
            cluster_cpus,
            cluster_cpus,
            cpus,
        )
        cpus = cluster_cpus
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(generate_and_train)
    try:
        return ray.get(task.remote(str(bundle), options))
    finally:
        ray.shutdown()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def calibrate_postprocessing(
    bundle: Path, options: dict[str, Any], *, pairs: int, device: str, threads: int
) -> dict[str, Any]:
    """Choose the post-processing settings on validation pairs and write them into the bundle.

    The pairs come from the validation stream, which neither training nor the held-out
    evaluation draws from. Returns the chosen settings and every setting tried.
    """
    from priors.change.model import load_change_model
    from priors.change.postprocess import choose_postprocessing

    started = time.monotonic()
    validation = synthetic_pairs.validation_pairs(
        options["seed"], pairs, shape=options["pair_shape"], spacing=options["spacing_mm"]
    )
    model = load_change_model(bundle, device=device, torch_threads=threads)
    probabilities = model.class_probabilities([(p.current, p.prior, p.spacing) for p in validation])
    chosen, rows = choose_postprocessing(
        probabilities, [p.labels for p in validation], spacing=options["spacing_mm"]
    )
    path = bundle / "configs" / "inference.json"
    inference = read_json(path)
    inference["postprocessing"].update(chosen)
    path.write_text(json.dumps(inference, indent=4) + "\n", encoding="utf-8")
    best = next(row for row in rows if all(row[k] == v for k, v in chosen.items()))
    logger.info(
        "post-processing from %d validation pairs in %.0f s: %s",
        pairs,
        time.monotonic() - started,
        chosen,
    )
    return {
        "validation_seed": options["seed"],
        "validation_pairs": pairs,
        "chosen": chosen,
        "validation_lesion_f1_5mm": round(best["lesion_f1_5mm"], 4),
        "validation_fp_per_no_change_pair": round(best["fp_per_no_change_pair"], 4),
        "tried": rows,
    }


def write_metadata(bundle: Path, training: dict[str, Any]) -> dict[str, Any]:
    """Fill the ``training`` object of the bundle's metadata.json and return the metadata."""
    import monai
    import torch

    path = bundle / "configs" / "metadata.json"
    metadata = read_json(path)
    metadata["monai_version"] = monai.__version__
    metadata["pytorch_version"] = torch.__version__.split("+")[0]
    metadata["training"] = training
    path.write_text(json.dumps(metadata, indent=4) + "\n", encoding="utf-8")
    return metadata


def flatten_metrics(report: dict[str, Any], prefix: str) -> dict[str, float]:
    """Turn a nested evaluation report into MLflow metric names and numbers."""
    flat: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}.{key}".replace(" ", "_").replace(">=", "ge").replace("-", "_to_")
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
            flat[name] = float(value)
    return flat


def start_mlflow_run(run_name: str):
    import mlflow

    from priors.config import load_settings

    settings = load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    if mlflow.get_experiment_by_name(settings.mlflow_experiment) is None:
        mlflow.create_experiment(
            settings.mlflow_experiment, artifact_location=settings.mlflow_artifact_root.as_uri()
        )
    mlflow.set_experiment(settings.mlflow_experiment)
    return mlflow.start_run(run_name=run_name)


def register_bundle(run_id: str, artifact_uri: str, weights_sha256: str, version: str) -> str:
    """Create a version of the registered model from the run's bundle artifacts."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.create_registered_model(
            REGISTERED_MODEL_NAME,
            description="MONAI bundle: CT chest change detection (current vs registered prior).",
        )
    except MlflowException as err:
        if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
    model_version = client.create_model_version(
        REGISTERED_MODEL_NAME,
        source=f"{artifact_uri}/bundle",
        run_id=run_id,
        tags={"weights_sha256": weights_sha256, "bundle_version": version},
    )
    logger.info("registered %s version %s", REGISTERED_MODEL_NAME, model_version.version)
    return str(model_version.version)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    bundle = arguments.out
    prepare_bundle(bundle)
    train_config = read_json(bundle / "configs" / "train.json")
    evaluate_config = read_json(bundle / "configs" / "evaluate.json")
    options = {
        "seed": arguments.seed if arguments.seed is not None else train_config["seed"],
        "pairs": arguments.pairs or train_config["pairs"],
        "epochs": arguments.epochs or train_config["epochs"],
        "minutes": arguments.minutes or train_config["minutes"],
        "pair_shape": train_config["pair_shape"],
        "spacing_mm": train_config["spacing_mm"],
        "roi_size": read_json(bundle / "configs" / "inference.json")["roi_size"],
        "batch_size": train_config["batch_size"],
        "learning_rate": train_config["learning_rate"],
        "change_class_weight": train_config["change_class_weight"],
        "focus_probability": train_config.get("focus_probability", 0.0),
        "stream": not arguments.no_stream,
        "threads": arguments.threads,
        "device": arguments.device,
    }
    use_ray = arguments.ray == "on" or (arguments.ray == "auto" and ray_address() is not None)

    run = None
    if not arguments.no_mlflow:
        import mlflow

        run = start_mlflow_run("train-ct-chest-change")
        mlflow.log_params(
            {**options, "generator_version": synthetic_pairs.GENERATOR_VERSION, "ray": use_ray}
        )
        mlflow.set_tags(
            {
                "priors.job": "train_change_model",
                "priors.generator_version": synthetic_pairs.GENERATOR_VERSION,
            }
        )
    try:
        result = run_training(bundle, options, use_ray=use_ray)
        history = result["history"]
        if history["steps"] == 0:
            # Saving would replace the bundle's weights with an untrained network.
            logger.error(
                "training ran no step within its %.2f-minute budget; nothing was written "
                "to %s. Give more --minutes.",
                options["minutes"],
                bundle,
            )
            return 1
        weights = bundle / "models" / "model.pt"
        import torch

        torch.save(result["state_dict"], weights)
        weights_sha256 = sha256_file(weights)
        logger.info(
            "wrote %s (%d bytes, sha256 %s)", weights, weights.stat().st_size, weights_sha256[:12]
        )

        calibration = calibrate_postprocessing(
            bundle,
            options,
            pairs=arguments.validation_pairs or train_config.get("validation_pairs", 80),
            device=arguments.device,
            threads=arguments.threads,
        )

        # Held-out evaluation on the stream that training never draws from.
        from evaluate_change_model import evaluate_bundle

        held_out_count = arguments.held_out_pairs or evaluate_config["pairs"]
        reports = evaluate_bundle(
            bundle, pairs=held_out_count, device=arguments.device, threads=arguments.threads
        )

        training = {
            "generator": "priors.synthetic.pairs",
            "generator_version": synthetic_pairs.GENERATOR_VERSION,
            "seed": options["seed"],
            "pairs": options["pairs"],
            "pairs_seen": result["pairs_seen"],
            "streamed": options["stream"],
            "no_change_pairs": result["no_change_pairs"],
            "epochs": len(history["epoch_loss"]),
            "epochs_planned": options["epochs"],
            "steps": history["steps"],
            "stopped_by_time_budget": history["stopped_by_time"],
            "training_wall_time_s": round(history["seconds"], 1),
            "pair_generation_wall_time_s": round(result["generation_seconds"], 1),
            "device": result["device"],
            "torch_threads": options["threads"],
            "host": f"{platform.machine()}, {os.cpu_count()} CPUs visible",
            "mlflow_run_id": run.info.run_id if run else None,
            "postprocessing": {k: v for k, v in calibration.items() if k != "tried"},
            "held_out": {
                "seed": evaluate_config["seed"],
                "pairs": held_out_count,
                "model": _headline(reports["model"]),
                "baseline": _headline(reports["baseline"]),
            },
        }
        metadata = write_metadata(bundle, training)
        if run is not None:
            import mlflow

            for epoch, (loss, dice, ce) in enumerate(
                zip(
                    history["epoch_loss"],
                    history["epoch_dice_loss"],
                    history["epoch_ce_loss"],
                    strict=True,
                )
            ):
                mlflow.log_metrics(
                    {"train.loss": loss, "train.dice_loss": dice, "train.ce_loss": ce}, step=epoch
                )
            mlflow.log_metrics(
                {"train.wall_time_s": history["seconds"], "train.steps": history["steps"]}
            )
            for name, report in reports.items():
                mlflow.log_metrics(flatten_metrics(report, f"held_out.{name}"))
            mlflow.log_dict(reports, "held_out_evaluation.json")
            mlflow.log_dict(calibration, "postprocessing_search.json")
            mlflow.log_params(
                {f"postprocessing.{key}": value for key, value in calibration["chosen"].items()}
            )
            mlflow.log_artifacts(str(bundle), artifact_path="bundle")
            version = register_bundle(
                run.info.run_id, run.info.artifact_uri, weights_sha256, metadata["version"]
            )
            mlflow.set_tag("priors.registered_model_version", version)
    finally:
        if run is not None:
            import mlflow

            mlflow.end_run()
    print(json.dumps(training, indent=2))
    return 0


def _headline(report: dict[str, Any]) -> dict[str, float]:
    keys = (
        "lesion_f1_5mm",
        "lesion_precision_5mm",
        "lesion_recall_5mm",
        "lesion_f1_all",
        "voxel_dice",
        "fp_per_no_change_pair",
    )
    return {key: round(float(report[key]), 4) for key in keys}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
