"""The ``priors register`` command: register one prior scan onto one current scan.

A face module: it reads the inputs (a DICOM series folder through ``priors.dicom``,
or a NIfTI file through SimpleITK), chooses the modality pair, calls
``priors.registration`` and writes the results. The registration layer itself
does not read DICOM.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import importlib.metadata
import json
import logging
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from priors import __version__
from priors.config import RegistrationSettings
from priors.dicom.sniff import NOT_DICOM, sniff
from priors.registration import (
    register,
    resample_onto,
    write_overlay_png,
    write_transform,
)
from priors.registration.presets import RegistrationOptions, normalise_modality_pair, preset

__all__ = [
    "DEFAULT_MODALITY_PAIR",
    "EXIT_BAD_INPUT",
    "EXIT_FAILED_CHECKS",
    "EXIT_OK",
    "STAGES",
    "InputError",
    "run_register",
    "with_command_options",
]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BAD_INPUT = 2
# The registration ran, and its outputs were written, but it failed its quality checks.
EXIT_FAILED_CHECKS = 3

# The preset used when neither input carries a modality and no --modality-pair is given.
# It matches the default of ``priors.registration.register``.
DEFAULT_MODALITY_PAIR = "CT-CT"

# Starts tried on top of the preset's. The identity start keeps the patient coordinates
# as stored, which two scans given on the command line often share (same scanner, or
# a table move the scanner recorded). The preset's moments start alone is misled when
# the fields of view cover different parts of the body. On the table-moved MR phantom
# pair (default settings) it started 59 mm off and ended 8.7 mm off. The identity start
# ended 0.3 mm from the true (identity) transform, with a better metric. The start with
# the best metric wins, so an extra start costs its run time and cannot worsen the metric.
EXTRA_INITIALISATIONS = ("identity",)

# Modalities that the registration presets cover.
SUPPORTED_MODALITIES = ("CT", "MR")

# Stages that ``--stages`` may name; rigid always runs first.
STAGES = ("rigid", "affine", "bspline")

TRANSFORM_FILE = "transform.tfm"
# With a B-spline stage the transform is a composite (linear, then B-spline), which
# only ITK's HDF5 format stores whole.
DEFORMABLE_TRANSFORM_FILE = "transform.h5"
REGISTERED_PRIOR_FILE = "registered_prior.nii.gz"
OVERLAY_FILE = "overlay.png"
REPORT_FILE = "report.json"

# gzip level of the registered prior. ITK's NIfTI writer (SimpleITK 2.5) wrote the
# same file whatever compression level was asked: 3.9 s for a 512 x 512 x 200 int16
# CT. Level 1 took 1.9 s, for a file 8 % larger (42 MB against 39 MB).
NIFTI_GZIP_LEVEL = 1
COPY_CHUNK_BYTES = 16 << 20

INT16_RANGE = (-32768, 32767)


# Largest metric sampling seed ITK accepts (unsigned 32-bit).
MAX_SEED = 2**32 - 1


class InputError(ValueError):
    """An input path that is missing, unreadable or contains no usable volume."""


@dataclass
class _Input:
    """One loaded input: the volume and what the report records about it."""

    image: sitk.Image
    modality: str  # "" when the file carries none (NIfTI)
    info: dict = field(default_factory=dict)


def _geometry(image: sitk.Image) -> dict:
    return {
        "size": list(image.GetSize()),
        "spacing_mm": list(image.GetSpacing()),
        "origin_lps": list(image.GetOrigin()),
        "direction_lps": list(image.GetDirection()),
        "pixel_type": image.GetPixelIDTypeAsString(),
    }


def _load_series_folder(path: Path, role: str) -> _Input:
    # The DICOM stack (pydicom, volume building) is imported only for a folder input:
    # 0.35 s of the command's start-up that two NIfTI inputs do not need.
    from priors.dicom.convert import scan_files
    from priors.dicom.volume import build_volumes

    scan = scan_files([path])
    files = [file for series in scan.series.values() for file in series.paths]
    if not files:
        raise InputError(
            f"{role} {path}: no DICOM series found ({scan.files_found} file(s), "
            f"{len(scan.not_dicom)} not DICOM, {len(scan.rejected)} unreadable)"
        )
    volumes, rejections = build_volumes(files)
    if not volumes:
        reasons = "; ".join(r.reason for r in rejections) or "no reason given"
        raise InputError(f"{role} {path}: no volume could be built from the series: {reasons}")

    # Keep the stack with the most slices. Ties go to the first one built.
    chosen = max(volumes, key=lambda volume: volume.image.GetSize()[2])
    others = [volume for volume in volumes if volume is not chosen]
    choice = (
        f"kept stack {chosen.stack_label or '(whole series)'!r} of series "
        f"{chosen.series_instance_uid} ({chosen.image.GetSize()[2]} slices)"
    )
    if others:
        choice += f", the one with the most slices of {len(volumes)} volumes built"
    print(f"{role}: {choice}")
    _check_volume_size(chosen.image, path, role)
    return _Input(
        image=chosen.image,
        modality=str(chosen.metadata.get("modality", "") or ""),
        info={
            "path": str(path),
            "kind": "dicom",
            "series_instance_uid": chosen.series_instance_uid,
            "stack_label": chosen.stack_label,
            "choice": choice,
            "instance_count": len(set(chosen.sop_instance_uids)),
            "decisions": list(chosen.decisions),
            "other_volumes": [
                {
                    "series_instance_uid": volume.series_instance_uid,
                    "stack_label": volume.stack_label,
                    "slices": volume.image.GetSize()[2],
                }
                for volume in others
            ],
            "rejections": [
                {
                    "series_instance_uid": r.series_instance_uid,
                    "stack_label": r.stack_label,
                    "reason": r.reason,
                }
                for r in rejections
            ],
        },
    )


def _load_image_file(path: Path, role: str) -> _Input:
    try:
        is_dicom = sniff(path) != NOT_DICOM
    except OSError as err:
        raise InputError(f"{role} {path}: cannot read the file: {err}") from err
    if is_dicom:
        raise InputError(
            f"{role} {path} is a single DICOM file, expected the folder of its series "
            "or a NIfTI file"
        )
    _check_complete_gzip(path, role)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(f"{role} {path}: cannot read as a NIfTI image: "
                         f"{_itk_message(err)}") from err
    _check_volume_size(image, path, role)
    expected = _expected_nifti_bytes(path, image)
    if expected is not None and path.stat().st_size < expected:
        raise InputError(f"{role} {path}: the file is truncated: {path.stat().st_size} "
                         f"bytes, its header needs at least {expected}")
    return _Input(image=image, modality="", info={"path": str(path), "kind": "image file"})


# Minimum voxels along each axis that the registration pyramid and its smoothing accept.
MIN_VOXELS_PER_AXIS = 4


def _check_volume_size(image: sitk.Image, path: Path, role: str) -> None:
    size = image.GetSize()
    if image.GetDimension() == 3 and min(size) < MIN_VOXELS_PER_AXIS:
        raise InputError(
            f"{role} {path}: size {'x'.join(map(str, size))} is too thin to register, "
            f"expected at least {MIN_VOXELS_PER_AXIS} voxels along each axis")


def _check_complete_gzip(path: Path, role: str) -> None:
    """Raise ``InputError`` for a gzip file cut short, which ITK reads zero-filled."""
    if path.suffix.lower() != ".gz":
        return
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(COPY_CHUNK_BYTES):
                pass
    except (EOFError, OSError, gzip.BadGzipFile) as err:
        raise InputError(f"{role} {path}: the file is truncated or not valid gzip: "
                         f"{err}") from err


def _expected_nifti_bytes(path: Path, image: sitk.Image) -> int | None:
    """Return the size an uncompressed .nii needs for its voxels, or None if unknown."""
    if path.suffix.lower() != ".nii":
        return None
    with path.open("rb") as stream:
        header = stream.read(112)
    if len(header) < 112:
        return None
    # NIfTI-1: vox_offset is a float32 at byte 108, little or big endian as sizeof_hdr shows.
    order = "<" if int.from_bytes(header[:4], "little") == 348 else ">"
    offset = int(np.frombuffer(header[108:112], dtype=f"{order}f4")[0])
    voxels = int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel()
    return offset + voxels * image.GetSizeOfPixelComponent() if offset >= 0 else None


def _itk_message(err: BaseException) -> str:
    """Return the last line of an ITK error without its source file location."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    return last.removeprefix("sitk::ERROR:").strip()


