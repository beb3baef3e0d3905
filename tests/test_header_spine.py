"""Header records, names, hashes and sniffing against the real spine CDs and syntaxes."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from priors.dicom.dicomdir import read_dicomdir
from priors.dicom.hashing import (
    file_sha256,
    pixel_sha256_from_array,
    pixel_sha256_from_dataset,
)
from priors.dicom.header import (
    dataset_transfer_syntax,
    header_from_dict,
    header_to_dict,
    read_dataset,
    read_header,
)
from priors.dicom.names import person_name_groups
from priors.dicom.sniff import DICOM_PART10, DICOM_RAW, NOT_DICOM, sniff, sniff_bytes

pytestmark = pytest.mark.shared_data


def _first_image(folder: Path) -> Path:
    dicomdir = read_dicomdir(folder / "DICOMDIR")
    return next(record.path for record in dicomdir.file_records if record.path is not None)


@pytest.mark.parametrize("cd", ["spine-cd-a", "spine-cd-b"])
def test_japanese_name_matches_pydicom(shared_data: Path, cd: str) -> None:
    path = _first_image(shared_data / cd)
    header = read_header(path)
    reference = pydicom.dcmread(path, stop_before_pixels=True).PatientName

    groups = person_name_groups(header.patient_name)
    assert groups[0] == reference.alphabetic
    assert groups[1] == reference.ideographic
    assert groups[2] == reference.phonetic
    # The ideographic group contains kanji, so the escape sequences were decoded.
    assert "\x1b" not in header.patient_name
    assert any(ord(char) > 0x3000 for char in groups[1])


def test_header_repr_hides_identity(shared_data: Path) -> None:
    header = read_header(_first_image(shared_data / "spine-cd-a"))
    assert header.patient_id
    assert header.patient_id not in repr(header)
    assert person_name_groups(header.patient_name)[0] not in repr(header)


def test_header_round_trips_through_dict(shared_data: Path) -> None:
    header = read_header(_first_image(shared_data / "spine-cd-b"))
    assert header_from_dict(header_to_dict(header)) == header


# CD b writes 0.683594 where CD a writes 0.68359375: six decimals of rounding.
SPACING_TOLERANCE_MM = 1e-6


def test_pixel_spacing_parsed_numerically(shared_data: Path) -> None:
    # The same acquisition on both CDs; the spacing text differs, the numbers agree.
    spacing: dict[tuple[int | None, int | None], list[tuple[float, float]]] = {}
    for cd in ("spine-cd-a", "spine-cd-b"):
        for record in read_dicomdir(shared_data / cd / "DICOMDIR").file_records:
            if record.path is None:
                continue
            header = read_header(record.path)
            if header.study_date == "20180107":
                key = (header.series_number, header.instance_number)
                assert header.pixel_spacing is not None
                spacing.setdefault(key, []).append(header.pixel_spacing)
    assert len(spacing) == 67
    for key, (first, second) in spacing.items():
        assert first == pytest.approx(second, abs=SPACING_TOLERANCE_MM), key


def test_transfer_syntax_pixel_hashes(shared_data: Path) -> None:
    paths = sorted((shared_data / "transfer-syntaxes" / "In").glob("*.dcm"))
    assert len(paths) == 9
    reference = None
    for path in paths:
        ds = read_dataset(path, defer_size=None)
        syntax = pydicom.uid.UID(dataset_transfer_syntax(ds))
        digest = pixel_sha256_from_dataset(ds, transfer_syntax_uid=syntax)
        decoded = pixel_sha256_from_array(ds.pixel_array)
        if syntax.is_compressed:
            assert digest is None, path.name
        else:
            assert digest == decoded, path.name
        reference = reference or decoded
        # All nine files store the same pixel values.
        assert decoded == reference, path.name


def test_file_sha256_differs_across_syntaxes(shared_data: Path) -> None:
    folder = shared_data / "transfer-syntaxes" / "In"
    assert file_sha256(folder / "1.dcm") != file_sha256(folder / "2.dcm")


def test_sniff_real_files(shared_data: Path) -> None:
    assert sniff(shared_data / "transfer-syntaxes" / "In" / "1.dcm") == DICOM_PART10
    assert sniff(shared_data / "spine-cd-a" / "LICENSE") == NOT_DICOM


def test_sniff_bare_datasets() -> None:
    explicit = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"
    implicit = b"\x08\x00\x16\x00\x1a\x00\x00\x001.2.840.10008.5.1.4.1.1.2\x00"
    assert sniff_bytes(explicit) == DICOM_RAW
    assert sniff_bytes(implicit) == DICOM_RAW
    assert sniff_bytes(b"\x00" * 200) == NOT_DICOM
    assert sniff_bytes(b"PK\x03\x04" + b"\x00" * 200) == NOT_DICOM
