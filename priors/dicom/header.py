"""Typed records of the DICOM header fields that later layers need.

``read_header`` reads a file without loading its pixel values and returns an
``InstanceHeader``. Parsing is tolerant: a missing or malformed value becomes ``""``
or ``None`` and never raises, so one bad attribute cannot hide an instance. Whether
the instance is valid (it has its UIDs, it is complete) is decided at ingest, which
calls ``missing_uids`` and ``find_truncation``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pydicom
from pydicom import config as pydicom_config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from priors.dicom.names import person_name_text

__all__ = [
    "REQUIRED_UIDS",
    "InstanceHeader",
    "attribute_value",
    "dataset_transfer_syntax",
    "find_truncation",
    "header_from_dataset",
    "header_from_dict",
    "header_to_dict",
    "missing_uids",
    "read_dataset",
    "read_header",
]

logger = logging.getLogger(__name__)

# Values longer than this stay on disk when ``read_header`` reads a file; Pixel Data
# is then present as an element but its bytes are never loaded.
DEFER_SIZE_BYTES = 4096

# Element value length meaning "undefined", ended by a delimitation item (PS3.5 7.1.1).
UNDEFINED_LENGTH = 0xFFFFFFFF

# Attributes without which an instance cannot be placed in the catalog.
REQUIRED_UIDS = (
    ("SOPInstanceUID", "(0008,0018)"),
    ("StudyInstanceUID", "(0020,000D)"),
    ("SeriesInstanceUID", "(0020,000E)"),
)

# (7FE0,0010) Pixel Data, (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data.
_PIXEL_TAGS = (BaseTag(0x7FE00010), BaseTag(0x7FE00008), BaseTag(0x7FE00009))

# Raw values of these VRs are decoded here when they are plain ASCII, giving what
# pydicom 3.0 gives (values.py): strings stripped of trailing spaces and NULs as a
# whole, then split at backslashes (AS, CS, DA, DT, TM, UI) ...
_STRING_VRS = frozenset({"AS", "CS", "DA", "DT", "TM", "UI"})
# ... text split first, each value stripped of trailing spaces and NULs (SH, LO, UC) ...
_TEXT_VRS = frozenset({"SH", "LO", "UC"})
# ... and long text never split (ST, LT, UT).
_SINGLE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
# Numbers in the plain forms that Python's float() reads as pydicom's DS and IS do.
# Other forms (inner spaces, a ':' separator) go through pydicom.
_NUMBER_PATTERNS = {
    "DS": re.compile(r" *[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"),
    "IS": re.compile(r" *[+-]?\d+"),
}
# pydicom returns OB and OW values as the bytes read, without a byte swap.
_BYTES_VRS = frozenset({"OB", "OW"})
# A single US value; several values go through pydicom, which returns a list.
US_BYTES = 2
# ISO 2022 code extensions start with ESC; a value containing it needs pydicom's decoder.
_ESCAPE = b"\x1b"
# Marks a value that the raw decoder leaves to pydicom.
_NOT_DECODED = object()
# Tags of the keywords read so far; a BaseTag skips pydicom's conversion of the key.
_TAGS: dict[str, BaseTag | None] = {}
# The same as plain ints, for the header parser's int-keyed element index.
_TAG_NUMBERS: dict[str, int | None] = {}
_UNKNOWN_TAG = -1


@dataclass(frozen=True)
class InstanceHeader:
    """Header fields of one DICOM instance, parsed into Python types.

    Text is ``""`` and numbers are ``None`` when the attribute is missing or invalid.
    A number that is not finite (a damaged DS value that reads as NaN or infinity) is
    ``None`` too, and so is a position, orientation or spacing containing one, as the
    catalog stores them. Geometry is in LPS millimetres as DICOM stores it.
    ``patient_name`` is the decoded Person Name with its component groups joined by
    ``=``. Identifying fields are left out of the ``repr``, so a logged or failing
    record shows no identity.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    transfer_syntax_uid: str
    patient_id: str = field(repr=False)
    issuer_of_patient_id: str
    other_patient_ids: tuple[tuple[str, str], ...] = field(repr=False)
    patient_name: str = field(repr=False)
    patient_birth_date: str = field(repr=False)
    patient_sex: str
    accession_number: str = field(repr=False)
    study_date: str
    study_time: str
    series_date: str
    series_time: str
    acquisition_date: str
    acquisition_time: str
    content_date: str
    content_time: str
    modality: str
    body_part_examined: str
    study_description: str
    series_description: str
    study_id: str
    series_number: int | None
    instance_number: int | None
    acquisition_number: int | None
    image_type: tuple[str, ...]
    image_position_patient: tuple[float, float, float] | None
    image_orientation_patient: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    rows: int | None
    columns: int | None
    number_of_frames: int
    bits_allocated: int | None
    photometric_interpretation: str
    convolution_kernel: str
    contrast_bolus_agent: str
    echo_time: float | None
    repetition_time: float | None
    echo_numbers: str
    manufacturer: str
    manufacturer_model_name: str
    institution_name: str
    station_name: str
    magnetic_field_strength: float | None
    patient_position: str
    has_pixel_data: bool


