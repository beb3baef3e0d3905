"""Time catalog ingest of a large single-frame CT tree against bare pydicom and ``cat``.

The script writes a tree of uncompressed single-frame CT files (20,000 by default, 64 x 64
int16 so the tree fits in the page cache) with the modules a CT scanner writes, in
several patients, studies and series. It reads every file once to fill the page cache,
then measures each of these once a round, for ``--repeats`` rounds (3 by default):

- ``cat`` of every file to ``/dev/null`` through ``xargs``;
- a bare loop of ``pydicom.dcmread(path, stop_before_pixels=True)`` over the same files,
  in this process and in one spawned process per worker with the files split evenly
  between them (worker start-up and imports are not timed);
- ``Catalog(sqlite).ingest([FolderSource(root)], workers=2)`` on a fresh SQLite
  catalog, timed from the call to its return, so it includes the walk, the worker pool
  start-up, both hashes and the catalog writes;
- the same ingest again on the unchanged tree.

Run from the repository root::

    .venv/bin/python benchmarks/ingest_speed.py

It prints the median, minimum and maximum seconds of each, and rates in instances per
second of wall time from the medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Slices per series: a thin-slice chest or abdomen reconstruction has a few hundred.
SLICES_PER_SERIES = 200
# Series per study: thin soft-tissue, thin lung kernel and a thick overview.
SERIES = (
    ("Thorax 1.0 B30f", "B30f", "1"),
    ("Thorax 1.0 B70f", "B70f", "1"),
    ("Thorax 3.0 B30f", "B30f", "3"),
)
# Studies per patient: a current and a prior.
STUDIES_PER_PATIENT = 2
HU_INTERCEPT = -1024
PIXEL_SPACING_MM = 0.68
# Upper bound on the tree's share of free memory: above it the tree may not stay cached.
MAX_MEMORY_SHARE = 0.5

# The ingest target: instances per second, and the share of the bare pydicom rate on
# the same number of processes.
TARGET_RATE = 2000
TARGET_SHARE_OF_PYDICOM = 0.5
# How often the CPU time of the ingest workers is read from /proc: often enough that
# the time missed after a worker's last sample is about 1% of a 5 s ingest.
SAMPLE_SECONDS = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _series_template(
    *, patient: int, study: int, series: int, matrix: int, study_uid: str, frame_uid: str
):
    """Return a data set with every attribute that one series shares."""
    from pydicom.dataset import Dataset
    from pydicom.uid import CTImageStorage, generate_uid

    description, kernel, thickness = SERIES[series % len(SERIES)]
    study_date = f"2024{1 + study:02d}{10 + patient % 18:02d}"
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.InstanceCreationDate = study_date
    ds.InstanceCreationTime = "101712"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime = "101500"
    ds.SeriesTime = ds.ContentTime = f"1016{10 + series:02d}"
    ds.AcquisitionTime = f"1016{series:02d}"
    ds.AccessionNumber = f"BENCH{patient:04d}{study:02d}"
    ds.Modality = "CT"
    ds.Manufacturer = "BENCHMARK"
    ds.InstitutionName = "Benchmark Hospital"
    ds.ReferringPhysicianName = "Referrer^Benchmark"
    ds.StationName = "CT01"
    ds.StudyDescription = "CT Thorax with contrast"
    ds.SeriesDescription = description
    ds.ManufacturerModelName = "Benchmark CT 64"
    ds.PatientName = f"Benchmark^Patient{patient:04d}"
    ds.PatientID = f"BENCH-{patient:04d}"
    ds.IssuerOfPatientID = "BENCHMARK-HOSPITAL"
    ds.PatientBirthDate = f"19{50 + patient % 40:02d}0101"
    ds.PatientSex = "FM"[patient % 2]
    ds.PatientAge = "060Y"
    ds.BodyPartExamined = "CHEST"
    ds.ContrastBolusAgent = "IOPAMIDOL 370"
    ds.SliceThickness = thickness
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.DeviceSerialNumber = "12345"
    ds.SoftwareVersions = "VB42"
    ds.ReconstructionDiameter = f"{PIXEL_SPACING_MM * matrix:.1f}"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "180"
    ds.ConvolutionKernel = kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = str(study + 1)
    ds.SeriesNumber = series + 2
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = matrix
    ds.PixelSpacing = [f"{PIXEL_SPACING_MM:g}", f"{PIXEL_SPACING_MM:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = str(HU_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def _phantom(matrix: int, seed: int) -> np.ndarray:
    """Return the stored values of one slice: an elliptic body with lungs and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1.0 : 1.0 : matrix * 1j, -1.0 : 1.0 : matrix * 1j]
    hu = np.full((matrix, matrix), -1000.0)
    hu[(x / 0.9) ** 2 + (y / 0.65) ** 2 < 1] = 40.0
    for centre in (-0.4, 0.4):
        hu[((x - centre) / 0.3) ** 2 + (y / 0.45) ** 2 < 1] = -850.0
    hu += rng.normal(0.0, 12.0, size=(matrix, matrix))
    return np.rint(hu - HU_INTERCEPT).astype("<i2")


