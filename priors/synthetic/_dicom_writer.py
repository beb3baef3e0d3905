"""Build and write the DICOM instances of the synthetic cohort.

Every instance is written uncompressed in Explicit VR Little Endian with full
File Meta Information. Nothing here reads the clock or a random source, so the same
inputs give byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
)

from priors.synthetic._geometry import ScanGrid
from priors.synthetic._sites import Person, Site

logger = logging.getLogger(__name__)

# Namespace of the name-based (version 5) UUIDs behind every UID, written as 2.25.<integer>.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://priors.invalid/synthetic-cohort")

# Stored value = HU - RESCALE_INTERCEPT, the usual CT convention.
RESCALE_INTERCEPT = -1024.0
# Unsigned storage has 12 bits stored, so stored values stop at 4095 (3071 HU).
UNSIGNED_BITS_STORED = 12


def make_uid(*parts: object) -> str:
    """Derive a UID from a name-based UUID of `parts`, so the same parts give the same UID."""
    name = "\x1f".join(str(part) for part in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


@dataclass(frozen=True)
class StudyContext:
    """Attributes shared by every instance of one study."""

    person: Person
    site: Site
    patient_name: str
    patient_id: str
    accession_number: str
    referring_physician: str
    study_instance_uid: str
    study_id: str
    study_date: str
    study_time: str
    frame_of_reference_uid: str
    device_serial_number: str

    def time_after(self, seconds: int) -> str:
        """Return the study time plus `seconds`, as a DICOM TM value."""
        start = dt.datetime.strptime(self.study_date + self.study_time, "%Y%m%d%H%M%S")
        return (start + dt.timedelta(seconds=seconds)).strftime("%H%M%S")


@dataclass(frozen=True)
class SeriesContext:
    """Attributes shared by every instance of one series."""

    series_instance_uid: str
    series_number: int
    series_description: str
    seconds_after_study: int


def _patient_age(birth_date: str, study_date: str) -> str:
    born = dt.date.fromisoformat(f"{birth_date[:4]}-{birth_date[4:6]}-{birth_date[6:]}")
    seen = dt.date.fromisoformat(f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}")
    years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return f"{years:03d}Y"


def common_attributes(
    study: StudyContext, series: SeriesContext, sop_class_uid: str, sop_uid: str
) -> Dataset:
    # Patient, General Study, Patient Study, General Series, General Equipment and
    # SOP Common modules.
    site = study.site
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid

    ds.InstanceCreationDate = study.study_date
    ds.InstanceCreationTime = study.time_after(series.seconds_after_study + 60)
    ds.StudyDate = study.study_date
    ds.SeriesDate = study.study_date
    ds.ContentDate = study.study_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = study.time_after(series.seconds_after_study)
    ds.ContentTime = study.time_after(series.seconds_after_study)
    ds.AccessionNumber = study.accession_number

    ds.Manufacturer = site.manufacturer
    ds.InstitutionName = site.institution_name
    ds.ReferringPhysicianName = study.referring_physician
    ds.StationName = site.station_name
    ds.StudyDescription = site.study_description
    ds.SeriesDescription = series.series_description
    ds.ManufacturerModelName = site.model_name

    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.IssuerOfPatientID = site.issuer_of_patient_id
    ds.PatientBirthDate = study.person.birth_date
    ds.PatientSex = study.person.sex
    ds.PatientAge = _patient_age(study.person.birth_date, study.study_date)
    ds.DeviceSerialNumber = study.device_serial_number
    ds.SoftwareVersions = site.software_versions

    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.series_number
    return ds


def _image_attributes(ds: Dataset, study: StudyContext, pixels: np.ndarray) -> None:
    # Frame of Reference, General Image, Image Pixel, CT Image and VOI LUT attributes
    # common to axial and localizer images.
    site = study.site
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "FFS" if site.feet_first else "HFS"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.ContrastBolusAgent = "IOPAMIDOL 370"
    ds.ContrastBolusRoute = "IV"
    ds.KVP = site.kvp
    ds.AcquisitionDate = study.study_date
    ds.GantryDetectorTilt = 0
    ds.RotationDirection = "CW"

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    if site.unsigned_pixels:
        ds.BitsStored = UNSIGNED_BITS_STORED
        ds.HighBit = UNSIGNED_BITS_STORED - 1
        ds.PixelRepresentation = 0
    else:
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.PixelData = stored_pixels(pixels, unsigned=site.unsigned_pixels).tobytes()


def stored_pixels(hu: np.ndarray, *, unsigned: bool) -> np.ndarray:
    """Convert HU to little-endian stored values, clipped to the stored range."""
    stored = np.rint(hu - RESCALE_INTERCEPT)
    if unsigned:
        return np.clip(stored, 0, 2**UNSIGNED_BITS_STORED - 1).astype("<u2")
    return np.clip(stored, -(2**15), 2**15 - 1).astype("<i2")


def axial_image(
    study: StudyContext,
    series: SeriesContext,
    *,
    grid: ScanGrid,
    slice_index: int,
    hu: np.ndarray,
    slice_thickness_mm: float,
    kernel: str,
    image_type: tuple[str, ...],
    window: tuple[float, float],
) -> Dataset:
    """Build one CT Image Storage instance of an axial series.

    `hu` is the (rows, columns) slice in HU and `window` the (center, width) in HU.
    Instance numbers start at 1 with `slice_index` 0, the first slice along the
    grid's slice direction.
    """
    instance_number = slice_index + 1
    sop_uid = make_uid(series.series_instance_uid, "image", instance_number)
    ds = common_attributes(study, series, CTImageStorage, sop_uid)
    _image_attributes(ds, study, hu)
    position = grid.slice_position(slice_index)
    ds.ImageType = list(image_type)
    ds.AcquisitionNumber = 1
    ds.AcquisitionTime = study.time_after(series.seconds_after_study - 20)
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [_ds_value(v) for v in position]
    ds.ImageOrientationPatient = [_ds_value(v) for v in grid.direction[:, :2].T.ravel()]
    ds.SliceLocation = _ds_value(position[2])
    ds.SliceThickness = _ds_value(slice_thickness_mm)
    ds.PixelSpacing = [_ds_value(grid.spacing_mm[1]), _ds_value(grid.spacing_mm[0])]
    ds.ReconstructionDiameter = _ds_value(grid.spacing_mm[0] * grid.size[0])
    ds.DataCollectionDiameter = 500
    ds.ConvolutionKernel = kernel
    ds.XRayTubeCurrent = 180
    ds.ExposureTime = 500
    ds.TableHeight = 160
    ds.WindowCenter, ds.WindowWidth = window
    return ds


def localizer_image(
    study: StudyContext,
    series: SeriesContext,
    *,
    origin_lps: np.ndarray,
    spacing_mm: tuple[float, float],
    hu: np.ndarray,
) -> Dataset:
    """Build the single coronal localizer image: rows run to the feet, columns to the left."""
    sop_uid = make_uid(series.series_instance_uid, "image", 1)
    ds = common_attributes(study, series, CTImageStorage, sop_uid)
    _image_attributes(ds, study, hu)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.AcquisitionNumber = 1
    ds.AcquisitionTime = study.time_after(series.seconds_after_study)
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [_ds_value(v) for v in origin_lps]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.PixelSpacing = [_ds_value(spacing_mm[0]), _ds_value(spacing_mm[1])]
    ds.SliceThickness = 1
    ds.ConvolutionKernel = study.site.thick_kernel
    ds.XRayTubeCurrent = 50
    ds.ExposureTime = 3000
    ds.TableHeight = 160
    ds.WindowCenter = 0
    ds.WindowWidth = 1200
    return ds


def _ds_value(value: float) -> str:
    # A Decimal String of at most 16 characters, rounded to 1e-6 mm.
    return f"{float(value):.6f}".rstrip("0").rstrip(".")[:16]


def with_file_meta(ds: Dataset) -> Dataset:
    """Attach File Meta Information for Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def write_instance(ds: Dataset, path: Path) -> None:
    """Write one instance as a DICOM Part 10 file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with_file_meta(ds).save_as(path, enforce_file_format=True)


def write_media(
    datasets: list[Dataset], root: Path, *, file_set_uid: str, file_set_id: str
) -> None:
    """Write instances as a DICOM File-set with a DICOMDIR, files under ``DICOM/``.

    pydicom's `FileSet` names files ``PTxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx`` at the
    root. The tree is then moved under ``DICOM/``, as many hospital CDs have it, and the DICOMDIR
    rewritten with the new Referenced File IDs.
    """
    file_set = FileSet()
    file_set.UID = UID(file_set_uid)
    file_set.ID = file_set_id
    for ds in datasets:
        file_set.add(with_file_meta(ds))
    root.mkdir(parents=True, exist_ok=True)
    file_set.write(root)

    # Move the tree and point each record at the new place. Changing the File-set ID
    # stages a DICOMDIR-only change, which `write(use_existing=True)` applies.
    media = root / "DICOM"
    media.mkdir()
    for top in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "DICOM"):
        shutil.move(top, media / top.name)
    for instance in file_set:
        # NOTE: `RecordNode._record` is private in pydicom 3.0. FileSet has no public
        # way to choose file names, so a pydicom upgrade may need this line changed.
        record = instance.node._record
        record.ReferencedFileID = ["DICOM", *record.ReferencedFileID]
    file_set.ID = None
    file_set.ID = file_set_id
    file_set.write(use_existing=True)
    logger.info("wrote a DICOM File-set of %d instances at %s", len(datasets), root)