def _load(path: Path, role: str) -> _Input:
    """Load a DICOM series folder or a NIfTI file, raising ``InputError`` for bad input."""
    if not path.exists():
        raise InputError(
            f"{role} {path}: not found, expected a DICOM series folder or a NIfTI file"
        )
    loaded = _load_series_folder(path, role) if path.is_dir() else _load_image_file(path, role)
    loaded.info |= {"modality": loaded.modality, **_geometry(loaded.image)}
    return loaded


def _resolve_modalities(option: str | None, current: str, prior: str) -> tuple[str, str, str, str]:
    """Return the modality pair, the current and prior modalities, and where they came from.

    A cross-modality ``option`` names the current's modality first, so "MR-CT" with
    two NIfTI files makes the current MR and the prior CT.
    """
    if option is not None and not current and not prior:
        sides = option.strip().upper().split("-")
        if len(sides) == 2 and all(side in SUPPORTED_MODALITIES for side in sides):
            current, prior = sides
    for role, modality in (("current", current), ("prior", prior)):
        if modality and modality not in SUPPORTED_MODALITIES and option is None:
            raise InputError(
                f"{role} modality {modality!r} is not supported by the registration presets, "
                f"expected one of {', '.join(SUPPORTED_MODALITIES)}; pass --modality-pair"
            )
    known = [m for m in (current, prior) if m in SUPPORTED_MODALITIES]

    if option is not None:
        try:
            pair = normalise_modality_pair(option)
        except ValueError as err:
            raise InputError(f"--modality-pair: {err}") from err
        source = "--modality-pair"
    elif len(known) == 2:
        pair, source = normalise_modality_pair(f"{current}-{prior}"), "the DICOM headers"
    elif len(known) == 1:
        pair = normalise_modality_pair(f"{known[0]}-{known[0]}")
        source = "the one DICOM header with a modality; the other input has none"
    else:
        pair, source = DEFAULT_MODALITY_PAIR, "the default, because neither input has a modality"

    first, second = pair.split("-")
    if first == second:
        return pair, first, first, source
    # A cross-modality pair: take each side from its header, else opposite the other.
    current_modality = current if current in (first, second) else ""
    prior_modality = prior if prior in (first, second) and prior != current_modality else ""
    if not current_modality:
        current_modality = second if prior_modality == first else first
    if not prior_modality:
        prior_modality = second if current_modality == first else first
    return pair, current_modality, prior_modality, source


