"""ZIP archives as sources and inside folders: members read, damage reported."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from priors.catalog import Catalog
from priors.sources import FolderSource, ZipSource, open_source

REASON_ARCHIVE = "ZIP archive; its members are listed as files of their own"
NO_CENTRAL_DIRECTORY = "invalid ZIP archive: no end of central directory record"


def _instance_bytes(sop_uid: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.3.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.3.2"
    ds.PatientID = "ZIP"
    ds.Modality = "MR"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(16, dtype="<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    stream = io.BytesIO()
    ds.save_as(stream, enforce_file_format=True)
    return stream.getvalue()


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    store = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield store
    store.close()


def test_zip_given_as_source(catalog: Catalog, tmp_path: Path) -> None:
    archive = tmp_path / "study.zip"
    _write_zip(archive, {"series/1.dcm": _instance_bytes("1.2.826.0.1.3680043.10.3.3.1"),
                         "series/2.dcm": _instance_bytes("1.2.826.0.1.3680043.10.3.3.2"),
                         "README.txt": b"two images\n"})
    source = open_source(archive, cache_dir=tmp_path / "cache")
    assert isinstance(source, ZipSource)
    assert source.describe()["kind"] == "zip"

    report = catalog.ingest([source], workers=1)
    reasons = {item.location: (item.outcome, item.reason) for item in report.files}
    assert reasons == {
        str(archive): ("skipped", REASON_ARCHIVE),
        f"{archive}!README.txt": ("skipped", reasons[f"{archive}!README.txt"][1]),
        f"{archive}!series/1.dcm": ("indexed", ""),
        f"{archive}!series/2.dcm": ("indexed", ""),
    }
    assert reasons[f"{archive}!README.txt"][1].startswith("not DICOM")
    rows = catalog.instances("1.2.826.0.1.3680043.10.3.2")
    assert [row.location for row in rows] == [f"{archive}!series/1.dcm",
                                              f"{archive}!series/2.dcm"]

    again = catalog.ingest([open_source(archive, cache_dir=tmp_path / "cache")], workers=1)
    assert again.files_read == 0
    assert again.files_unchanged == 4


def test_zip_without_suffix_opened(tmp_path: Path) -> None:
    archive = tmp_path / "export.bin"
    _write_zip(archive, {"a.dcm": b"x"})
    assert isinstance(open_source(archive, cache_dir=tmp_path / "cache"), ZipSource)


def test_open_source_rejects_plain_file(tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("text")
    with pytest.raises(NotADirectoryError, match=r"notes\.txt: not a folder and not a ZIP"):
        open_source(plain)
    with pytest.raises(FileNotFoundError, match=r"missing: no such file or folder"):
        open_source(tmp_path / "missing")


@pytest.mark.parametrize("given_directly", [True, False], ids=["source", "in-folder"])
def test_truncated_zip_rejected(catalog: Catalog, tmp_path: Path, given_directly: bool) -> None:
    whole = tmp_path / "whole.zip"
    _write_zip(whole, {"1.dcm": _instance_bytes("1.2.826.0.1.3680043.10.3.4.1")})
    folder = tmp_path / "folder"
    folder.mkdir()
    archive = folder / "cut.zip"
    archive.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (folder / "other.txt").write_text("text")

    if given_directly:
        source = open_source(archive, cache_dir=tmp_path / "cache")
    else:
        source = FolderSource(folder, cache_dir=tmp_path / "cache")
    report = catalog.ingest([source], workers=1)

    rejected = report.reasons("rejected")
    assert list(rejected) == [str(archive)]
    assert rejected[str(archive)].startswith(NO_CENTRAL_DIRECTORY)
    assert report.found == (1 if given_directly else 2)
    assert any(NO_CENTRAL_DIRECTORY in issue for issue in report.issues)


def test_corrupt_member_rejected_others_read(catalog: Catalog, tmp_path: Path) -> None:
    archive = tmp_path / "damaged.zip"
    good = _instance_bytes("1.2.826.0.1.3680043.10.3.5.1")
    bad = _instance_bytes("1.2.826.0.1.3680043.10.3.5.2")
    _write_zip(archive, {"good.dcm": good, "bad.dcm": bad})
    # Overwrite the middle of bad.dcm's compressed data; its CRC or inflate fails.
    with zipfile.ZipFile(archive) as bundle:
        info = bundle.getinfo("bad.dcm")
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[start:start + 16] = b"\xff" * 16
    archive.write_bytes(bytes(data))

    report = catalog.ingest([ZipSource(archive, cache_dir=tmp_path / "cache")], workers=1)
    outcomes = {item.location: (item.outcome, item.reason) for item in report.files}
    assert outcomes[f"{archive}!good.dcm"] == ("indexed", "")
    outcome, reason = outcomes[f"{archive}!bad.dcm"]
    assert outcome == "rejected"
    assert reason.startswith("invalid ZIP member: "), reason
    assert outcomes[str(archive)] == ("skipped", REASON_ARCHIVE)
    assert report.found == 3


def test_repeated_member_names_kept(tmp_path: Path) -> None:
    archive = tmp_path / "twice.zip"
    with zipfile.ZipFile(archive, "w") as bundle, pytest.warns(UserWarning, match="Duplicate"):
        bundle.writestr("a.dcm", b"first")
        bundle.writestr("a.dcm", b"second")
    files = list(ZipSource(archive, cache_dir=tmp_path / "cache").iter_files())
    locations = [item.location for item in files]
    assert locations == [str(archive), f"{archive}!a.dcm", f"{archive}!a.dcm#1"]
    assert [item.path.read_bytes() for item in files[1:]] == [b"first", b"second"]


def test_identical_archives_both_accounted(catalog: Catalog, tmp_path: Path) -> None:
    folder = tmp_path / "copies"
    folder.mkdir()
    members = {"1.dcm": _instance_bytes("1.2.826.0.1.3680043.10.3.6.1")}
    _write_zip(folder / "a.zip", members)
    (folder / "b.zip").write_bytes((folder / "a.zip").read_bytes())

    report = catalog.ingest([FolderSource(folder, cache_dir=tmp_path / "cache")], workers=1)
    indexed = sorted(report.reasons("indexed"))
    assert indexed == [f"{folder / 'a.zip'}!1.dcm", f"{folder / 'b.zip'}!1.dcm"]
    assert report.conflicts == 0


def test_cli_ingests_zip(priors_home: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    from priors.cli import main

    archive = tmp_path / "study.zip"
    _write_zip(archive, {"1.dcm": _instance_bytes("1.2.826.0.1.3680043.10.3.7.1")})
    assert main(["ingest", str(archive), "--json", "--workers", "1"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["found"] == 2
    assert counts["indexed"] == 1
    assert counts["skipped"] == 1

    assert main(["ingest", str(tmp_path / "missing.zip")]) == 2
    assert "does not exist" in capsys.readouterr().err

    plain = tmp_path / "notes.txt"
    plain.write_text("text")
    assert main(["ingest", str(plain)]) == 2
    assert "not a folder and not a ZIP archive" in capsys.readouterr().err
