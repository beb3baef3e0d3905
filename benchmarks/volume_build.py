"""Time volume building against SimpleITK's ImageSeriesReader and dcm2niix on one CT series.

The script writes an uncompressed int16 CT series (512 x 512 x 300 by default) with pydicom
into a temporary folder, then runs each converter several times on the same files, each
run in a fresh child process. It prints the median wall time of each, its peak resident
memory and the ratios against ImageSeriesReader.

Run from the repository root::

    .venv/bin/python benchmarks/volume_build.py

Wall time covers the conversion only: interpreter start-up and imports are left out for
the Python converters, and dcm2niix is timed as a whole process. Peak memory is the
``ru_maxrss`` of the child that converts, so it includes the interpreter and the imported
libraries (reported separately as the baseline).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Geometry of the written series: a typical chest CT reconstruction.
PIXEL_SPACING_MM = 0.7422
SLICE_STEP_MM = 1.25
HU_INTERCEPT = -1024

TOOLS = ("build_volumes", "ImageSeriesReader", "dcm2niix")
REFERENCE_TOOL = "ImageSeriesReader"


def _phantom_slice(rng: np.random.Generator, size: int, k: int, slices: int) -> np.ndarray:
    """Return stored values of one slice: an elliptic body, two lungs and noise."""
    y, x = np.mgrid[-1.0 : 1.0 : size * 1j, -1.0 : 1.0 : size * 1j]
    taper = 0.85 + 0.1 * np.sin(np.pi * k / slices)
    hu = np.full((size, size), -1000.0)
    hu[(x / (0.9 * taper)) ** 2 + (y / (0.65 * taper)) ** 2 < 1] = 40.0
    for centre in (-0.4, 0.4):
        hu[((x - centre) / 0.3) ** 2 + (y / 0.45) ** 2 < 1] = -850.0
    hu += rng.normal(0.0, 12.0, size=(size, size))
    return np.rint(hu - HU_INTERCEPT).astype(np.int16)


def write_series(
    folder: Path, *, size: int, slices: int, bits_stored: int = 16, seed: int = 0
) -> list[Path]:
    """Write an axial CT series with the headers a scanner writes; return the file paths.

    Files are named by SOP Instance UID, so directory order is unrelated to slice order.
    Values are signed 16-bit words, of which (0028,0101) Bits Stored are used.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    origin = -0.5 * PIXEL_SPACING_MM * (size - 1)
    paths = []
    for k in range(slices):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20240102"
        ds.StudyTime = ds.SeriesTime = "101500"
        ds.Modality = "CT"
        ds.Manufacturer = "BENCHMARK"
        ds.PatientName = "Benchmark^Phantom"
        ds.PatientID = "BENCH-0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{SLICE_STEP_MM:g}"
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        z = -SLICE_STEP_MM * k
        ds.ImagePositionPatient = [f"{origin:.4f}", f"{origin:.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_uid
        ds.SliceLocation = f"{z:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [f"{PIXEL_SPACING_MM:g}", f"{PIXEL_SPACING_MM:g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = str(HU_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = _phantom_slice(rng, size, k, slices).tobytes()

        path = folder / f"CT.{sop_uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _summary(array: np.ndarray, image) -> dict:
    """Describe a converted volume so that the parent can check the converters agree."""
    return {
        "size": list(image.GetSize()),
        "spacing": [round(v, 4) for v in image.GetSpacing()],
        "origin_lps": [round(v, 3) for v in image.GetOrigin()],
        "values_sha256": hashlib.sha256(array.astype(np.int32).tobytes()).hexdigest(),
    }


def _peak_rss_mib(usage_of: int) -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(usage_of).ru_maxrss / 1024


def _run_worker(tool: str, folder: Path) -> dict:
    """Convert the series once in this process and return timing, memory and a summary."""
    import SimpleITK as sitk

    if tool == "build_volumes":
        from priors.dicom.volume import build_volumes

        baseline = _peak_rss_mib(resource.RUSAGE_SELF)
        start = time.perf_counter()
        volumes, rejections = build_volumes(sorted(folder.iterdir()))
        wall = time.perf_counter() - start
        if rejections or len(volumes) != 1:
            raise RuntimeError(f"expected one volume, got {len(volumes)} and {rejections}")
        image = volumes[0].image
    elif tool == "ImageSeriesReader":
        baseline = _peak_rss_mib(resource.RUSAGE_SELF)
        start = time.perf_counter()
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
        image = reader.Execute()
        wall = time.perf_counter() - start
    else:
        raise ValueError(
            f"unknown worker tool {tool!r}, expected build_volumes or {REFERENCE_TOOL}"
        )

    peak = _peak_rss_mib(resource.RUSAGE_SELF)
    result = {"wall_s": wall, "peak_rss_mib": peak, "baseline_rss_mib": baseline}
    result.update(_summary(sitk.GetArrayViewFromImage(image), image))
    result["threads"] = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    return result


def _run_dcm2niix(folder: Path, executable: str) -> dict:
    """Run dcm2niix once in a child process; uncompressed NIfTI, so gzip is not timed."""
    with tempfile.TemporaryDirectory(prefix="dcm2niix-") as out:
        command = [executable, "-z", "n", "-b", "y", "-f", "%s", "-o", out, str(folder)]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - start
        written = sorted(p.name for p in Path(out).iterdir())
    return {
        "wall_s": wall,
        "peak_rss_mib": _peak_rss_mib(resource.RUSAGE_CHILDREN),
        "baseline_rss_mib": 0.0,
        "written": written,
    }


def _measure(tool: str, folder: Path, dcm2niix: str | None) -> dict:
    """Run one conversion in a fresh child process and return what it reports."""
    if tool == "dcm2niix":
        arguments = ["--dcm2niix-worker", dcm2niix or ""]
    else:
        arguments = ["--worker", tool]
    completed = subprocess.run(
        [sys.executable, __file__, *arguments, "--folder", str(folder)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _machine() -> str:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} logical CPUs ({cpu}), load average {load}"


def _dcm2niix_version(executable: str) -> str:
    completed = subprocess.run([executable, "-v"], capture_output=True, text=True, check=False)
    lines = (completed.stdout + completed.stderr).splitlines()
    return next((line.strip() for line in lines if "v1." in line), "unknown version")


def run_benchmark(
    *, size: int, slices: int, bits_stored: int, repeats: int, keep: Path | None
) -> dict:
    """Write the series, time every converter, print a table and return the figures."""
    dcm2niix = shutil.which("dcm2niix")
    tools = [tool for tool in TOOLS if tool != "dcm2niix" or dcm2niix]
    if dcm2niix is None:
        print("dcm2niix not found on PATH: skipping it (Debian: apt-get install dcm2niix)")

    workdir = keep or Path(tempfile.mkdtemp(prefix="priors-bench-"))
    try:
        folder = workdir / "series"
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        paths = write_series(folder, size=size, slices=slices, bits_stored=bits_stored)
        megabytes = sum(p.stat().st_size for p in paths) / 2**20
        print(
            f"wrote {len(paths)} files ({megabytes:.0f} MiB) of {size}x{size} int16 "
            f"(Bits Stored {bits_stored}) in "
            f"{time.perf_counter() - start:.1f} s to {folder}"
        )
        print(f"machine: {_machine()}")
        if dcm2niix:
            print(f"dcm2niix: {dcm2niix} {_dcm2niix_version(dcm2niix)}")

        # One untimed run each fills the page cache, then rounds alternate the tools so
        # that load from other processes spreads over all of them.
        for tool in tools:
            _measure(tool, folder, dcm2niix)
        runs: dict[str, list[dict]] = {tool: [] for tool in tools}
        for _ in range(repeats):
            for tool in tools:
                runs[tool].append(_measure(tool, folder, dcm2niix))
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    ours, reference = runs["build_volumes"][0], runs[REFERENCE_TOOL][0]
    for key in ("size", "spacing", "origin_lps", "values_sha256"):
        if ours[key] != reference[key]:
            raise RuntimeError(
                f"build_volumes and {REFERENCE_TOOL} disagree on {key}: "
                f"{ours[key]} and {reference[key]}"
            )

    figures = {}
    reference_wall = statistics.median(run["wall_s"] for run in runs[REFERENCE_TOOL])
    reference_peak = statistics.median(run["peak_rss_mib"] for run in runs[REFERENCE_TOOL])
    header = (
        f"{'converter':<18} {'median s':>9} {'min s':>7} {'max s':>7} {'peak MiB':>9} "
        f"{'base MiB':>9} {'time ratio':>11} {'memory ratio':>13}"
    )
    print(f"\n{repeats} timed runs each, ratios against {REFERENCE_TOOL} (lower is better)")
    print(header)
    for tool in tools:
        walls = [run["wall_s"] for run in runs[tool]]
        peak = statistics.median(run["peak_rss_mib"] for run in runs[tool])
        baseline = statistics.median(run["baseline_rss_mib"] for run in runs[tool])
        median = statistics.median(walls)
        figures[tool] = {
            "median_s": median,
            "min_s": min(walls),
            "max_s": max(walls),
            "peak_rss_mib": peak,
            "baseline_rss_mib": baseline,
            "time_ratio": median / reference_wall,
            "memory_ratio": peak / reference_peak,
        }
        print(
            f"{tool:<18} {median:>9.3f} {min(walls):>7.3f} {max(walls):>7.3f} {peak:>9.0f} "
            f"{baseline:>9.0f} {median / reference_wall:>11.2f} {peak / reference_peak:>13.2f}"
        )
    print(f"SimpleITK threads: {reference['threads']}")
    print("build_volumes and ImageSeriesReader agree on size, spacing, origin and every voxel")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="rows and columns per slice")
    parser.add_argument("--slices", type=int, default=300, help="number of slices")
    parser.add_argument(
        "--bits-stored",
        type=int,
        choices=range(12, 17),
        default=16,
        metavar="{12..16}",
        help="(0028,0101) Bits Stored of the written series; CT scanners often write 12",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per converter")
    parser.add_argument(
        "--keep", type=Path, help="write the series under this folder and keep it afterwards"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--worker", choices=TOOLS[:2], help=argparse.SUPPRESS)
    parser.add_argument("--dcm2niix-worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_run_worker(args.worker, args.folder)))
        return 0
    if args.dcm2niix_worker:
        print(json.dumps(_run_dcm2niix(args.folder, args.dcm2niix_worker)))
        return 0

    figures = run_benchmark(
        size=args.size,
        slices=args.slices,
        bits_stored=args.bits_stored,
        repeats=args.repeats,
        keep=args.keep,
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
