"""Compare ``priors register`` with elastix on the same pairs: wall time, peak memory, TRE.

Pairs:

- ``synthetic-ct``: a 512 x 512 x 200 CT volume (0.78 x 0.78 x 1.5 mm) sampled from
  ``priors.synthetic.anatomy`` and the same phantom after a known rigid motion,
  written as NIfTI files in a temporary folder;
- ``table-moved``: the echo-1 magnitude volumes of the shared table-moved MR phantom
  (true transform: the identity in patient coordinates), with the prior's origin moved
  by ``PERTURBATION_MM`` so that both tools start 20 mm off.

Each tool runs as a whole process under ``/usr/bin/time -v`` (wall time from start to
exit, peak resident memory), with 2 threads: ``PRIORS_REGISTRATION__THREADS=2`` for
priors, ``-threads 2`` for elastix. TRE is |T(p) - T_true(p)| over the current's body
(CT above -400 HU, MR above 10 % of its 99th percentile), on a 4 mm grid.

Run from the repository root (needs the Debian package ``elastix``)::

    .venv/bin/python benchmarks/registration_elastix.py [--pairs synthetic-ct table-moved]
        [--runs 3] [--keep /tmp/reg-bench]

With ``--runs N`` each pair runs N times, the two tools back to back in alternating
order, and the ratios are medians of the per-run ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from priors.registration.masks import body_mask
from priors.synthetic.anatomy import Anatomy, sample_hu

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PRIORS = REPO_ROOT / ".venv" / "bin" / "priors"
THREADS = 2

# Synthetic CT geometry: a 400 mm field of view and 300 mm along S-I.
CT_SIZE = (512, 512, 200)
CT_SPACING_MM = (0.78125, 0.78125, 1.5)
CT_NOISE_HU = 10.0

# The known motion of the prior's patient, as the transform from current to prior
# points: rotations about x, y, z (degrees) and translation (mm), about the centre.
TRUE_ROTATION_DEG = (4.0, -3.0, 6.0)
TRUE_TRANSLATION_MM = (12.0, -8.0, 15.0)

# Shift of the table-moved prior's origin, mm (LPS): the start both tools see.
PERTURBATION_MM = (0.0, 0.0, 20.0)

# Points per axis of the TRE grid spacing, mm: dense enough for a p95 over the body.
TRE_GRID_MM = 4.0

# Points of the synthetic volume sampled per call, to bound memory.
SAMPLE_CHUNK = 4_000_000

# elastix iterations per level and random samples per iteration. 200 matches the cap
# of priors per level; 4096 fresh samples per iteration is elastix's usual rigid
# setting (its manual suggests 2000 to 5000 with the stochastic optimiser).
ELASTIX_ITERATIONS = 200
ELASTIX_SAMPLES = 4096
ELASTIX_BINS = 32

# Pyramid targets as multiples of the finest spacing, as in priors' defaults (4, 2, 1).
SHRINK_FACTORS = (4, 2, 1)


def _true_transform() -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter((0.0, 0.0, 0.0))
    transform.SetRotation(*np.radians(TRUE_ROTATION_DEG))
    transform.SetTranslation(TRUE_TRANSLATION_MM)
    return transform


def _grid_points(image: sitk.Image, step: int = 1) -> np.ndarray:
    """Return LPS mm centres of every ``step``-th voxel, in NumPy (z, y, x) order."""
    axes = [np.arange(0, n, step) for n in image.GetSize()[::-1]]
    k, j, i = np.meshgrid(*axes, indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (index * image.GetSpacing()) @ direction.T


def _ct_volume(to_phantom: sitk.Transform | None, seed: int) -> sitk.Image:
    """Sample the phantom on the CT grid; ``to_phantom`` maps grid points into it."""
    grid = sitk.Image(CT_SIZE, sitk.sitkInt16)
    grid.SetSpacing(CT_SPACING_MM)
    extent = np.multiply(np.subtract(CT_SIZE, 1), CT_SPACING_MM)
    grid.SetOrigin(tuple(-extent / 2.0))
    points = _grid_points(grid)
    if to_phantom is not None:
        matrix = _matrix(to_phantom)
        points = points @ matrix[:3, :3].T + matrix[:3, 3]
    anatomy = Anatomy()
    values = np.empty(len(points), dtype=np.float32)
    for start in range(0, len(points), SAMPLE_CHUNK):
        values[start : start + SAMPLE_CHUNK] = sample_hu(
            anatomy, points[start : start + SAMPLE_CHUNK]
        )
    values += np.random.default_rng(seed).normal(0.0, CT_NOISE_HU, len(values)).astype(np.float32)
    image = sitk.GetImageFromArray(np.rint(values).astype(np.int16).reshape(CT_SIZE[::-1]))
    image.CopyInformation(grid)
    return image


def _matrix(transform: sitk.Transform) -> np.ndarray:
    """Return a 4 x 4 LPS matrix of an affine transform, from transformed points."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    columns = [np.asarray(transform.TransformPoint(tuple(e))) - origin for e in np.eye(3)]
    matrix = np.eye(4)
    matrix[:3, :3] = np.stack(columns, axis=1)
    matrix[:3, 3] = origin
    return matrix


