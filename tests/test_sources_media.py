"""Folder and DICOMDIR media sources: listing, case-insensitive names, absent files, ZIP."""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import pytest

from priors.dicom.dicomdir import read_dicomdir
from priors.sources import FolderSource, MediaSource, open_source


@pytest.mark.shared_data
def test_cd_a_lists_every_file(shared_data: Path) -> None:
    source = open_source(shared_data / "spine-cd-a")
    assert isinstance(source, MediaSource)
    assert source.source_id == f"media:PSP@{shared_data / 'spine-cd-a'}"

    files = list(source.iter_files())
    assert len(files) == 123
    assert Counter(item.role for item in files) == {"instance": 122, "dicomdir": 1}
    absent = source.absent_references()
    assert len(absent) == 269
    assert all(item.sop_instance_uid for item in absent)
    assert [issue.kind for issue in source.issues()] == ["absent"]


@pytest.mark.shared_data
def test_cd_a_dicomdir_records(shared_data: Path) -> None:
    dicomdir = read_dicomdir(shared_data / "spine-cd-a" / "DICOMDIR")
    types = Counter(record.record_type for record in dicomdir.records)
    assert types == {"IMAGE": 390, "SERIES": 26, "STUDY": 8, "PATIENT": 1}
    assert len(dicomdir.absent_records) == 269
    assert dicomdir.file_set_id == "PSP"
    assert dicomdir.issues == ()


@pytest.mark.shared_data
def test_lower_case_media_resolved(shared_data: Path, tmp_path: Path) -> None:
    # ISO 9660 media mounted with lower-case names: link every file under its lower name.
    original = shared_data / "spine-cd-b"
    copy = tmp_path / "cd"
    (copy / "dcmdt").mkdir(parents=True)
    (copy / "dicomdir").symlink_to(original / "DICOMDIR")
    for path in (original / "DCMDT").iterdir():
        (copy / "dcmdt" / path.name.lower()).symlink_to(path)

    source = open_source(copy)
    assert isinstance(source, MediaSource)
    dicomdir = read_dicomdir(copy / "dicomdir")
    assert len(dicomdir.file_records) == 67
    assert dicomdir.absent_records == ()
    assert all(record.path.parent.name == "dcmdt" for record in dicomdir.file_records)
    assert len(list(source.iter_files())) == 68


@pytest.mark.shared_data
def test_unreferenced_file_found_by_scan(shared_data: Path, tmp_path: Path) -> None:
    original = shared_data / "spine-cd-b"
    copy = tmp_path / "cd"
    (copy / "DCMDT").mkdir(parents=True)
    (copy / "DICOMDIR").symlink_to(original / "DICOMDIR")
    for path in sorted((original / "DCMDT").iterdir())[:3]:
        (copy / "DCMDT" / path.name).symlink_to(path)
    (copy / "EXTRA").mkdir()
    extra = sorted((original / "DCMDT").iterdir())[3]
    (copy / "EXTRA" / "IMG").symlink_to(extra)

    source = open_source(copy)
    locations = [item.location for item in source.iter_files()]
    assert str(copy / "EXTRA" / "IMG") in locations
    assert len(locations) == 1 + 3 + 1
    assert len(source.absent_references()) == 64


def test_folder_reads_zip_members(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    root.mkdir()
    with zipfile.ZipFile(root / "bundle.ZIP", "w") as bundle:
        bundle.writestr("a/one.dcm", b"first")
        bundle.writestr("../escape.dcm", b"second")
    (root / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    cache = tmp_path / "cache"

    source = FolderSource(root, cache_dir=cache)
    files = list(source.iter_files())
    by_location = {item.location: item for item in files}
    assert by_location[str(root / "bundle.ZIP")].role == "archive"
    member = by_location[f"{root / 'bundle.ZIP'}!a/one.dcm"]
    assert member.path.read_bytes() == b"first"
    escaped = by_location[f"{root / 'bundle.ZIP'}!../escape.dcm"]
    assert escaped.path.is_relative_to(cache)
    # broken.zip is read as an archive because of its suffix. Opening it fails, and
    # the error goes with the file, so that ingest rejects it with that reason.
    broken = by_location[str(root / "broken.zip")]
    assert broken.role == "archive"
    assert broken.error.startswith("invalid ZIP archive: no end of central directory record")
    assert [issue.kind for issue in source.issues()] == ["archive"]

    # A second listing reuses the extracted copy.
    mtime = member.path.stat().st_mtime_ns
    list(FolderSource(root, cache_dir=cache).iter_files())
    assert member.path.stat().st_mtime_ns == mtime


def test_open_source_plain_folder(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    source = open_source(tmp_path, issuer="SITE-A")
    assert isinstance(source, FolderSource)
    assert not isinstance(source, MediaSource)
    assert source.issuer == "SITE-A"
    assert source.describe()["kind"] == "folder"
    with pytest.raises(NotADirectoryError, match="not a folder"):
        open_source(tmp_path / "x.txt")