def write_tree(root: Path, *, instances: int, matrix: int) -> list[Path]:
    """Write ``instances`` single-frame CT files under ``root`` and return their paths.

    Files go to ``root/<patient>/<study>/<series>/<instance number>.dcm``, with
    ``SLICES_PER_SERIES`` slices a series, ``len(SERIES)`` series a study and
    ``STUDIES_PER_PATIENT`` studies a patient. The last series may be shorter.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    base = _phantom(matrix, seed=0)
    paths: list[Path] = []
    series_index = 0
    while len(paths) < instances:
        patient, within = divmod(series_index, STUDIES_PER_PATIENT * len(SERIES))
        study, series = divmod(within, len(SERIES))
        if series == 0:
            study_uid, frame_uid = generate_uid(), generate_uid()
        template = _series_template(
            patient=patient, study=study, series=series, matrix=matrix,
            study_uid=study_uid, frame_uid=frame_uid,
        )
        folder = root / f"P{patient:04d}" / f"S{study:02d}" / f"SE{series:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        count = min(SLICES_PER_SERIES, instances - len(paths))
        step = float(template.SliceThickness)
        for k in range(count):
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = template.SOPClassUID
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            template.file_meta = meta
            template.SOPInstanceUID = sop_uid
            template.InstanceNumber = k + 1
            z = -step * k
            corner = -0.5 * PIXEL_SPACING_MM * (matrix - 1)
            template.ImagePositionPatient = [f"{corner:.2f}", f"{corner:.2f}", f"{z:.2f}"]
            template.SliceLocation = f"{z:.2f}"
            # Each slice differs, as a scan's slices do, without drawing new noise.
            template.PixelData = np.roll(base, k, axis=0).tobytes()
            path = folder / f"IM{k + 1:05d}.dcm"
            template.save_as(path, enforce_file_format=True)
            paths.append(path)
        series_index += 1
    return paths


def _read_all(paths: list[str]) -> int:
    """Read every file once so that the timed runs find them in the page cache."""
    total = 0
    for path in paths:
        with open(path, "rb") as stream:
            total += len(stream.read())
    return total


def _time_cat(paths: list[str]) -> float:
    """Return the wall time of ``cat`` over the files, fed by ``xargs -0``."""
    listing = b"\0".join(os.fsencode(path) for path in paths) + b"\0"
    start = time.perf_counter()
    subprocess.run(["xargs", "-0", "cat"], input=listing, stdout=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - start


def _dcmread_loop(paths: list[str]) -> tuple[float, float]:
    """Read every header with pydicom, pixels left out; return wall and CPU seconds."""
    import pydicom

    start, cpu_start = time.perf_counter(), time.process_time()
    for path in paths:
        pydicom.dcmread(path, stop_before_pixels=True)
    return time.perf_counter() - start, time.process_time() - cpu_start


def _import_pydicom() -> None:
    import pydicom  # noqa: F401


def _time_dcmread_processes(paths: list[str], *, workers: int) -> tuple[float, float]:
    """Return the wall time of the pydicom loop split over ``workers`` spawned processes.

    The workers import pydicom and complete one call before the clock starts, so their
    start-up is not timed. The second value is the CPU seconds of all workers together.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_import_pydicom) as pool:
        pool.map(_hold_worker, range(workers), chunksize=1)
        shares = [paths[index::workers] for index in range(workers)]
        start = time.perf_counter()
        loops = pool.map(_dcmread_loop, shares, chunksize=1)
        return time.perf_counter() - start, sum(cpu for _, cpu in loops)


def _hold_worker(_index: int) -> None:
    # Holds each worker for a moment, so that every worker gets one call.
    time.sleep(0.2)