def synthetic_ct_pair(folder: Path) -> tuple[Path, Path, sitk.Transform, str]:
    """Write the synthetic CT pair; return the paths, the true transform and the modality."""
    true = _true_transform()
    paths = folder / "ct_current.nii", folder / "ct_prior.nii"
    if all(path.is_file() for path in paths):
        # Written by an earlier run with --keep: the phantom and the motion are fixed.
        return *paths, true, "CT"
    current = _ct_volume(None, seed=1)
    # The prior's value at q is the phantom at T_true^-1(q), so T_true maps current
    # points to the prior points showing the same anatomy.
    prior = _ct_volume(true.GetInverse(), seed=2)
    sitk.WriteImage(current, str(paths[0]))
    sitk.WriteImage(prior, str(paths[1]))
    return *paths, true, "CT"


def _echo1_magnitude(series: Path) -> sitk.Image:
    keyed = []
    for path in sorted(series.glob("*.dcm")):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        # (0008,0008) Image Type value 4: "M" magnitude, "P" phase (Philips).
        if header.ImageType[3] != "M" or int(header.EchoNumbers) != 1:
            continue
        orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        keyed.append((float(normal @ np.asarray(header.ImagePositionPatient, float)), path))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for _, path in sorted(keyed)])
    return reader.Execute()


def table_moved_pair(folder: Path, shared_data: Path) -> tuple[Path, Path, sitk.Transform, str]:
    """Write the table-moved pair with the prior's origin moved by ``PERTURBATION_MM``."""
    root = shared_data / "table-moved" / "In" / "Ph"
    current = _echo1_magnitude(root / "1301_Dual-echo_iso")
    prior = _echo1_magnitude(root / "2201_Dual-echo_FH-60_table_moved")
    prior.SetOrigin(tuple(np.add(prior.GetOrigin(), PERTURBATION_MM)))
    paths = folder / "mr_current.nii", folder / "mr_prior.nii"
    sitk.WriteImage(current, str(paths[0]))
    sitk.WriteImage(prior, str(paths[1]))
    # A current point p shows what the moved prior shows at p + perturbation.
    return *paths, sitk.TranslationTransform(3, PERTURBATION_MM), "MR"


def _timed(command: list[str], env: dict[str, str], log: Path) -> dict:
    """Run ``command`` under /usr/bin/time -v; return wall seconds and peak RSS (MiB)."""
    completed = subprocess.run(
        ["/usr/bin/time", "-v", *command], env=env, capture_output=True, text=True, check=False
    )
    log.write_text(completed.stdout + completed.stderr, encoding="utf-8")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", completed.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", completed.stderr)
    if wall is None or rss is None:
        raise RuntimeError(f"{command[0]}: no /usr/bin/time figures, see {log}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    return {
        "returncode": completed.returncode,
        "wall_s": hours * 3600 + minutes * 60 + seconds,
        "peak_mib": int(rss.group(1)) / 1024,
    }