def _affine_from_matrix(matrix_lps: list[list[float]]) -> sitk.AffineTransform:
    """Return one affine transform equal to a 4 x 4 LPS matrix.

    ITK's text transform format cannot store a composite transform after its first
    entry. The registration's composite of rigid (and affine) steps is itself
    affine, so a single ``AffineTransform`` loses nothing.
    """
    matrix = np.asarray(matrix_lps, dtype=float)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix[:3, :3].ravel().tolist())
    transform.SetTranslation(matrix[:3, 3].tolist())
    return transform


def _options(
    pair: str, settings: RegistrationSettings, current_modality: str
) -> RegistrationOptions:
    """Return the preset options of ``pair`` with the starts of ``EXTRA_INITIALISATIONS``."""
    options = preset(pair, settings, current_modality=current_modality)
    starts = tuple(dict.fromkeys(options.initialisations + EXTRA_INITIALISATIONS))
    return dataclasses.replace(options, initialisations=starts)


def _rotation_deg(matrix: np.ndarray) -> float:
    """Return the angle of the rotation nearest to the 3 x 3 part of ``matrix``."""
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    rotation = u @ vt
    cosine = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cosine)))


def _stored_type(registered: sitk.Image, modality: str) -> sitk.Image:
    """Return a CT image rounded to whole HU as int16; other images unchanged (float32).

    CT values are whole HU in DICOM, so rounding loses nothing a reader can see. The
    compressed file of a 512 x 512 x 200 CT took 2.8 s to write as int16 against
    4.4 s as float32 on the development machine.
    """
    if modality != "CT":
        return registered
    # Rounded straight into int16, without float copies: np.clip of a new 52 M voxel
    # array took 1.6 s alone.
    values = sitk.GetArrayViewFromImage(registered)
    if values.min() < INT16_RANGE[0] or values.max() > INT16_RANGE[1]:
        values = np.clip(values, *INT16_RANGE)
    rounded = np.empty(values.shape, dtype=np.int16)
    np.rint(values, out=rounded, casting="unsafe")
    stored = sitk.GetImageFromArray(rounded)
    stored.CopyInformation(registered)
    return stored


def _write_compressed_nifti(
    image: sitk.Image, path: Path, executor: concurrent.futures.Executor
) -> concurrent.futures.Future:
    """Start writing ``image`` as gzip-compressed NIfTI at ``path``; return the future.

    ITK writes the file uncompressed next to ``path``, and ``executor`` compresses it
    at ``NIFTI_GZIP_LEVEL`` while the caller goes on (zlib releases the GIL). The
    future's ``result()`` raises what the compression raised.
    """
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".nii", delete=False) as temporary:
        raw = Path(temporary.name)
    sitk.WriteImage(image, str(raw))

    def compress() -> None:
        try:
            with raw.open("rb") as source, gzip.open(path, "wb", NIFTI_GZIP_LEVEL) as target:
                shutil.copyfileobj(source, target, COPY_CHUNK_BYTES)
        finally:
            raw.unlink()

    return executor.submit(compress)


