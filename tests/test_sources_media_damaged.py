"""Damaged and relocated media: every readable instance still ingested, every fault named.

Each case starts from the synthetic cohort's CD (a DICOMDIR over ``DICOM/``) and damages
it the way real media are damaged: the folder copied under another name, an offset in a
directory record pointing nowhere, a record naming a further DICOMDIR, a path leaving
the file set, the DICOMDIR itself cut short. The DICOMDIR is patched byte for byte, with
values of the same length, so the rest of its offsets stay valid.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from priors.catalog import Catalog
from priors.sources import MediaSource, open_source
from priors.synthetic import write_cohort

# (0004,1420) Offset of Referenced Lower-Level Directory Entity, explicit VR UL, 4 bytes.
LOWER_LEVEL_OFFSET = b"\x04\x00\x20\x14UL\x04\x00"
# An offset no directory record can have: past the end of any DICOMDIR written here.
BOGUS_OFFSET = 0x7FFFFFF0


@pytest.fixture(scope="module")
def pristine_cd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cohort = write_cohort(tmp_path_factory.mktemp("cd") / "cohort", seed=2, n_patients=1,
                          n_timepoints=2, matrix=32, n_slices=8)
    return cohort.media_dir


@pytest.fixture
def cd(pristine_cd: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "cd"
    shutil.copytree(pristine_cd, copy)
    return copy


def _instances(root: Path) -> list[Path]:
    return sorted(path for path in (root / "DICOM").rglob("*") if path.is_file())


def _ingest(source: MediaSource, tmp_path: Path) -> tuple[Catalog, object]:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    return catalog, catalog.ingest([source], workers=1)


def test_pristine_cd_has_no_issues(cd: Path, tmp_path: Path) -> None:
    source = open_source(cd)
    _, report = _ingest(source, tmp_path)

    assert isinstance(source, MediaSource)
    assert report.counts["indexed"] == len(_instances(cd))
    assert report.absent == 0
    assert report.issues == []


def test_relocated_cd_found_by_scan(cd: Path, tmp_path: Path) -> None:
    expected = len(_instances(cd))
    (cd / "COPY").mkdir()
    (cd / "DICOM").rename(cd / "COPY" / "DICOM")

    _, report = _ingest(open_source(cd), tmp_path)

    assert report.counts["indexed"] == expected
    assert report.absent == expected
    assert any("scan" in issue or "absent" in issue for issue in report.issues), report.issues


def test_bad_lower_level_offset_reported(cd: Path, tmp_path: Path) -> None:
    expected = len(_instances(cd))
    dicomdir = cd / "DICOMDIR"
    data = bytearray(dicomdir.read_bytes())
    position = data.find(LOWER_LEVEL_OFFSET)
    while position >= 0:
        start = position + len(LOWER_LEVEL_OFFSET)
        if struct.unpack_from("<I", data, start)[0]:
            struct.pack_into("<I", data, start, BOGUS_OFFSET)
            break
        position = data.find(LOWER_LEVEL_OFFSET, start)
    assert position >= 0, "no record with a lower-level offset to damage"
    dicomdir.write_bytes(bytes(data))

    _, report = _ingest(open_source(cd), tmp_path)

    assert report.counts["indexed"] == expected
    assert any(f"offset {BOGUS_OFFSET} matches no directory record" in issue
               for issue in report.issues), report.issues
    assert any("not linked from the root" in issue for issue in report.issues)


def test_record_naming_a_further_dicomdir(cd: Path, tmp_path: Path) -> None:
    files = _instances(cd)
    target = files[0]
    dicomdir = cd / "DICOMDIR"
    data = dicomdir.read_bytes()
    name = target.name.encode()
    assert len(name) == len(b"DICOMDIR"), "the cohort's file names are 8 characters"
    dicomdir.write_bytes(data.replace(name, b"DICOMDIR", 1))
    shutil.copy(dicomdir, target.parent / "DICOMDIR")

    _, report = _ingest(open_source(cd), tmp_path)

    assert report.counts["indexed"] == len(files)
    assert any("references a further DICOMDIR" in issue for issue in report.issues)
    nested = [item for item in report.files if item.location.endswith("/DICOMDIR")
              and Path(item.location).parent != cd]
    assert [item.outcome for item in nested] == ["skipped"]


def test_record_leaving_the_file_set(cd: Path, tmp_path: Path) -> None:
    files = _instances(cd)
    dicomdir = cd / "DICOMDIR"
    data = dicomdir.read_bytes()
    # "DICOM" is the first component of every Referenced File ID; ".." padded to the
    # same length leaves the offsets valid.
    dicomdir.write_bytes(data.replace(b"DICOM\\", b"..   \\", 1))

    _, report = _ingest(open_source(cd), tmp_path)

    assert report.counts["indexed"] == len(files)
    assert any("is not a relative path inside the file set" in issue
               for issue in report.issues), report.issues


def test_truncated_dicomdir_scanned(cd: Path, tmp_path: Path) -> None:
    files = _instances(cd)
    dicomdir = cd / "DICOMDIR"
    data = dicomdir.read_bytes()
    dicomdir.write_bytes(data[: len(data) // 2])

    source = open_source(cd)
    _, report = _ingest(source, tmp_path)

    assert report.counts["indexed"] == len(files)
    assert any("the DICOMDIR is truncated" in issue for issue in report.issues), report.issues


def test_cut_undefined_length_dicomdir_scanned(cd: Path, tmp_path: Path) -> None:
    import pydicom

    files = _instances(cd)
    dicomdir = cd / "DICOMDIR"
    ds = pydicom.dcmread(dicomdir)
    ds["DirectoryRecordSequence"].is_undefined_length = True
    ds.save_as(dicomdir)
    # Drop the closing (FFFE,E0DD) delimiter and its length.
    dicomdir.write_bytes(dicomdir.read_bytes()[:-8])

    _, report = _ingest(open_source(cd), tmp_path)

    assert report.counts["indexed"] == len(files)
    assert any("cannot read DICOMDIR" in issue for issue in report.issues), report.issues
    (outcome,) = [item for item in report.files if item.location == str(dicomdir)]
    assert outcome.outcome == "rejected"
    assert "cannot read DICOMDIR" in outcome.reason