def _time_ingest(root: Path, catalog_url: str, *,
                 workers: int) -> tuple[float, float | None, dict]:
    """Return the wall seconds of one ingest, its CPU seconds and its report.

    CPU seconds are this process's (every thread) plus its descendants', the ingest
    workers; None where /proc does not list child processes.
    """
    from priors.catalog import Catalog
    from priors.sources import FolderSource

    catalog = Catalog(catalog_url)
    sampler = _DescendantCPU()
    try:
        sampler.start()
        own_start = _own_cpu()
        start = time.perf_counter()
        report = catalog.ingest([FolderSource(root)], workers=workers)
        wall = time.perf_counter() - start
        own = _own_cpu() - own_start
    finally:
        sampler.stop()
        catalog.close()
    descendants = sampler.seconds()
    return wall, None if descendants is None else own + descendants, report.as_dict()


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


class _DescendantCPU:
    """CPU seconds used by the descendants of this process while it runs.

    A thread reads /proc every ``SAMPLE_SECONDS``: the ingest's worker processes come
    from a fork server, which reaps them itself, so their CPU time never reaches this
    process's ``RUSAGE_CHILDREN``. A worker's CPU after the last sample before it
    exits is missed, at most ``SAMPLE_SECONDS`` a worker.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._available = Path(f"/proc/{self._pid}/task/{self._pid}/children").exists()
        # CPU seconds of each process when sampling started (0 for processes started
        # since) and at its latest sample.
        self._first: dict[int, float] = {}
        self._latest: dict[int, float] = {}

    def start(self) -> None:
        if self._available:
            self._sample()
            self._first = dict(self._latest)
            self._thread.start()

    def stop(self) -> None:
        if self._available:
            self._stopped.set()
            self._thread.join()
            self._sample()

    def seconds(self) -> float | None:
        if not self._available:
            return None
        return sum(cpu - self._first.get(pid, 0.0) for pid, cpu in self._latest.items())

    def _run(self) -> None:
        while not self._stopped.wait(SAMPLE_SECONDS):
            self._sample()

    def _sample(self) -> None:
        for pid in _descendants(self._pid):
            cpu = _process_cpu(pid)
            if cpu is not None:
                self._latest[pid] = cpu


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            found += [int(child) for child in children]
            pending += [int(child) for child in children]
    return found


def _process_cpu(pid: int) -> float | None:
    # utime and stime, the 14th and 15th fields of /proc/PID/stat, in clock ticks. The
    # command name in brackets may contain spaces, so fields are counted after it.
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _machine() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} logical CPUs ({cpu}), load average {load}"


def _check_memory(paths: list[Path]) -> int:
    total = sum(path.stat().st_size for path in paths)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if total > MAX_MEMORY_SHARE * available:
        print(f"warning: the tree ({total / 2**20:.0f} MiB) is over "
              f"{MAX_MEMORY_SHARE:.0%} of free memory ({available / 2**20:.0f} MiB); "
              "rates may include disk reads. Lower --matrix or --instances.")
    return total


def _existing_tree(root: Path, instances: int) -> list[Path] | None:
    paths = sorted(root.rglob("*.dcm"))
    return paths if len(paths) == instances else None


def run_benchmark(*, instances: int, matrix: int, workers: int, repeats: int,
                  keep: Path | None) -> dict:
    """Write or reuse the tree, run every measurement, print them and return the figures."""
    workdir = keep or Path(tempfile.mkdtemp(prefix="priors-ingest-bench-"))
    root = workdir / "tree"
    catalog_dir = Path(tempfile.mkdtemp(prefix="priors-ingest-catalog-"))
    try:
        paths = _existing_tree(root, instances) if root.is_dir() else None
        if paths is None:
            shutil.rmtree(root, ignore_errors=True)
            start = time.perf_counter()
            paths = write_tree(root, instances=instances, matrix=matrix)
            print(f"wrote {len(paths)} files in {time.perf_counter() - start:.1f} s")
        else:
            print(f"reusing the {len(paths)} files under {root}")
        total = _check_memory(paths)
        names = [str(path) for path in paths]
        print(f"tree: {root}, {len(names)} files, {total / 2**20:.0f} MiB, "
              f"{total / len(names) / 1024:.1f} KiB a file, {matrix} x {matrix} int16")
        print(f"machine: {_machine()}")

        _read_all(names)
        runs = [_measure_round(names, root, catalog_dir / f"catalog-{index}.db",
                               workers=workers) for index in range(repeats)]
    finally:
        shutil.rmtree(catalog_dir, ignore_errors=True)
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return _print_figures(runs, count=len(names), workers=workers)


def _measure_round(names: list[str], root: Path, catalog_path: Path, *,
                   workers: int) -> dict[str, dict]:
    """Time every tool once, in a fixed order, and return the seconds of each by name.

    Returns wall seconds under ``seconds`` and CPU seconds under ``cpu`` (None where
    not measured).

    Each round ingests into a new catalog file. Rounds repeat the whole sequence, so
    that load from other processes spreads over every tool.
    """
    seconds: dict[str, float] = {"cat": _time_cat(names)}
    cpu: dict[str, float | None] = {"cat": None}
    seconds["pydicom, 1 process"], cpu["pydicom, 1 process"] = _dcmread_loop(names)
    split = f"pydicom, {workers} processes"
    seconds[split], cpu[split] = _time_dcmread_processes(names, workers=workers)
    url = f"sqlite:///{catalog_path}"
    ingest = f"ingest, {workers} workers"
    seconds[ingest], cpu[ingest], report = _time_ingest(root, url, workers=workers)
    again_name = "re-ingest, unchanged"
    seconds[again_name], cpu[again_name], again = _time_ingest(root, url, workers=workers)
    if report.get("indexed") != len(names) or again.get("files_read") != 0:
        raise RuntimeError(
            f"expected {len(names)} files indexed and none read again, got {report} "
            f"and {again}"
        )
    return {"seconds": seconds, "cpu": cpu}


def _print_figures(rounds: list[dict[str, dict]], *, count: int, workers: int) -> dict:
    runs = [item["seconds"] for item in rounds]
    medians = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    cpu_medians = _cpu_medians([item["cpu"] for item in rounds])
    rates = {name: count / value for name, value in medians.items()}
    ingest_name = f"ingest, {workers} workers"
    split_name = f"pydicom, {workers} processes"
    ingest = rates[ingest_name]
    print(f"\n{len(runs)} rounds; median, min and max seconds; rates from the median; "
          "CPU of every process involved, median")
    print(f"{'measurement':<24} {'median s':>9} {'min s':>7} {'max s':>7} "
          f"{'instances/s':>12} {'ingest ratio':>13} {'CPU us/file':>12}")
    for name, value in medians.items():
        values = [run[name] for run in runs]
        ratio = "" if name.startswith("re-ingest") else f"{ingest / rates[name]:>13.2f}"
        rate = "" if name.startswith("re-ingest") else f"{rates[name]:>12.0f}"
        cpu = cpu_medians.get(name)
        cpu_text = "" if cpu is None else f"{cpu / count * 1e6:>12.0f}"
        print(f"{name:<24} {value:>9.2f} {min(values):>7.2f} {max(values):>7.2f} "
              f"{rate:>12} {ratio:>13} {cpu_text:>12}")
    share = ingest / rates[split_name]
    print(f"first ingest of the run (starts the worker fork server): "
          f"{count / runs[0][ingest_name]:.0f} instances/s")
    print(f"\ningest: {ingest:.0f} instances/s (target {TARGET_RATE}), "
          f"{share:.0%} of bare pydicom on {workers} processes "
          f"(target {TARGET_SHARE_OF_PYDICOM:.0%})")
    cpu_share = None
    if cpu_medians.get(ingest_name) and cpu_medians.get(split_name):
        # On an otherwise idle machine the wall-time share tends to this: both keep
        # every core busy, so their rates go as the inverse of their CPU per file.
        cpu_share = cpu_medians[split_name] / cpu_medians[ingest_name]
        print(f"CPU per file: bare pydicom on {workers} processes uses {cpu_share:.0%} of "
              "ingest's (the share expected on an idle machine)")
    return {
        "instances": count,
        "workers": workers,
        "rounds": runs,
        "cpu_rounds": [item["cpu"] for item in rounds],
        "median_seconds": medians,
        "median_cpu_seconds": cpu_medians,
        "instances_per_s": {name: rate for name, rate in rates.items()
                            if not name.startswith("re-ingest")},
        "ingest_share_of_pydicom": share,
        "ingest_cpu_share_of_pydicom": cpu_share,
    }


def _cpu_medians(rounds: list[dict[str, float | None]]) -> dict[str, float]:
    medians = {}
    for name in rounds[0]:
        values = [run[name] for run in rounds]
        if all(value is not None for value in values):
            medians[name] = statistics.median(values)
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=20000,
                        help="single-frame CT files in the tree")
    parser.add_argument("--matrix", type=int, default=64,
                        help="rows and columns of each image; 64 makes 10 KiB files")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes of the split pydicom loop and ingest workers "
                             "(2, the ingest default)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of every measurement; medians are reported")
    parser.add_argument("--keep", type=Path,
                        help="write the tree under this folder, or reuse it, and keep it")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if min(args.instances, args.matrix, args.workers, args.repeats) < 1:
        parser.error("--instances, --matrix, --workers and --repeats must be at least 1")

    figures = run_benchmark(instances=args.instances, matrix=args.matrix,
                            workers=args.workers, repeats=args.repeats, keep=args.keep)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
