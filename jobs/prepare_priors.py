"""Ray job entry point of the main job.

Run it with a local Ray::

    python jobs/prepare_priors.py SOURCE... --out DIR
    python jobs/prepare_priors.py --demo

or against a running Ray head whose nodes have priors installed::

    ray job submit --address http://127.0.0.1:8265 -- \
        python jobs/prepare_priors.py SOURCE... --out DIR

It runs the same code as ``priors prepare``: Ray workers compute each person's pairs
and this driver writes the catalog and MLflow.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Lets `python jobs/prepare_priors.py` work from a checkout without installing priors.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from priors.cli import main as cli_main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Prepare priors for every person in SOURCEs.")
    parser.add_argument("sources", nargs="*", metavar="SOURCE",
                        help="folder, ZIP file or DICOMDIR media folder")
    parser.add_argument("--demo", action="store_true",
                        help="write the synthetic cohort (once) and run on it")
    parser.add_argument("--out", help="context package folder")
    parser.add_argument("--config", help="TOML configuration file")
    parser.add_argument("--report", help="also write the job report as JSON to this file")
    parser.add_argument("--no-ray", action="store_true", help="run without Ray")
    args = parser.parse_args(argv)
    if not args.demo and not args.sources:
        parser.error("name at least one SOURCE, or pass --demo")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    common = ["--config", args.config] if args.config else []
    if args.demo:
        command = [*common, "demo"] + (["--out", args.out] if args.out else [])
    else:
        command = [*common, "prepare", *args.sources, "--out", args.out or "priors-packages"]
        if args.report:
            command += ["--report", args.report]
    if args.no_ray:
        command.append("--no-ray")
    return cli_main(command)


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
