"""The fast paths of ingest give what the plain pydicom paths give.

Covers the raw value decoder of the header parser and its memo, the single read of
small files, the bulk catalog writes and the ingest benchmark script.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

import priors.catalog.catalog as catalog_module
import priors.catalog.examine as examine_module
import priors.dicom.header as header_module
from priors.catalog import Catalog
from priors.catalog.examine import examine_file
from priors.dicom.header import (
    InstanceHeader,
    attribute_value,
    header_from_dataset,
    read_dataset,
)
from priors.sources import FolderSource

REPO_ROOT = Path(__file__).resolve().parents[1]
# UID root of the test data written here.
UID_ROOT = "1.2.826.0.1.3680043.10.1.77"

# One element per case, encoded by hand so that padding, NULs and spaces are exactly
# as given: (keyword, tag, VR, value bytes, Specific Character Set).
RAW_CASES = [
    ("Modality", 0x00080060, b"CS", b"CT", "ISO_IR 100"),
    ("Modality", 0x00080060, b"CS", b"CT\x00\x00", "ISO_IR 100"),
    ("Modality", 0x00080060, b"LO", b" MR ", "ISO_IR 100"),
    ("ImageType", 0x00080008, b"CS", b"ORIGINAL\\PRIMARY\\AXIAL ", "ISO_IR 100"),
    ("ImageType", 0x00080008, b"CS", b"ORIGINAL \\ PRIMARY", "ISO_IR 100"),
    ("StudyDescription", 0x00081030, b"LO", b"Thorax  \\ abdomen \x00", "ISO_IR 100"),
    ("StudyDescription", 0x00081030, b"UT", b"a\\b  ", "ISO_IR 100"),
    ("InstitutionName", 0x00080080, b"LO", b"H\xf4pital Nord", "ISO_IR 100"),
    ("StationName", 0x00081010, b"SH", b"\x1b$B;3ED\x1b(B", "\\ISO 2022 IR 87"),
    ("PatientID", 0x00100020, b"LO", b"  ID 7 ", "ISO_IR 192"),
    ("SOPInstanceUID", 0x00080018, b"UI", f"{UID_ROOT}.5\x00".encode(), "ISO_IR 100"),
    ("StudyDate", 0x00080020, b"DA", b"20240101", "ISO_IR 100"),
    ("StudyTime", 0x00080030, b"TM", b"101500.123 ", "ISO_IR 100"),
    ("SliceThickness", 0x00180050, b"DS", b" 1.25", "ISO_IR 100"),
    ("SliceThickness", 0x00180050, b"DS", b"1.25E+00", "ISO_IR 100"),
    ("SliceThickness", 0x00180050, b"DS", b"+.5 ", "ISO_IR 100"),
    ("SliceThickness", 0x00180050, b"DS", b"thin", "ISO_IR 100"),
    ("SliceThickness", 0x00180050, b"DS", b"", "ISO_IR 100"),
    ("ImagePositionPatient", 0x00200032, b"DS", b"-100.5\\-200\\ 30.25 ", "ISO_IR 100"),
    ("ImagePositionPatient", 0x00200032, b"DS", b"-100.5\\-200", "ISO_IR 100"),
    ("SeriesNumber", 0x00200011, b"IS", b" 7", "ISO_IR 100"),
    ("SeriesNumber", 0x00200011, b"IS", b"7.0 ", "ISO_IR 100"),
    ("SeriesNumber", 0x00200011, b"IS", b"+3", "ISO_IR 100"),
    ("InstanceNumber", 0x00200013, b"IS", b"", "ISO_IR 100"),
    ("PatientName", 0x00100010, b"PN", b"Doe^John ", "ISO_IR 100"),
    ("PatientName", 0x00100010, b"PN", b"Doe^John==\x00", "ISO_IR 192"),
    ("PatientName", 0x00100010, b"PN", b"Doe^John\\Roe^Jane", "ISO_IR 100"),
    ("PatientName", 0x00100010, b"PN", b"M\xfcller^Eva", "ISO_IR 100"),
    ("PatientName", 0x00100010, b"PN", b"Yamada^Taro=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B",
     "\\ISO 2022 IR 87"),
    ("PatientName", 0x00100010, b"PN", b"", "ISO_IR 100"),
    ("Rows", 0x00280010, b"US", struct.pack("<H", 512), "ISO_IR 100"),
    ("Rows", 0x00280010, b"US", struct.pack("<HH", 512, 256), "ISO_IR 100"),
]


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    # Explicit VR Little Endian with a 2-byte length; values padded to even length.
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    group, element = divmod(tag, 0x10000)
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _bare_dataset(elements: list[tuple[int, bytes, bytes]]) -> Dataset:
    body = b"".join(_element(*item) for item in sorted(elements))
    return read_dataset(io.BytesIO(body), defer_size=None)


def _slow_header(ds: Dataset, monkeypatch: pytest.MonkeyPatch, *,
                 syntax: str = ExplicitVRLittleEndian):
    # The header as pydicom's own conversion gives it, with the raw decoder and its
    # memo off.
    with monkeypatch.context() as patched:
        patched.setattr(header_module, "_raw_decoding_enabled", lambda: False)
        return header_from_dataset(ds, transfer_syntax_uid=syntax)


@pytest.mark.parametrize(("keyword", "tag", "vr", "value", "charset"), RAW_CASES)
def test_raw_values_match_pydicom(keyword: str, tag: int, vr: bytes, value: bytes,
                                  charset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    elements = [(0x00080005, b"CS", charset.encode()), (tag, vr, value)]
    fast = header_from_dataset(_bare_dataset(elements),
                               transfer_syntax_uid=ExplicitVRLittleEndian)
    slow = _slow_header(_bare_dataset(elements), monkeypatch)

    assert fast == slow


def test_raw_decoder_used_for_plain_values() -> None:
    ds = _bare_dataset([(0x00080060, b"CS", b"CT"), (0x00280010, b"US", b"\x00\x02"),
                        (0x00180050, b"DS", b"2.5")])

    assert header_module._raw_value(ds, "Modality", numeric=False) == "CT"
    assert header_module._raw_value(ds, "Rows", numeric=False) == 512
    assert header_module._raw_value(ds, "SliceThickness", numeric=True) == "2.5"
    assert header_module._raw_value(ds, "SliceThickness", numeric=False) is (
        header_module._NOT_DECODED
    )
    assert header_module._raw_value(ds, "StudyDate", numeric=False) is None


def _ct_dataset(sop_uid: str, *, series: str, patient: str, pixel_value: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20240102"
    ds.Modality = "CT"
    ds.PatientName = f"Speed^{patient}"
    ds.PatientID = patient
    ds.StudyInstanceUID = f"{UID_ROOT}.1.{patient[-1]}"
    ds.SeriesInstanceUID = f"{UID_ROOT}.2.{series}"
    ds.SeriesNumber = int(series)
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = ["-10.5", "-10.5", "3"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.SliceThickness = "1.5"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.full((4, 4), pixel_value, dtype="<i2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    return ds


def test_attribute_value_matches_get(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    _ct_dataset(f"{UID_ROOT}.3.1", series="4", patient="P1", pixel_value=9).save_as(
        path, enforce_file_format=True
    )
    ds = read_dataset(path, defer_size=None)
    expected = read_dataset(path, defer_size=None)

    for keyword in ("Rows", "BitsAllocated", "PixelData", "SOPInstanceUID",
                    "PhotometricInterpretation", "NumberOfFrames", "ImageType"):
        assert attribute_value(ds, keyword) == expected.get(keyword), keyword
    assert attribute_value(ds.file_meta, "MediaStorageSOPClassUID") == CTImageStorage


def test_large_file_read_from_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ct.dcm"
    _ct_dataset(f"{UID_ROOT}.3.2", series="4", patient="P1", pixel_value=9).save_as(
        path, enforce_file_format=True
    )
    in_memory = examine_file(str(path), "instance")
    monkeypatch.setattr(examine_module, "SINGLE_READ_MAX_BYTES", 200)
    from_disk = examine_file(str(path), "instance")

    assert in_memory.outcome == "indexed"
    assert from_disk == in_memory


def _write_tree(root: Path) -> list[str]:
    # Two patients, three series, seven instances; returns their SOP Instance UIDs.
    uids = []
    for index, (series, patient) in enumerate(
        [("4", "P1"), ("4", "P1"), ("5", "P1"), ("5", "P1"), ("6", "P2"), ("6", "P2"),
         ("6", "P2")]
    ):
        uid = f"{UID_ROOT}.3.{10 + index}"
        folder = root / patient / series
        folder.mkdir(parents=True, exist_ok=True)
        _ct_dataset(uid, series=series, patient=patient, pixel_value=index).save_as(
            folder / f"{index}.dcm", enforce_file_format=True
        )
        uids.append(uid)
    return uids


def test_batches_write_hierarchy(catalog_url: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tree"
    uids = _write_tree(root)
    monkeypatch.setattr(catalog_module, "WRITE_BATCH", 3)
    catalog = Catalog(catalog_url)
    report = catalog.ingest([FolderSource(root)], workers=1)

    assert report.counts["indexed"] == 7
    assert len(catalog.patient_records()) == 2
    assert len(catalog.studies()) == 2
    assert {row.series_number: row.instance_count for row in catalog.series()} == {
        4: 2, 5: 2, 6: 3
    }
    assert [row.sop_instance_uid for row in catalog.instances_of_sources(
        [FolderSource(root).source_id])] == sorted(uids)
    catalog.close()


def test_changed_file_keeps_job_outcome(catalog_url: str, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    uids = _write_tree(root)
    catalog = Catalog(catalog_url)
    source = FolderSource(root)
    catalog.ingest([source], workers=1)
    changed = root / "P1" / "4" / "0.dcm"
    catalog.mark_used([str(changed)], "job-1")

    ds = _ct_dataset(uids[0], series="4", patient="P1", pixel_value=0)
    ds.SeriesDescription = "re-encoded with one more attribute"
    ds.save_as(changed, enforce_file_format=True)
    report = catalog.ingest([source], workers=1)

    assert report.files_read == 1
    assert len(catalog.instances_by_uid(uids[0])) == 1
    outcomes = {item.location: item.outcome for item in catalog.job_outcomes("job-1")}
    assert outcomes[str(changed)] == "used"
    catalog.close()


def test_conflict_within_one_batch(catalog_url: str, tmp_path: Path) -> None:
    root = tmp_path / "conflict"
    root.mkdir()
    uid = f"{UID_ROOT}.3.30"
    for name, pixel_value in (("a.dcm", 1), ("b.dcm", 2)):
        _ct_dataset(uid, series="7", patient="P3", pixel_value=pixel_value).save_as(
            root / name, enforce_file_format=True
        )
    catalog = Catalog(catalog_url)
    report = catalog.ingest([FolderSource(root)], workers=1)

    assert report.counts["indexed"] == 1
    assert report.counts["rejected"] == 1
    assert report.conflicts == 1
    assert report.reasons("rejected")[str(root / "b.dcm")].startswith("conflict: ")
    assert [row.conflicting_location for row in catalog.conflicts()] == [str(root / "b.dcm")]
    catalog.close()


def test_benchmark_script_runs(tmp_path: Path) -> None:
    output = tmp_path / "figures.json"
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "ingest_speed.py"),
         "--instances", "40", "--matrix", "8", "--repeats", "1", "--json", str(output)],
        capture_output=True, text=True, timeout=120, check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert "ingest, 2 workers" in completed.stdout
    figures = json.loads(output.read_text())
    assert figures["instances"] == 40
    if Path("/proc/self/task").is_dir():
        # The workers' CPU time is read from /proc, so it is there on Linux only.
        assert figures["median_cpu_seconds"]["ingest, 2 workers"] > 0
        assert figures["ingest_cpu_share_of_pydicom"] > 0


@pytest.mark.shared_data
@pytest.mark.parametrize("cd", ["spine-cd-a", "spine-cd-b"])
def test_spine_headers_match_pydicom(shared_data: Path, cd: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Japanese character sets, person names with escape sequences and real scanner
    # padding: the raw decoder must give what pydicom's conversion gives.
    compared = 0
    for path in sorted((shared_data / cd).rglob("*")):
        if not path.is_file():
            continue
        result = examine_file(str(path), "instance")
        if result.outcome != "indexed":
            continue
        ds = read_dataset(path, defer_size=None)
        syntax = result.header.transfer_syntax_uid
        assert result.header == _slow_header(ds, monkeypatch, syntax=syntax), path.name
        compared += 1

    assert compared > 60


def test_memo_keeps_vr_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same bytes decode differently as CS (split after stripping the whole value)
    # and as LO (each value stripped), so a memoised result must not cross VRs.
    headers = []
    for vr in (b"CS", b"LO", b"CS"):
        elements = [(0x00080005, b"CS", b"ISO_IR 100"), (0x00080060, vr, b"A \\B")]
        fast = header_from_dataset(_bare_dataset(elements),
                                   transfer_syntax_uid=ExplicitVRLittleEndian)
        slow = _slow_header(_bare_dataset(elements), monkeypatch)
        assert fast == slow, vr
        headers.append(fast.modality)

    assert headers == ["A \\B", "A\\B", "A \\B"]


def test_memo_follows_changed_values() -> None:
    # Consecutive instances of one series differ in a few attributes only.
    for index in range(3):
        elements = [(0x00200013, b"IS", str(index + 1).encode()),
                    (0x00200032, b"DS", f"0\\0\\{index * 2.5}".encode()),
                    (0x00080060, b"CS", b"CT")]
        header = header_from_dataset(_bare_dataset(elements),
                                     transfer_syntax_uid=ExplicitVRLittleEndian)

        assert header.instance_number == index + 1
        assert header.image_position_patient == (0.0, 0.0, index * 2.5)
        assert header.modality == "CT"


def test_memo_stays_small(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    _write_tree(root)
    for path in sorted(root.rglob("*.dcm")):
        examine_file(str(path), "instance")

    # One entry per (conversion, keyword), however many instances are parsed.
    assert len(header_module._MEMO) <= len(dataclasses.fields(InstanceHeader))


def test_non_finite_numbers_parsed_none() -> None:
    # pydicom reads these DS values as NaN and infinity. The header contains None
    # instead, as the catalog stores them.
    with pytest.warns(UserWarning, match="Invalid value for VR DS"):
        ds = Dataset()
        ds.SliceThickness = "NaN"
        ds.ImagePositionPatient = ["inf", "0", "0"]
        ds.EchoTime = "-inf"
    ds.PixelSpacing = ["0.5", "0.5"]
    header = header_from_dataset(ds, transfer_syntax_uid=ExplicitVRLittleEndian)

    assert header.slice_thickness is None
    assert header.image_position_patient is None
    assert header.echo_time is None
    assert header.pixel_spacing == (0.5, 0.5)


@pytest.mark.parametrize("size_change", [-100, 0, 100])
def test_single_read_gets_whole_file(tmp_path: Path, size_change: int) -> None:
    # ``size`` comes from an earlier stat(); the file may have grown or shrunk since.
    path = tmp_path / "ct.dcm"
    _ct_dataset(f"{UID_ROOT}.3.40", series="4", patient="P1", pixel_value=3).save_as(
        path, enforce_file_format=True
    )
    content = path.read_bytes()
    kind, data = examine_module._sniff_and_read(str(path), len(content) + size_change)

    assert kind == "dicom-part10"
    assert data == content


def test_single_read_skips_large_file(tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ct.dcm"
    _ct_dataset(f"{UID_ROOT}.3.41", series="4", patient="P1", pixel_value=3).save_as(
        path, enforce_file_format=True
    )
    monkeypatch.setattr(examine_module, "SINGLE_READ_MAX_BYTES", 200)

    assert examine_module._sniff_and_read(str(path), path.stat().st_size) == (
        "dicom-part10", None
    )