def run_priors(current: Path, prior: Path, modality: str, out: Path) -> tuple[dict, sitk.Transform]:
    """Run ``priors register`` as a whole command and read its transform."""
    env = os.environ | {"PRIORS_REGISTRATION__THREADS": str(THREADS)}
    command = [str(PRIORS), "register", str(current), str(prior), "--out", str(out)]
    figures = _timed(
        command + ["--modality-pair", f"{modality}-{modality}"], env, out.with_suffix(".log")
    )
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    figures |= {"verdict": report["verdict"], "threads": report["threads"]}
    transform = sitk.AffineTransform(3)
    matrix = np.asarray(report["matrix_lps"])
    transform.SetMatrix(matrix[:3, :3].ravel().tolist())
    transform.SetTranslation(matrix[:3, 3].tolist())
    return figures, transform


def _schedule(image: sitk.Image) -> str:
    """Return elastix's per-axis pyramid schedule matching priors' per-axis shrink."""
    finest = min(image.GetSpacing())
    rows = []
    for factor in SHRINK_FACTORS:
        rows.extend(max(1, round(factor * finest / s)) for s in image.GetSpacing())
    return " ".join(str(r) for r in rows)


def elastix_parameters(current: sitk.Image, background: float) -> str:
    """Return an elastix rigid parameter file: Euler, Mattes MI, 3 levels."""
    schedule = _schedule(current)
    return f"""(FixedInternalImagePixelType "float")
(MovingInternalImagePixelType "float")
(FixedImageDimension 3)
(MovingImageDimension 3)
(UseDirectionCosines "true")
(Registration "MultiResolutionRegistration")
(FixedImagePyramid "FixedRecursiveImagePyramid")
(MovingImagePyramid "MovingRecursiveImagePyramid")
(NumberOfResolutions {len(SHRINK_FACTORS)})
(FixedImagePyramidSchedule {schedule})
(MovingImagePyramidSchedule {schedule})
(Transform "EulerTransform")
(AutomaticScalesEstimation "true")
(AutomaticTransformInitialization "false")
(HowToCombineTransforms "Compose")
(Metric "AdvancedMattesMutualInformation")
(NumberOfHistogramBins {ELASTIX_BINS})
(Optimizer "AdaptiveStochasticGradientDescent")
(MaximumNumberOfIterations {ELASTIX_ITERATIONS})
(ImageSampler "RandomCoordinate")
(NumberOfSpatialSamples {ELASTIX_SAMPLES})
(NewSamplesEveryIteration "true")
(Interpolator "BSplineInterpolator")
(BSplineInterpolationOrder 1)
(Resampler "DefaultResampler")
(ResampleInterpolator "FinalBSplineInterpolator")
(FinalBSplineInterpolationOrder 1)
(DefaultPixelValue {background})
(WriteResultImage "true")
(ResultImageFormat "nii.gz")
(ResultImagePixelType "float")
"""


def _elastix_transform(path: Path) -> sitk.Euler3DTransform:
    """Read an elastix EulerTransform parameter file (current to prior points)."""
    text = path.read_text(encoding="utf-8")

    def values(key: str) -> list[float]:
        match = re.search(rf"\({key} ([^)]*)\)", text)
        if match is None:
            raise ValueError(f"{path}: no ({key} ...) entry, expected an EulerTransform file")
        return [float(v) for v in match.group(1).split()]

    if re.search(r'\(ComputeZYX "true"\)', text):
        raise ValueError(f"{path}: ComputeZYX is true, expected the default (false)")
    transform = sitk.Euler3DTransform()
    transform.SetCenter(values("CenterOfRotationPoint"))
    transform.SetParameters(values("TransformParameters"))
    return transform


def run_elastix(
    current: Path, prior: Path, modality: str, out: Path
) -> tuple[dict, sitk.Transform]:
    """Run elastix as a whole command and read its transform."""
    out.mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(current))
    background = -1024.0 if modality == "CT" else 0.0
    parameters = out / "rigid.txt"
    parameters.write_text(elastix_parameters(image, background), encoding="utf-8")
    command = [
        "elastix", "-f", str(current), "-m", str(prior), "-p", str(parameters),
        "-out", str(out), "-threads", str(THREADS),
    ]  # fmt: skip
    figures = _timed(command, dict(os.environ), out.with_suffix(".log"))
    figures["verdict"] = "-"
    return figures, _elastix_transform(out / "TransformParameters.0.txt")


