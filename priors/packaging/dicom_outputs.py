"""Change-detection results as standard DICOM: a Segmentation and a Parametric Map.

:func:`write_change_dicom` turns the labelled change map into a binary Segmentation
(one segment per change class) and the change probability into a floating-point
Parametric Map, both built with highdicom and both referencing the current series'
instances frame by frame. The arrays must be in the geometry of the volume that
:func:`priors.dicom.volume.build_volumes` built from the same files, so slice ``k`` of
the array is the ``k``-th source image. A volume that was resampled (gantry tilt, gaps
filled by interpolation) has no source image per slice and is rejected.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import priors

__all__ = [
    "SEGMENT_NEW_OR_GROWN",
    "SEGMENT_RESOLVED_OR_SHRUNK",
    "DicomOutputError",
    "write_change_dicom",
]

log = logging.getLogger(__name__)

# Label values of the change map, used unchanged as segment numbers.
SEGMENT_NEW_OR_GROWN = 1
SEGMENT_RESOLVED_OR_SHRUNK = 2

_SEGMENTS = {
    SEGMENT_NEW_OR_GROWN: (
        "new or grown",
        "Tissue present or larger in the current study than in the registered prior",
    ),
    SEGMENT_RESOLVED_OR_SHRUNK: (
        "resolved or shrunk",
        "Tissue absent or smaller in the current study than in the registered prior",
    ),
}

# Series numbers of the written objects, chosen high so that they are unlikely to equal
# a series number the scanner gave.
SEGMENTATION_SERIES_NUMBER = 9801
PARAMETRIC_MAP_SERIES_NUMBER = 9802

# Equipment attributes of both objects; highdicom requires a device serial number, and
# software has none.
MANUFACTURER = "priors"
SOFTWARE_VERSIONS = f"priors {priors.__version__}"
DEVICE_SERIAL_NUMBER = "none"

# Direction cosines are stored with 6 to 8 decimals, so 1e-3 separates rounding from a
# different orientation (about 0.06 degrees).
ORIENTATION_TOLERANCE = 1e-3

# A slice position may differ from the volume grid by this fraction of the smallest
# voxel size: a shift under a tenth of a voxel never moves a label onto another voxel.
POSITION_TOLERANCE_VOXELS = 0.1

# PS3.3 C.12.1.1.2: when (0008,0005) Specific Character Set has several values and the
# first is empty, the first is taken to be ISO 2022 IR 6 (ASCII as the initial G0 set).
_DEFAULT_WITH_CODE_EXTENSIONS = "ISO 2022 IR 6"

# highdicom warns about person names without a caret and quotes the name in the
# message. That message would reach any log that captures warnings, so it is silenced.
_PERSON_NAME_WARNING = ".*unlikely to represent the intended person name.*"

# highdicom copies every root attribute of the source's Patient and Study modules.
# The pseudonymised copy keeps these patient attributes (name and ID then hold the
# pseudonym, and the birth date is emptied) and removes every other (0010,xxxx) one,
# such as other IDs, issuers, comments and history.
_KEPT_PATIENT_KEYWORDS = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight",
})
# Type 2 study attributes that identify the person or their visit, emptied.
_EMPTIED_STUDY_KEYWORDS = ("AccessionNumber", "ReferringPhysicianName")
_PATIENT_GROUP = 0x0010
# The (0032,xxxx) request attributes (requesting physician and service) are removed.
_REQUEST_GROUP = 0x0032


class DicomOutputError(ValueError):
    """The change maps or the source images cannot make a valid DICOM object."""


def write_change_dicom(
    *,
    source_paths: Sequence[str | Path],
    labels: np.ndarray,
    probability: np.ndarray,
    out_dir: Path,
    algorithm: Mapping[str, str],
    pseudonym: str | None = None,
) -> dict[str, str]:
    """Write the change maps as a DICOM Segmentation and a DICOM Parametric Map.

    Parameters
    ----------
    source_paths
        The current series' single-frame images in slice order, as
        ``Volume.paths`` lists them; slice ``k`` of the arrays is ``source_paths[k]``.
    labels
        ``(z, y, x)`` integer change map: 0 no change, 1 new or grown, 2 resolved or
        shrunk. Each class becomes one segment of a BINARY Segmentation.
    probability
        ``(z, y, x)`` change probability in [0, 1], stored as 32-bit floats.
    out_dir
        Folder for ``segmentation.dcm`` and ``parametric_map.dcm``; created if missing.
    algorithm
        ``name`` and ``version`` of the algorithm (required), and optionally
        ``method`` (``"model"`` for a trained network, otherwise a thresholded
        subtraction) and ``weights_sha256``. Every key but ``name`` and ``version`` is
        stored in (0066,0032) Algorithm Parameters.
    pseudonym
        When given, (0010,0010) Patient's Name and (0010,0020) Patient ID carry the
        pseudonym, and birth date, accession number and other identifying attributes
        are emptied or removed. When None the source patient and study modules are
        kept, for storing the objects back into a PACS.

    Returns
    -------
    dict
        ``{"segmentation": path, "parametric_map": path}``.

    Raises
    ------
    DicomOutputError
        When the arrays do not match the source images (count, matrix, orientation or
        positions), a source is multi-frame, or a value is out of range.
    """
    datasets = [_read_source(Path(path)) for path in source_paths]
    labels = np.asarray(labels)
    probability = np.asarray(probability)
    _check_arrays(labels, probability, datasets)
    _check_geometry(datasets, labels.shape)

    segmentation = _segmentation(datasets, labels, algorithm)
    parametric_map = _parametric_map(datasets, probability, algorithm)
    for written in (segmentation, parametric_map):
        _copy_series_anatomy(written, datasets[0])
        if pseudonym is not None:
            _pseudonymise(written, pseudonym)

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "segmentation": out_dir / "segmentation.dcm",
        "parametric_map": out_dir / "parametric_map.dcm",
    }
    segmentation.save_as(paths["segmentation"])
    parametric_map.save_as(paths["parametric_map"])
    log.info(
        "wrote DICOM change outputs for series %s (%d source images, %d SEG frames, %s)",
        datasets[0].SeriesInstanceUID,
        len(datasets),
        int(segmentation.NumberOfFrames),
        "pseudonymised" if pseudonym is not None else "identified",
    )
    return {name: str(path) for name, path in paths.items()}


def _read_source(path: Path) -> Dataset:
    """Read one source image and make its character set acceptable to highdicom."""
    try:
        dataset = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as err:
        raise DicomOutputError(f"{path}: cannot be read as DICOM: {err}") from err
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        # NOTE: enhanced multi-frame sources would need per-frame references to the
        # frames the volume used; they are rejected until a pipeline input needs them.
        raise DicomOutputError(
            f"{path}: (0028,0008) Number of Frames is {dataset.NumberOfFrames}, "
            "expected single-frame source images")
    _normalise_character_set(dataset, path)
    return dataset


def _normalise_character_set(dataset: Dataset, path: Path) -> None:
    """Replace an empty (0008,0005) Specific Character Set value by its meaning.

    highdicom 0.28 accepts only the standard's defined terms, so an empty first value
    (ASCII with ISO 2022 code extensions, as written on Japanese CDs) is spelled out as
    ``ISO 2022 IR 6`` and a single empty value is removed (the default repertoire).
    Text values are decoded first, so names keep every character.
    """
    if "SpecificCharacterSet" not in dataset:
        return
    dataset.decode()
    value = dataset.SpecificCharacterSet
    values = [value] if isinstance(value, str) else list(value)
    if len(values) == 1 and not values[0].strip():
        del dataset.SpecificCharacterSet
        return
    if len(values) > 1 and not values[0].strip():
        values[0] = _DEFAULT_WITH_CODE_EXTENSIONS
        dataset.SpecificCharacterSet = values
        log.debug("%s: read an empty first Specific Character Set value as %s",
                  path, _DEFAULT_WITH_CODE_EXTENSIONS)
    accepted = {item.value for item in hd.enum.SpecificCharacterSetValues}
    unknown = [item for item in values if item not in accepted]
    if unknown:
        raise DicomOutputError(
            f"{path}: (0008,0005) Specific Character Set has {unknown}, expected defined "
            "terms of PS3.3 C.12.1.1.2")


def _check_arrays(labels: np.ndarray, probability: np.ndarray,
                  datasets: Sequence[Dataset]) -> None:
    if labels.ndim != 3 or labels.shape != probability.shape:
        raise DicomOutputError(
            f"labels have shape {labels.shape} and probability {probability.shape}, "
            "expected two (z, y, x) arrays of one shape")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise DicomOutputError(f"labels have dtype {labels.dtype}, expected integers")
    found = set(np.unique(labels).tolist()) - {0}
    if not found <= set(_SEGMENTS):
        raise DicomOutputError(
            f"labels contain {sorted(found - set(_SEGMENTS))}, expected only 0 and "
            f"{sorted(_SEGMENTS)}")
    if not np.all(np.isfinite(probability)) or probability.min() < 0 or probability.max() > 1:
        raise DicomOutputError(
            f"probability spans [{np.nanmin(probability)}, {np.nanmax(probability)}] or "
            "holds NaN, expected finite values in [0, 1]")
    if len(datasets) != labels.shape[0]:
        raise DicomOutputError(
            f"{len(datasets)} source images for {labels.shape[0]} slices, expected one "
            "source image per slice")


def _check_geometry(datasets: Sequence[Dataset], shape: tuple[int, ...]) -> None:
    """Check that the sources form the regular grid the arrays are sampled on.

    Every source must have the array's matrix, the first source's (0020,0037) Image
    Orientation (Patient) and (0028,0030) Pixel Spacing, and an (0020,0032) Image
    Position (Patient) on the line from the first position along the slice normal,
    at equal steps. A stack the volume builder resampled fails one of these.
    """
    first = datasets[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    spacing = np.asarray(first.PixelSpacing, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([ds.ImagePositionPatient for ds in datasets], dtype=float)
    offsets = (positions - positions[0]) @ normal
    # The step from the first to the last slice, so a swapped pair shows at its own slice.
    step = float(offsets[-1]) / (len(offsets) - 1) if len(offsets) > 1 else 1.0
    tolerance_mm = POSITION_TOLERANCE_VOXELS * min(float(spacing.min()), abs(step) or 1.0)

    for index, dataset in enumerate(datasets):
        where = f"{dataset.filename} (slice {index})"
        if (int(dataset.Rows), int(dataset.Columns)) != tuple(shape[1:]):
            raise DicomOutputError(
                f"{where}: (0028,0010) Rows x (0028,0011) Columns is {dataset.Rows} x "
                f"{dataset.Columns}, expected {shape[1]} x {shape[2]} from the arrays")
        found = np.asarray(dataset.ImageOrientationPatient, dtype=float)
        if np.abs(found - orientation).max() > ORIENTATION_TOLERANCE:
            raise DicomOutputError(
                f"{where}: (0020,0037) Image Orientation (Patient) is {found.tolist()}, "
                f"expected {orientation.tolist()} as on slice 0")
        found_spacing = np.asarray(dataset.PixelSpacing, dtype=float)
        if np.abs(found_spacing - spacing).max() > tolerance_mm:
            raise DicomOutputError(
                f"{where}: (0028,0030) Pixel Spacing is {found_spacing.tolist()}, "
                f"expected {spacing.tolist()} as on slice 0")
        expected = positions[0] + index * step * normal
        error_mm = float(np.linalg.norm(positions[index] - expected))
        if error_mm > tolerance_mm:
            raise DicomOutputError(
                f"{where}: (0020,0032) Image Position (Patient) is "
                f"{positions[index].tolist()}, expected {expected.round(4).tolist()} "
                f"on a regular grid of {step:.4f} mm steps ({error_mm:.3f} mm away, "
                f"tolerance {tolerance_mm:.3f} mm); pass the paths in the volume's "
                "slice order and do not resample the volume")


def _algorithm_identification(algorithm: Mapping[str, str]) -> hd.AlgorithmIdentificationSequence:
    missing = [key for key in ("name", "version") if not algorithm.get(key)]
    if missing:
        raise DicomOutputError(f"algorithm lacks {missing}, expected name and version")
    # The subtraction baseline thresholds the difference at a multiple of its noise level,
    # estimated from the histogram (median absolute deviation), so it is Histogram Analysis.
    family = (codes.cid7162.ArtificialIntelligence if algorithm.get("method") == "model"
              else codes.cid7162.HistogramAnalysis)
    parameters = {key: str(value) for key, value in sorted(algorithm.items())
                  if key not in ("name", "version")}
    return hd.AlgorithmIdentificationSequence(
        name=str(algorithm["name"]), family=family, version=str(algorithm["version"]),
        source="priors", parameters=parameters or None)


def _segmentation(datasets: Sequence[Dataset], labels: np.ndarray,
                  algorithm: Mapping[str, str]) -> hd.seg.Segmentation:
    algorithm_identification = _algorithm_identification(algorithm)
    descriptions = []
    for number, (label, text) in _SEGMENTS.items():
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_identification)
        description.SegmentDescription = text
        descriptions.append(description)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING)
        return hd.seg.Segmentation(
            source_images=datasets, pixel_array=labels.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=SEGMENTATION_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            series_description="priors change vs prior: new/grown, resolved/shrunk",
            content_label="CHANGE",
            content_description="Change between the current study and a registered prior",
            manufacturer=MANUFACTURER, manufacturer_model_name=str(algorithm["name"])[:64],
            software_versions=SOFTWARE_VERSIONS, device_serial_number=DEVICE_SERIAL_NUMBER,
            instance_number=1)


def _parametric_map(datasets: Sequence[Dataset], probability: np.ndarray,
                    algorithm: Mapping[str, str]) -> hd.pm.ParametricMap:
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="CHANGEPROB",
        lut_explanation=f"Change probability from {algorithm['name']}"[:64],
        unit=codes.UCUM.NoUnits, value_range=(0.0, 1.0), slope=1.0, intercept=0.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING)
        return hd.pm.ParametricMap(
            source_images=datasets, pixel_array=probability.astype(np.float32),
            series_instance_uid=hd.UID(), series_number=PARAMETRIC_MAP_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5,
                                                             window_width=1.0)],
            series_description="priors change probability vs prior (0 to 1)",
            content_label="CHANGEPROB",
            content_description="Probability of change between the current study and a prior",
            manufacturer=MANUFACTURER, manufacturer_model_name=str(algorithm["name"])[:64],
            software_versions=SOFTWARE_VERSIONS, device_serial_number=DEVICE_SERIAL_NUMBER,
            instance_number=1)


def _copy_series_anatomy(written: Dataset, source: Dataset) -> None:
    """Copy (0018,0015) Body Part Examined and (0020,0060) Laterality from the source.

    highdicom leaves both General Series attributes out. Laterality is Type 2C,
    required for paired body parts. When the source has neither, the body part is
    unknown: the Parametric Map then gets an empty Laterality, which PS3.3 C.7.3.1
    allows for an unknown laterality, and the Segmentation none. That split follows
    dciodvfy 1.00 (dicom3tools 2022-06-18), which reports a missing Laterality in a
    Parametric Map and a present one in a Segmentation as errors in that case.
    """
    for keyword in ("BodyPartExamined", "Laterality"):
        value = source.get(keyword)
        if value:
            setattr(written, keyword, value)
    unknown_body_part = "BodyPartExamined" not in written and "Laterality" not in written
    if unknown_body_part and isinstance(written, hd.pm.ParametricMap):
        written.Laterality = None


def _pseudonymise(written: Dataset, pseudonym: str) -> None:
    """Put the pseudonym in the patient module and remove identifying values.

    Besides the patient attributes, every other person name at the root (physicians
    of record, readers) is removed, as DICOM artifacts logged to MLflow carry no
    person names.
    """
    for element in list(written):
        keyword = element.keyword
        if element.tag.group == _PATIENT_GROUP and keyword not in _KEPT_PATIENT_KEYWORDS:
            del written[element.tag]
        elif element.tag.group == _REQUEST_GROUP:
            del written[element.tag]
        elif (element.VR == "PN" and element.tag.group != _PATIENT_GROUP
              and keyword not in _EMPTIED_STUDY_KEYWORDS):
            del written[element.tag]
    written.PatientName = pseudonym
    written.PatientID = pseudonym
    written.PatientBirthDate = None
    for keyword in _EMPTIED_STUDY_KEYWORDS:
        setattr(written, keyword, None)
