"""The catalog on a real PostgreSQL server, against SQLite for the same input.

The ingest tests of ``test_catalog_ingest.py`` run on both databases through the
``catalog_url`` fixture. The tests here cover what differs between the dialects:
text order, NULL order, U+0000 in values and integers beyond 32 bits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from priors.catalog import Catalog
from priors.sources import FolderSource

STUDY_UID = "1.2.826.0.1.3680043.10.2.1"
# In byte order "1.2.3.2.4" < "1.2.3.23" ('.' < '3'); a linguistic collation that
# ignores punctuation compares "12324" with "12323" and puts them the other way.
PUNCTUATION_UIDS = ("1.2.826.0.1.3680043.10.2.3.23", "1.2.826.0.1.3680043.10.2.3.2.4")
# An (0020,0013) Instance Number of 12 digits, the most an IS value holds.
LARGE_INSTANCE_NUMBER = 999_999_999_999


def _write(path: Path, *, sop_uid: str, series_uid: str, series_number: int | None = 1,
           instance_number: int | str = 1, patient_name: str = "Order^Test") -> None:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid
    if series_number is not None:
        ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientID = "ORDER"
    ds.PatientName = patient_name
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
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def catalog(catalog_url: str) -> Catalog:
    store = Catalog(catalog_url)
    yield store
    store.close()


def test_server_is_loopback_only(postgres_server) -> None:
    import psycopg

    with psycopg.connect(postgres_server.url().replace("+psycopg", "")) as connection:
        listen = connection.execute("SHOW listen_addresses").fetchone()
        collation = connection.execute(
            "SELECT datcollate FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        linguistic = connection.execute(
            "SELECT %s::text < %s::text", PUNCTUATION_UIDS
        ).fetchone()
    assert listen == ("127.0.0.1",)
    if postgres_server.locale == "C":
        pytest.skip("no en_US locale installed; the server's default order is byte-wise")
    assert collation[0] == postgres_server.locale
    # The default collation puts the two UIDs out of byte order, so the order
    # tests below would fail without the catalog's own collation.
    assert linguistic == (True,)


def test_uid_order_byte_wise(catalog: Catalog, tmp_path: Path) -> None:
    root = tmp_path / "order"
    root.mkdir()
    series_uid = "1.2.826.0.1.3680043.10.2.2"
    for index, uid in enumerate(PUNCTUATION_UIDS):
        _write(root / f"{index}.dcm", sop_uid=uid, series_uid=series_uid)
    catalog.ingest([FolderSource(root, issuer="TEST")], workers=1)

    rows = catalog.instances(series_uid)
    assert [row.sop_instance_uid for row in rows] == sorted(PUNCTUATION_UIDS)
    outcomes = catalog.file_outcomes()
    assert [item.location for item in outcomes] == sorted(item.location for item in outcomes)


def test_location_order_byte_wise(catalog: Catalog, tmp_path: Path) -> None:
    root = tmp_path / "names"
    root.mkdir()
    # Upper case, an underscore and a dot: a linguistic collation orders these apart
    # from their code points.
    names = ["B.txt", "a_b.txt", "a.c.txt", "ab.txt", "_z.txt"]
    for name in names:
        (root / name).write_text(name)
    catalog.ingest([FolderSource(root)], workers=1)

    locations = [item.location for item in catalog.file_outcomes()]
    assert locations == sorted(str(root / name) for name in names)


def test_unnumbered_series_last(catalog: Catalog, tmp_path: Path) -> None:
    root = tmp_path / "series"
    root.mkdir()
    _write(root / "a.dcm", sop_uid="1.2.826.0.1.3680043.10.2.4.1",
           series_uid="1.2.826.0.1.3680043.10.2.5.1", series_number=None)
    _write(root / "b.dcm", sop_uid="1.2.826.0.1.3680043.10.2.4.2",
           series_uid="1.2.826.0.1.3680043.10.2.5.2", series_number=7)
    catalog.ingest([FolderSource(root)], workers=1)

    numbers = [row.series_number for row in catalog.series(STUDY_UID)]
    assert numbers == [7, None]


def test_nul_and_large_numbers_stored(catalog: Catalog, tmp_path: Path) -> None:
    root = tmp_path / "values"
    root.mkdir()
    sop_uid = "1.2.826.0.1.3680043.10.2.6.1"
    _write(root / "a.dcm", sop_uid=sop_uid, series_uid="1.2.826.0.1.3680043.10.2.7",
           instance_number=str(LARGE_INSTANCE_NUMBER), patient_name="Nul\x00In^Name")
    report = catalog.ingest([FolderSource(root)], workers=1)

    assert report.counts["indexed"] == 1, report.reasons()
    (row,) = catalog.instances_by_uid(sop_uid)
    assert row.header.instance_number == LARGE_INSTANCE_NUMBER
    (record,) = catalog.patient_records()
    # U+0000 is stored as U+FFFD in both dialects.
    assert record.patient_name == "Nul\ufffdIn^Name"


def test_long_key_lists_chunked(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import priors.catalog.catalog as catalog_module

    # Lists of keys go to the database in chunks, because PostgreSQL takes at most
    # 65535 parameters per statement. Chunks of two make five keys span three.
    monkeypatch.setattr(catalog_module, "IN_LIST_MAX", 2)
    root = tmp_path / "many"
    root.mkdir()
    uids = [f"1.2.826.0.1.3680043.10.2.8.{index}" for index in range(5)]
    for index, uid in enumerate(uids):
        _write(root / f"{index}.dcm", sop_uid=uid, series_uid="1.2.826.0.1.3680043.10.2.9",
               instance_number=index + 1)
    source = FolderSource(root)
    catalog.ingest([source], workers=1)

    assert catalog.mark_used(uids, "job-chunks") == 5
    assert catalog.counts(job_id="job-chunks")["used"] == 5
    assert catalog.mark_skipped(uids[:3], "job-chunks", reason="not chosen for pairing") == 3
    assert catalog.counts(job_id="job-chunks")["used"] == 2

    for path in root.iterdir():
        path.unlink()
    report = catalog.ingest([source], workers=1)
    assert report.files_removed == 5
    assert catalog.counts()["found"] == 0
    assert catalog.instances("1.2.826.0.1.3680043.10.2.9") == []
    assert catalog.counts(job_id="job-chunks")["used"] == 0


def test_non_finite_numbers_stored_null(catalog: Catalog, tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.dataelem import DataElement

    root = tmp_path / "nan"
    root.mkdir()
    sop_uid = "1.2.826.0.1.3680043.10.2.10.1"
    _write(root / "a.dcm", sop_uid=sop_uid, series_uid="1.2.826.0.1.3680043.10.2.11")
    ds = dcmread(root / "a.dcm")
    # DS values that pydicom reads as floats, and PostgreSQL's JSON type rejects.
    with pytest.warns(UserWarning, match="Invalid value for VR DS"):
        ds.add(DataElement(0x00180050, "DS", "NaN"))
        ds.add(DataElement(0x00200032, "DS", ["inf", "0", "0"]))
    ds.add(DataElement(0x00280030, "DS", ["0.5", "0.5"]))
    ds.save_as(root / "a.dcm")

    report = catalog.ingest([FolderSource(root)], workers=1)
    assert report.counts["indexed"] == 1, report.reasons()
    (row,) = catalog.instances_by_uid(sop_uid)
    assert row.header.slice_thickness is None
    assert row.header.image_position_patient is None
    assert row.header.pixel_spacing == (0.5, 0.5)