def tre_mm(estimate: sitk.Transform, true: sitk.Transform, current: Path, modality: str) -> dict:
    """Return TRE p95 and max over the current's body on a ``TRE_GRID_MM`` grid."""
    image = sitk.ReadImage(str(current))
    mask = body_mask(image, method=modality.lower())
    step = max(1, round(TRE_GRID_MM / min(mask.GetSpacing())))
    inside = sitk.GetArrayViewFromImage(mask)[::step, ::step, ::step].ravel() > 0
    points = _grid_points(mask, step)[inside]
    a, b = _matrix(estimate), _matrix(true)
    error = points @ (a - b)[:3, :3].T + (a - b)[:3, 3]
    distance = np.linalg.norm(error, axis=1)
    return {"tre_p95_mm": float(np.percentile(distance, 95)), "tre_max_mm": float(distance.max())}


def _format_row(pair: str, tool: str, figures: dict) -> str:
    return (
        f"{pair:13s} {tool:8s} {figures['wall_s']:8.1f} {figures['peak_mib']:9.0f} "
        f"{figures['tre_p95_mm']:8.2f} {figures['tre_max_mm']:8.2f}  {figures['verdict']}"
    )


def _tools(run: int) -> tuple:
    """Return the tools in the order of run ``run``: priors first on even runs.

    Alternating the order spreads a drift in the load of a shared machine over both
    tools instead of charging it to one.
    """
    tools = (("priors", run_priors), ("elastix", run_elastix))
    return tools if run % 2 == 0 else tools[::-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["synthetic-ct", "table-moved"])
    parser.add_argument("--shared-data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep the inputs and outputs in this folder (and reuse its synthetic CT pair)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="runs of both tools per pair, in alternating order; medians are printed",
    )
    args = parser.parse_args(argv)
    if shutil.which("elastix") is None:
        print("elastix not found: apt-get install elastix", file=sys.stderr)
        return 2
    if args.runs < 1:
        parser.error(f"--runs is {args.runs}, expected 1 or more")

    work = args.keep or Path(tempfile.mkdtemp(prefix="priors-elastix-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, results = [], {}
    try:
        for pair in args.pairs:
            if pair == "synthetic-ct":
                current, prior, true, modality = synthetic_ct_pair(work)
            elif pair == "table-moved":
                current, prior, true, modality = table_moved_pair(work, args.shared_data)
            else:
                parser.error(f"unknown pair {pair!r}, expected synthetic-ct or table-moved")
            results[pair] = {"priors": [], "elastix": []}
            for run in range(args.runs):
                for tool, register_with in _tools(run):
                    figures, estimate = register_with(
                        current, prior, modality, work / f"{pair}-{tool}"
                    )
                    figures |= tre_mm(estimate, true, current, modality)
                    results[pair][tool].append(figures)
                    rows.append(_format_row(pair, tool, figures))
                    print(rows[-1], flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{'pair':13s} {'tool':8s} {'wall s':>8s} {'peak MiB':>9s} {'TRE p95':>8s} "
        f"{'TRE max':>8s}  verdict"
    )
    print("\n".join(rows))
    print("\nratios priors / elastix (each run's tools measured back to back; median):")
    for pair, tools in results.items():
        runs = list(zip(tools["priors"], tools["elastix"], strict=True))
        wall = [p["wall_s"] / e["wall_s"] for p, e in runs]
        memory = [p["peak_mib"] / e["peak_mib"] for p, e in runs]
        tre = [p["tre_p95_mm"] / max(e["tre_p95_mm"], 1e-9) for p, e in runs]
        print(
            f"  {pair}: wall {statistics.median(wall):.2f} "
            f"(runs: {', '.join(f'{r:.2f}' for r in wall)}), peak memory "
            f"{statistics.median(memory):.2f}, TRE p95 {statistics.median(tre):.2f}"
        )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
