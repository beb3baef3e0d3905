"""Write the synthetic cohort from the command line: ``python -m priors.synthetic OUT``."""

from __future__ import annotations

import argparse
import logging

from priors.synthetic.cohort import write_cohort


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and write the cohort."""
    parser = argparse.ArgumentParser(
        prog="python -m priors.synthetic",
        description="Write a deterministic multi-site longitudinal chest-CT cohort as DICOM.",
    )
    parser.add_argument("out_dir", help="output folder, created if missing")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--patients", type=int, default=3, help="number of persons")
    parser.add_argument("--timepoints", type=int, default=3, help="studies per person")
    parser.add_argument("--matrix", type=int, default=128, help="rows and columns per image")
    parser.add_argument("--slices", type=int, default=None, help="slices of the thin series")
    parser.add_argument(
        "--slice-spacing", type=float, default=None, help="thin series slice spacing in mm"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = write_cohort(
        args.out_dir,
        seed=args.seed,
        n_patients=args.patients,
        n_timepoints=args.timepoints,
        matrix=args.matrix,
        n_slices=args.slices,
        slice_spacing_mm=args.slice_spacing,
    )
    print(f"wrote {info.file_count} DICOM files; ground truth in {info.ground_truth}")


if __name__ == "__main__":
    main()
