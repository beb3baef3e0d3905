"""Catalog ingest of the real spine CDs and of a bad-input corpus built here."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage

from priors.catalog import Catalog
from priors.sources import FolderSource, open_source

# A sparse file this large must be passed over without being read.
SPARSE_BYTES = 2 * 1024**3
SPARSE_MAX_SECONDS = 5.0


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    store = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield store
    store.close()


@pytest.mark.shared_data
def test_spine_cds_accounted(catalog: Catalog, shared_data: Path) -> None:
    sources = [open_source(shared_data / "spine-cd-a"), open_source(shared_data / "spine-cd-b")]
    report = catalog.ingest(sources, workers=2)

    assert report.found == 123 + 69
    assert report.counts["indexed"] == 121 + 67
    assert report.counts["skipped"] == 4
    assert report.counts["rejected"] == 0
    assert report.absent == 269
    assert report.conflicts == 0
    skipped = report.reasons("skipped")
    assert skipped[str(shared_data / "spine-cd-a" / "DICOMDIR")] == "DICOMDIR read as an index"
    assert skipped[str(shared_data / "spine-cd-a" / "LICENSE")].startswith("not DICOM")
    assert catalog.counts() == {"found": 192, "used": 0, "indexed": 188, "skipped": 4,
                                "rejected": 0, "absent": 269}

    # Two CDs without an issuer: two patient records, keyed by source id.
    records = catalog.patient_records()
    assert sorted(record.issuer for record in records) == sorted(s.source_id for s in sources)
    assert len(catalog.studies()) == 3

    again = catalog.ingest(sources, workers=2)
    assert again.files_read == 0
    assert again.files_unchanged == 192
    assert again.counts == report.counts


@pytest.mark.shared_data
def test_same_pixels_across_cds(catalog: Catalog, shared_data: Path) -> None:
    sources = [open_source(shared_data / "spine-cd-a"), open_source(shared_data / "spine-cd-b")]
    catalog.ingest(sources, workers=1)

    by_position: dict[tuple[int | None, int | None], list] = {}
    for study in catalog.studies():
        if study.study_date != "20180107":
            continue
        for series in catalog.series(study.study_instance_uid):
            for row in catalog.instances(series.series_instance_uid):
                key = (row.header.series_number, row.header.instance_number)
                by_position.setdefault(key, []).append(row)
    assert len(by_position) == 67
    for key, (first, second) in by_position.items():
        assert first.source_id != second.source_id, key
        assert first.pixel_sha256 is not None, key
        assert first.pixel_sha256 == second.pixel_sha256, key
        assert first.file_sha256 != second.file_sha256, key
        assert first.sop_instance_uid != second.sop_instance_uid, key


def _dataset(sop_uid: str | None, *, pixel_value: int = 7) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    if sop_uid is not None:
        ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1.2"
    ds.PatientID = "BAD-CORPUS"
    ds.PatientName = "Corpus^Test"
    ds.Modality = "MR"
    ds.Rows = 8
    ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.full((8, 8), pixel_value, dtype="<u2").tobytes()
    return ds


def _write_part10(ds: Dataset, path: Path) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3")
    ds.save_as(path, enforce_file_format=True)


def _bad_corpus(root: Path) -> dict[str, str]:
    """Write one file per failure mode; return the expected outcome by file name."""
    root.mkdir()
    _write_part10(_dataset("1.2.826.0.1.3680043.10.1.3.1"), root / "good.dcm")
    (root / "notes.txt").write_text("not an image\n")
    (root / "empty.dcm").write_bytes(b"")

    good = (root / "good.dcm").read_bytes()
    # Cut inside the value of (0028,0103), the element before Pixel Data.
    pixel_tag = good.index(b"\xe0\x7f\x10\x00")
    (root / "cut-header.dcm").write_bytes(good[: pixel_tag - 1])
    (root / "cut-pixels.dcm").write_bytes(good[:-40])

    bare = _dataset("1.2.826.0.1.3680043.10.1.3.2")
    bare.save_as(root / "bare.dcm", implicit_vr=True, little_endian=True)

    _write_part10(_dataset(None), root / "no-sop-uid.dcm")
    _write_part10(_dataset("1.2.826.0.1.3680043.10.1.3.1", pixel_value=9), root / "z-clash.dcm")
    os.symlink("loop", root / "loop")
    os.symlink(".", root / "self-folder")
    subprocess.run(["truncate", "-s", str(SPARSE_BYTES), str(root / "sparse.bin")], check=True)
    return {
        "good.dcm": "indexed",
        "bare.dcm": "indexed",
        "notes.txt": "skipped",
        "empty.dcm": "skipped",
        "sparse.bin": "skipped",
        "cut-header.dcm": "rejected",
        "cut-pixels.dcm": "rejected",
        "no-sop-uid.dcm": "rejected",
        "z-clash.dcm": "rejected",
        "loop": "rejected",
    }


def test_bad_corpus_outcomes(catalog: Catalog, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    expected = _bad_corpus(root)
    source = FolderSource(root, issuer="TEST")

    started = time.perf_counter()
    report = catalog.ingest([source], workers=1)
    assert time.perf_counter() - started < SPARSE_MAX_SECONDS

    outcomes = {Path(item.location).name: item for item in report.files}
    assert sorted(outcomes) == sorted(expected)
    for name, outcome in expected.items():
        assert outcomes[name].outcome == outcome, (name, outcomes[name].reason)
    assert report.found == len(expected)
    assert sum(report.counts.values()) == len(expected)

    reasons = {name: item.reason for name, item in outcomes.items()}
    assert reasons["empty.dcm"] == "not DICOM: empty file (0 bytes)"
    assert reasons["sparse.bin"].startswith("not DICOM: no 'DICM' prefix")
    assert reasons["cut-header.dcm"] == (
        "truncated: (0028,0103) has 1 bytes of its declared 2: the file is truncated"
    )
    assert reasons["cut-pixels.dcm"].startswith("truncated: (7FE0,0010)")
    assert reasons["no-sop-uid.dcm"] == "invalid: missing (0008,0018) SOPInstanceUID"
    assert reasons["z-clash.dcm"].startswith(
        "conflict: SOP Instance UID 1.2.826.0.1.3680043.10.1.3.1 is already indexed"
    )
    assert "Too many levels of symbolic links" in reasons["loop"]
    assert reasons["bare.dcm"] == (
        f"no File Meta Information; read as a bare data set in transfer syntax "
        f"{ImplicitVRLittleEndian}"
    )
    assert reasons["good.dcm"] == ""

    conflicts = catalog.conflicts()
    assert len(conflicts) == 1
    assert conflicts[0].conflicting_location.endswith("z-clash.dcm")
    locations = catalog.instances_by_uid("1.2.826.0.1.3680043.10.1.3.1")
    assert [row.outcome for row in locations] == ["indexed", "rejected"]
    assert any("symbolic link loop" in issue for issue in report.issues)


def test_pixel_data_truncation_detected_without_raw_check(tmp_path: Path) -> None:
    from priors.dicom.hashing import PixelDataError, pixel_sha256_from_dataset

    ds = _dataset("1.2.826.0.1.3680043.10.1.3.9")
    ds.PixelData = ds.PixelData[:-2]
    with pytest.raises(PixelDataError, match=r"\(7FE0,0010\) Pixel Data has 126 bytes, "
                                             r"expected 128"):
        pixel_sha256_from_dataset(ds, transfer_syntax_uid=ExplicitVRLittleEndian)


def test_second_location_same_pixels(catalog: Catalog, tmp_path: Path) -> None:
    root = tmp_path / "copies"
    root.mkdir()
    _write_part10(_dataset("1.2.826.0.1.3680043.10.1.3.5"), root / "a.dcm")
    bare = _dataset("1.2.826.0.1.3680043.10.1.3.5")
    bare.save_as(root / "b.dcm", implicit_vr=True, little_endian=True)

    report = catalog.ingest([FolderSource(root)], workers=1)
    assert report.counts["indexed"] == 2
    assert report.conflicts == 0
    rows = catalog.instances_by_uid("1.2.826.0.1.3680043.10.1.3.5")
    assert len(rows) == 2
    assert rows[0].pixel_sha256 == rows[1].pixel_sha256
    assert rows[0].file_sha256 != rows[1].file_sha256


def test_changed_file_read_again(catalog: Catalog, tmp_path: Path) -> None:
    root = tmp_path / "changing"
    root.mkdir()
    _write_part10(_dataset("1.2.826.0.1.3680043.10.1.3.6"), root / "a.dcm")
    (root / "b.txt").write_text("text")
    source = FolderSource(root)
    assert catalog.ingest([source], workers=1).files_read == 2

    (root / "b.txt").write_text("longer text")
    report = catalog.ingest([source], workers=1)
    assert report.files_read == 1
    assert report.files_unchanged == 1

    (root / "b.txt").unlink()
    report = catalog.ingest([source], workers=1)
    assert report.files_removed == 1
    assert catalog.counts()["found"] == 1


def test_job_outcomes_add_up(catalog: Catalog, tmp_path: Path) -> None:
    root = tmp_path / "job"
    root.mkdir()
    for index in range(3):
        _write_part10(_dataset(f"1.2.826.0.1.3680043.10.1.4.{index}"), root / f"{index}.dcm")
    (root / "readme.txt").write_text("text")
    catalog.ingest([FolderSource(root)], workers=1)

    assert catalog.mark_used(["1.2.826.0.1.3680043.10.1.4.0", str(root / "1.dcm")], "job-1") == 2
    assert catalog.mark_skipped(["1.2.826.0.1.3680043.10.1.4.2"], "job-1",
                                reason="not chosen for pairing") == 1
    counts = catalog.counts(job_id="job-1")
    assert counts == {"found": 4, "used": 2, "indexed": 0, "skipped": 2, "rejected": 0,
                      "absent": 0}
    assert catalog.counts()["indexed"] == 3
    with pytest.raises(KeyError, match="match no catalogued file"):
        catalog.mark_used(["1.2.3.4.5"], "job-1")


def test_link_decisions_stored(catalog: Catalog) -> None:
    decision = {"record_a": ("A", "1"), "record_b": ("B", "2"), "linked": True,
                "pseudonym": "p-1", "evidence": {"birth_date": "equal"}}
    assert catalog.save_link_decisions([decision], job_id="job-2") == 1
    stored = catalog.link_decisions(job_id="job-2")
    assert stored[0]["record_a"] == ("A", "1")
    assert stored[0]["evidence"] == {"birth_date": "equal"}


@pytest.mark.slow
def test_worker_pool_matches_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import priors.catalog.catalog as catalog_module

    root = tmp_path / "bad"
    _bad_corpus(root)
    serial = Catalog(f"sqlite:///{tmp_path / 'serial.db'}")
    pooled = Catalog(f"sqlite:///{tmp_path / 'pooled.db'}")
    serial_report = serial.ingest([FolderSource(root)], workers=1)
    monkeypatch.setattr(catalog_module, "POOL_MIN_FILES", 1)
    pooled_report = pooled.ingest([FolderSource(root)], workers=2)

    assert pooled_report.counts == serial_report.counts
    assert pooled_report.reasons() == serial_report.reasons()
    serial.close()
    pooled.close()