_HEADER_FIELDS = tuple(item.name for item in dataclasses.fields(InstanceHeader))


def read_dataset(
    path: str | os.PathLike[str] | BinaryIO, *, defer_size: int | None = DEFER_SIZE_BYTES
) -> Dataset:
    """Read a DICOM file, with or without the Part 10 preamble and file meta.

    A file without file meta is read as a bare data set; pydicom infers Implicit or
    Explicit VR Little Endian from its first element. ``path`` may also be a binary
    stream positioned at the start of the file's bytes.

    Raises
    ------
    OSError
        When the file cannot be read.
    pydicom.errors.InvalidDicomError
        When pydicom cannot parse it at all.
    """
    with warnings.catch_warnings():
        # pydicom warns about invalid values as it meets them; the header parser
        # below maps them to "" or None instead.
        warnings.simplefilter("ignore", UserWarning)
        source = path if hasattr(path, "read") else os.fspath(path)  # type: ignore[arg-type]
        return pydicom.dcmread(source, force=True, defer_size=defer_size)


def read_header(path: str | os.PathLike[str], *, dataset: Dataset | None = None) -> InstanceHeader:
    """Read the header of a DICOM file into an ``InstanceHeader``.

    Parameters
    ----------
    path
        DICOM file, Part 10 or a bare data set.
    dataset
        The data set already read from ``path``; the file is not read again.

    Returns
    -------
    InstanceHeader
        The parsed header. Pixel values are not loaded.

    Raises
    ------
    OSError
        When the file cannot be read.
    pydicom.errors.InvalidDicomError
        When pydicom cannot parse it.
    """
    ds = dataset if dataset is not None else read_dataset(path)
    return header_from_dataset(ds, transfer_syntax_uid=dataset_transfer_syntax(ds))