def _movement(report: dict) -> str:
    """Describe the transform by what it does to the current's body, for the summary line."""
    shift, moved = report["body_shift_mm"], report["body_displacement_mm"]
    figures = [*shift, moved["p95"], moved["max"]]
    if not all(isinstance(v, float) and np.isfinite(v) for v in figures):
        translation = ", ".join(f"{value:+.2f}" for value in report["translation_mm"])
        return f"origin shift ({translation}) mm LPS, rotation {report['rotation_deg']:.2f} deg"
    centre = ", ".join(f"{value:+.2f}" for value in shift)
    return (
        f"body centre shift ({centre}) mm LPS, rotation {report['rotation_deg']:.2f} deg, "
        f"body points moved {moved['p95']:.2f} mm (p95), {moved['max']:.2f} mm (max)"
    )


def _versions() -> dict[str, str]:
    return {
        "priors": __version__,
        "SimpleITK": sitk.Version.VersionString(),
        "ITK": sitk.Version.ITKVersionString(),
        "numpy": np.__version__,
        "pydicom": importlib.metadata.version("pydicom"),
        "python": platform.python_version(),
    }


def _json_ready(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


def with_command_options(
    settings: RegistrationSettings,
    *,
    stages: str | None = None,
    metric: str | None = None,
    inverse_consistency: bool | None = None,
    seed: int | None = None,
    threads: int | None = None,
) -> RegistrationSettings:
    """Return ``settings`` with the command-line options that were given applied.

    Parameters
    ----------
    settings
        Registration settings from the configuration.
    stages
        Comma-separated stages, for example "rigid,affine,bspline"; rigid is required.
    metric
        "auto", "mattes" or "correlation".
    inverse_consistency
        Register both ways and measure inverse consistency.
    seed, threads
        Metric sampling seed and ITK thread count (at least 1).

    Raises
    ------
    InputError
        When a stage is unknown, rigid is missing, or threads is below 1.
    """
    changes: dict[str, Any] = {}
    if stages is not None:
        names = [name.strip().lower() for name in stages.split(",") if name.strip()]
        unknown = [name for name in names if name not in STAGES]
        if unknown or "rigid" not in names:
            raise InputError(
                f"--stages {stages!r} is invalid: expected rigid plus any of affine and "
                f"bspline, comma-separated (known stages: {', '.join(STAGES)})"
            )
        changes |= {"affine": "affine" in names, "bspline": "bspline" in names}
    if metric is not None:
        changes["metric"] = metric
    if inverse_consistency is not None:
        changes["inverse_consistency"] = inverse_consistency
    if seed is not None:
        # ITK takes the seed as an unsigned 32-bit value and reads 0 as "seed from the
        # clock", which would make runs differ while the report shows seed 0.
        if not 1 <= seed <= MAX_SEED:
            raise InputError(f"--seed is {seed}, expected 1 to {MAX_SEED}")
        changes["seed"] = seed
    if threads is not None:
        if threads < 1:
            raise InputError(f"--threads is {threads}, expected 1 or more")
        changes["threads"] = threads
    return dataclasses.replace(settings, **changes)


def _quality_summary(result_metrics: dict) -> dict:
    """Return the Jacobian and inverse-consistency figures for the report, where computed."""
    summary: dict = {}
    if "jacobian_min" in result_metrics:
        summary["jacobian_determinant"] = {
            "min": result_metrics["jacobian_min"],
            "max": result_metrics["jacobian_max"],
            "folding_fraction": result_metrics["jacobian_folding_fraction"],
        }
    if "inverse_consistency_mm_p95" in result_metrics:
        summary["inverse_consistency_mm"] = {
            "p95": result_metrics["inverse_consistency_mm_p95"],
            "max": result_metrics["inverse_consistency_mm_max"],
        }
    return summary


def run_register(
    current: Path,
    prior: Path,
    *,
    out_dir: Path,
    settings: RegistrationSettings,
    modality_pair: str | None = None,
) -> int:
    """Register PRIOR onto CURRENT and write the transform, image, overlay and report.

    Writes ``transform.tfm`` (one ITK affine transform mapping current points to
    prior points, LPS mm; ``transform.h5``, the composite of the linear stages and
    the B-spline, after a B-spline stage), ``registered_prior.nii.gz`` (the prior on the current
    grid), ``overlay.png`` (a checkerboard of both) and ``report.json``. The
    registration uses the preset of the modality pair with ``settings``, plus the
    starts of ``EXTRA_INITIALISATIONS``.

    Parameters
    ----------
    current, prior
        A DICOM series folder (the stack with the most slices is kept) or a NIfTI file.
    out_dir
        Output folder, created when missing.
    settings
        Registration settings (``Settings.registration``).
    modality_pair
        "CT-CT", "MR-MR" or "CT-MR"; by default from the DICOM headers, else
        ``DEFAULT_MODALITY_PAIR``.

    Returns
    -------
    int
        0 when the registration passed its quality checks, 3 when it ran but failed
        them, 2 for bad input (a missing or unreadable path, no volume, no body found).
    """
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(f"--out {out_dir}: exists and is not a folder")
        loaded_current = _load(Path(current), "current")
        loaded_prior = _load(Path(prior), "prior")
        pair, current_modality, prior_modality, pair_source = _resolve_modalities(
            modality_pair, loaded_current.modality, loaded_prior.modality
        )
    except InputError as err:
        print(f"priors: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"modality pair: {pair} (from {pair_source})")

    try:
        options = _options(pair, settings, current_modality)
        result = register(loaded_current.image, loaded_prior.image, options=options)
    except ValueError as err:
        # RegistrationError (no body, not a 3-D scalar volume) or invalid settings.
        print(f"priors: cannot register {prior} onto {current}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"priors: --out {out_dir}: cannot create the folder: {err.strerror or err}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    # A transform of an earlier run in the same folder would contradict this report.
    for stale in (TRANSFORM_FILE, DEFORMABLE_TRANSFORM_FILE):
        (out_dir / stale).unlink(missing_ok=True)
    registered = resample_onto(
        loaded_current.image, loaded_prior.image, result.transform, modality=prior_modality
    )
    if result.transform.IsLinear():
        transform_file = TRANSFORM_FILE
        write_transform(_affine_from_matrix(result.matrix_lps), out_dir / transform_file)
    else:
        transform_file = DEFORMABLE_TRANSFORM_FILE
        write_transform(result.transform, out_dir / transform_file)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        writing = _write_compressed_nifti(
            _stored_type(registered, prior_modality), out_dir / REGISTERED_PRIOR_FILE, executor
        )
        write_overlay_png(
            loaded_current.image,
            registered,
            out_dir / OVERLAY_FILE,
            title=f"{pair} registration: {result.verdict}",
        )
        writing.result()

    matrix = np.asarray(result.matrix_lps, dtype=float)
    report = {
        "current": loaded_current.info,
        "prior": loaded_prior.info,
        "modality_pair": pair,
        "modality_pair_source": pair_source,
        "current_modality": current_modality,
        "prior_modality": prior_modality,
        "matrix_lps": result.matrix_lps,
        "matrix_convention": "4 x 4, LPS mm, maps current-scan points to prior-scan points"
        + (
            "; the linear stages only, the B-spline is in the transform file"
            if not result.transform.IsLinear()
            else ""
        ),
        # The shift of the LPS origin, which may lie far outside the body.
        "translation_mm": matrix[:3, 3].tolist(),
        "translation_convention": "shift of the LPS origin (0, 0, 0); see body_shift_mm",
        "body_shift_mm": [result.metrics.get(f"body_centroid_shift_mm_{axis}") for axis in "xyz"],
        "body_displacement_mm": {
            key: result.metrics.get(f"body_displacement_mm_{key}") for key in ("mean", "p95", "max")
        },
        "rotation_deg": _rotation_deg(matrix),
        "stages": result.metrics.get("stages", ["rigid"]),
        **_quality_summary(result.metrics),
        "verdict": result.verdict,
        "reason": result.reason,
        "ambiguous": result.ambiguous,
        "metrics": result.metrics,
        "candidates": result.candidates,
        "seed": result.parameters.get("seed"),
        "threads": result.parameters.get("threads"),
        "parameters": result.parameters,
        "timings_s": result.timings,
        "versions": _versions(),
        "files": {
            "transform": transform_file,
            "registered_prior": REGISTERED_PRIOR_FILE,
            "overlay": OVERLAY_FILE,
        },
    }
    text = json.dumps(report, indent=2, default=_json_ready, ensure_ascii=False)
    (out_dir / REPORT_FILE).write_text(text + "\n", encoding="utf-8")

    print(f"verdict: {result.verdict}; {_movement(report)}; outputs in {out_dir}")
    if not result.passed:
        print(
            f"priors: the registration ran but failed its quality checks: {result.reason}",
            file=sys.stderr,
        )
        return EXIT_FAILED_CHECKS
    return EXIT_OK