def dataset_transfer_syntax(ds: Dataset) -> str:
    """Return the transfer syntax a data set was read with.

    The file meta's (0002,0010) Transfer Syntax UID when present, else the encoding
    pydicom inferred for a bare data set.
    """
    file_meta = getattr(ds, "file_meta", None)
    syntax = str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""
    if syntax:
        return syntax
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return ""
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def header_from_dataset(ds: Dataset, *, transfer_syntax_uid: str) -> InstanceHeader:
    """Parse a data set into an ``InstanceHeader``; never raises on bad values.

    Parameters
    ----------
    ds
        The data set, read with or without its pixel data.
    transfer_syntax_uid
        Transfer syntax of the encoded instance.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # One reader a data set: it indexes the elements once for every lookup.
        attributes = _Attributes(ds)
        text, texts = attributes.text, attributes.texts
        number, integer, floats = attributes.number, attributes.integer, attributes.floats
        return InstanceHeader(
            sop_class_uid=text("SOPClassUID"),
            sop_instance_uid=text("SOPInstanceUID"),
            study_instance_uid=text("StudyInstanceUID"),
            series_instance_uid=text("SeriesInstanceUID"),
            frame_of_reference_uid=text("FrameOfReferenceUID"),
            transfer_syntax_uid=transfer_syntax_uid,
            patient_id=text("PatientID"),
            issuer_of_patient_id=text("IssuerOfPatientID"),
            other_patient_ids=_other_patient_ids(attributes),
            patient_name=attributes.person_name("PatientName"),
            patient_birth_date=text("PatientBirthDate"),
            patient_sex=text("PatientSex"),
            accession_number=text("AccessionNumber"),
            study_date=text("StudyDate"),
            study_time=text("StudyTime"),
            series_date=text("SeriesDate"),
            series_time=text("SeriesTime"),
            acquisition_date=text("AcquisitionDate"),
            acquisition_time=text("AcquisitionTime"),
            content_date=text("ContentDate"),
            content_time=text("ContentTime"),
            modality=text("Modality"),
            body_part_examined=text("BodyPartExamined"),
            study_description=text("StudyDescription"),
            series_description=text("SeriesDescription"),
            study_id=text("StudyID"),
            series_number=integer("SeriesNumber"),
            instance_number=integer("InstanceNumber"),
            acquisition_number=integer("AcquisitionNumber"),
            image_type=texts("ImageType"),
            image_position_patient=floats("ImagePositionPatient", count=3),  # type: ignore[arg-type]
            image_orientation_patient=floats("ImageOrientationPatient", count=6),
            pixel_spacing=floats("PixelSpacing", count=2),  # type: ignore[arg-type]
            slice_thickness=number("SliceThickness"),
            spacing_between_slices=number("SpacingBetweenSlices"),
            rows=integer("Rows"),
            columns=integer("Columns"),
            number_of_frames=max(integer("NumberOfFrames") or 1, 1),
            bits_allocated=integer("BitsAllocated"),
            photometric_interpretation=text("PhotometricInterpretation"),
            convolution_kernel="\\".join(texts("ConvolutionKernel")),
            contrast_bolus_agent=text("ContrastBolusAgent"),
            echo_time=number("EchoTime"),
            repetition_time=number("RepetitionTime"),
            echo_numbers="\\".join(texts("EchoNumbers")),
            manufacturer=text("Manufacturer"),
            manufacturer_model_name=text("ManufacturerModelName"),
            institution_name=text("InstitutionName"),
            station_name=text("StationName"),
            magnetic_field_strength=number("MagneticFieldStrength"),
            patient_position=text("PatientPosition"),
            has_pixel_data=attributes.has_any(_PIXEL_TAGS),
        )


def attribute_value(ds: Dataset, keyword: str, *, numeric: bool = False) -> Any:
    """Return the value of a top-level attribute, or ``None`` when it is missing.

    Single US values and plain ASCII values of the string and text VRs are decoded
    from the bytes read, as pydicom 3.0 decodes them, which takes a fraction of the
    time of pydicom's own conversion. With ``numeric``, plain DS and IS values are
    also decoded, as their text (a ``str`` or a list of them) for ``float()`` or
    ``int()``. Other values come from ``Dataset.get``, which raises what pydicom
    raises for an invalid value. The data set is left as read.
    """
    value = _raw_value(ds, keyword, numeric=numeric)
    return ds.get(keyword) if value is _NOT_DECODED else value


def missing_uids(header: InstanceHeader) -> list[str]:
    """Return the required UIDs that the header lacks, as "(gggg,eeee) Keyword"."""
    values = {
        "SOPInstanceUID": header.sop_instance_uid,
        "StudyInstanceUID": header.study_instance_uid,
        "SeriesInstanceUID": header.series_instance_uid,
    }
    return [f"{tag} {keyword}" for keyword, tag in REQUIRED_UIDS if not values[keyword]]


def find_truncation(ds: Dataset) -> str | None:
    """Describe how a data set read from a truncated file is cut short, else ``None``.

    pydicom stops quietly at the end of a file, leaving the last element shorter than
    its declared length. Only the last top-level element can be cut; its raw length
    is compared with the bytes read.

    NOTE: a file cut inside a sequence of undefined length is not detected, because
    such a sequence declares no length to compare with.
    """
    tags = list(ds.keys())
    if not tags:
        return "the data set has no elements after the File Meta Information"
    element = ds.get_item(tags[-1])
    if not isinstance(element, RawDataElement):
        return None
    if element.length == UNDEFINED_LENGTH or element.value is None:
        return None
    found = len(element.value)
    if found >= element.length:
        return None
    return (
        f"{element.tag} has {found} bytes of its declared {element.length}: "
        "the file is truncated"
    )


def header_to_dict(header: InstanceHeader) -> dict[str, Any]:
    """Return the header as JSON-ready values (tuples become lists)."""
    # A shallow copy is enough because every field is an immutable value. It takes
    # about 3 us against 48 us for ``dataclasses.asdict``, which copies recursively.
    return {name: getattr(header, name) for name in _HEADER_FIELDS}


def header_from_dict(data: Mapping[str, Any]) -> InstanceHeader:
    """Rebuild an ``InstanceHeader`` from ``header_to_dict`` output, as read from JSON."""
    values = dict(data)
    for name in ("image_type", "image_position_patient", "image_orientation_patient",
                 "pixel_spacing"):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    values["other_patient_ids"] = tuple(
        (str(pair[0]), str(pair[1])) for pair in values.get("other_patient_ids") or ()
    )
    known = {field.name for field in dataclasses.fields(InstanceHeader)}
    return InstanceHeader(**{name: value for name, value in values.items() if name in known})


def _raw_decoding_enabled() -> bool:
    # Under these pydicom settings pydicom returns something other than the raw
    # decoder: datetime objects for DA, DT and TM, or an error for an invalid value.
    return not (pydicom_config.datetime_conversion
                or pydicom_config.settings.reading_validation_mode == pydicom_config.RAISE)


def _raw_value(ds: Dataset, keyword: str, *, numeric: bool) -> Any:
    # Returns the decoded raw value of one attribute, None when it is missing, or
    # _NOT_DECODED when pydicom has to convert it (see _decode_raw).
    if not _raw_decoding_enabled():
        return _NOT_DECODED
    if keyword not in _TAGS:
        number = tag_for_keyword(keyword)
        _TAGS[keyword] = None if number is None else BaseTag(number)
    tag = _TAGS[keyword]
    if tag is None:
        return _NOT_DECODED
    element = ds.get_item(tag, keep_deferred=True)
    if element is None:
        return None
    if not isinstance(element, RawDataElement) or element.value is None:
        return _NOT_DECODED
    return _decode_raw(element, numeric=numeric)


def _decode_raw(element: RawDataElement, *, numeric: bool) -> Any:
    # Decodes plain ASCII values of common VRs from the bytes read, skipping pydicom's
    # conversion, which costs most of a header's parse time. Returns _NOT_DECODED for
    # everything else: other VRs and non-ASCII bytes. DS and IS only when ``numeric``,
    # since str() of pydicom's DS and IS values may differ from the text stored.
    vr = element.VR
    raw: bytes = element.value  # type: ignore[assignment]  # callers pass values read
    if vr == "US" and len(raw) == US_BYTES:
        return int.from_bytes(raw, "little" if element.is_little_endian else "big")
    if vr in _BYTES_VRS:
        return raw
    if not raw.isascii() or _ESCAPE in raw:
        return _NOT_DECODED

    text = raw.decode("ascii")
    if vr in _SINGLE_TEXT_VRS:
        return text.rstrip("\x00 ")
    if vr == "PN":
        # One ASCII name of one component group reads the same in every character
        # set. pydicom drops empty trailing groups, so names with "=" go through it.
        if "\\" in text or "=" in text:
            return _NOT_DECODED
        return text.rstrip("\x00 ")
    if vr in _TEXT_VRS:
        items = [item.rstrip("\x00 ") for item in text.split("\\")]
    elif vr in _STRING_VRS:
        items = text.rstrip(" \x00").split("\\")
    elif numeric and vr in _NUMBER_PATTERNS:
        items = text.rstrip(" \x00").split("\\")
        pattern = _NUMBER_PATTERNS[vr]
        if not all(pattern.fullmatch(item) for item in items):
            return _NOT_DECODED
    else:
        return _NOT_DECODED
    return items[0] if len(items) == 1 else items


def _tag_number(keyword: str) -> int | None:
    number = _TAG_NUMBERS.get(keyword, _UNKNOWN_TAG)
    if number == _UNKNOWN_TAG:
        number = _TAG_NUMBERS[keyword] = tag_for_keyword(keyword)
    return number


def _to_text(value: Any) -> str:
    if type(value) is str:
        return value.strip(" \x00")
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1", errors="replace").strip(" \x00")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(item) for item in value).strip(" \x00")
    return str(value).strip(" \x00")


def _to_texts(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value.strip(),)
    try:
        return tuple(str(item).strip() for item in value)
    except TypeError:
        return (str(value).strip(),)


def _to_number(value: Any) -> float | None:
    # The first value of a multi-valued number; None when not finite.
    if value is None or value == "":
        return None
    if not isinstance(value, (str, bytes, int, float)):
        try:
            value = value[0]
        except (TypeError, IndexError):
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _to_integer(value: Any) -> int | None:
    number = _to_number(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


def _to_floats(value: Any, count: int) -> tuple[float, ...] | None:
    # Exactly ``count`` finite numbers, else None.
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        numbers = tuple(float(item) for item in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(map(math.isfinite, numbers)):
        return None
    return numbers


# Typed value of the raw bytes last decoded for each (conversion, keyword). Most
# attributes of a series store the same bytes in every instance, so the next instance
# mostly finds them here. One entry per key keeps the memo at about 50 entries.
_MEMO: dict[tuple[Any, str], tuple[bytes, str | None, bool, Any]] = {}


class _Attributes:
    """Typed values of the top-level attributes of one data set, read by keyword.

    Missing, invalid and non-finite values become ``""`` or ``None`` as
    ``InstanceHeader`` describes. A list of numbers containing a non-finite one is
    ``None`` as a whole, because a position with an unknown coordinate is no position.
    """

    __slots__ = ("decode", "ds", "elements")

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        # Keyed by plain int: looking up a BaseTag key runs BaseTag.__eq__ in Python,
        # which cost more than decoding the value. keys() and values() of a data set
        # come from one dict, so they pair up.
        self.elements: dict[int, Any] = dict(
            zip(map(int, ds.keys()), ds.values(), strict=True)
        )
        self.decode = _raw_decoding_enabled()

    def has_any(self, tags: tuple[int, ...]) -> bool:
        return any(tag in self.elements for tag in tags)

    def value(self, keyword: str, *, numeric: bool = False) -> Any:
        number = _tag_number(keyword)
        if number is not None:
            element = self.elements.get(number)
            if element is None:
                return None
            if self.decode and isinstance(element, RawDataElement) and element.value is not None:
                value = _decode_raw(element, numeric=numeric)
                if value is not _NOT_DECODED:
                    return value
        try:
            return self.ds.get(keyword)
        except Exception:  # pydicom raises many types on invalid values
            logger.debug("cannot parse %s; treated as missing", keyword, exc_info=True)
            return None

    def typed(self, keyword: str, convert: Any, *, numeric: bool = False) -> Any:
        """Return ``convert`` of the attribute's value, reusing a memoised result."""
        number = _tag_number(keyword)
        element = self.elements.get(number) if number is not None else None
        if self.decode and isinstance(element, RawDataElement) and element.value is not None:
            # A raw decode depends only on the bytes, the VR and the byte order, so an
            # equal triple gives an equal result. Values the raw decoder leaves to
            # pydicom depend on the character set too and are not memoised.
            raw, vr, little = element.value, element.VR, element.is_little_endian
            key = (convert, keyword)
            memo = _MEMO.get(key)
            if memo is not None and memo[0] == raw and memo[1] == vr and memo[2] == little:
                return memo[3]
            value = _decode_raw(element, numeric=numeric)
            if value is not _NOT_DECODED:
                result = convert(value)
                _MEMO[key] = (raw, vr, little, result)
                return result
        return convert(self.value(keyword, numeric=numeric))

    def text(self, keyword: str) -> str:
        return self.typed(keyword, _to_text)

    def texts(self, keyword: str) -> tuple[str, ...]:
        return self.typed(keyword, _to_texts)

    def number(self, keyword: str) -> float | None:
        return self.typed(keyword, _to_number, numeric=True)

    def integer(self, keyword: str) -> int | None:
        return self.typed(keyword, _to_integer, numeric=True)

    def floats(self, keyword: str, *, count: int) -> tuple[float, ...] | None:
        return self.typed(keyword, _FLOATS[count], numeric=True)

    def person_name(self, keyword: str) -> str:
        element = self.elements.get(_tag_number(keyword))  # type: ignore[arg-type]
        if element is None:
            return ""
        if self.decode and isinstance(element, RawDataElement) and element.value is not None:
            value = _decode_raw(element, numeric=False)
            if value is not _NOT_DECODED:
                return value
        try:
            return person_name_text(self.ds, keyword)
        except Exception:  # a bad name must not hide the instance
            logger.debug("cannot decode %s; treated as missing", keyword)
            return ""


# One conversion object per count, so that the memo keys stay the same between calls.
_FLOATS = {count: functools.partial(_to_floats, count=count) for count in (2, 3, 6)}


def _other_patient_ids(attributes: _Attributes) -> tuple[tuple[str, str], ...]:
    sequence = attributes.value("OtherPatientIDsSequence")
    if not sequence:
        return ()
    pairs = []
    for item in sequence:
        item_attributes = _Attributes(item)
        patient_id = item_attributes.text("PatientID")
        if patient_id:
            pairs.append((patient_id, item_attributes.text("IssuerOfPatientID")))
    return tuple(pairs)
