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
# Person names made up here: a Japanese one in three component groups, written in
# ISO 2022 IR 87 with escape sequences, and a Cyrillic one in ISO_IR 144.
JAPANESE_NAME = "Yamada^Hanako=山田^花子=やまだ^はなこ"
CYRILLIC_NAME = "Иванова^Дарья"
# (0008,0070) Manufacturer written in Implicit VR inside an Explicit VR file.
IMPLICIT_ELEMENT = b"\x08\x00\x70\x00" + (6).to_bytes(4, "little") + b"VENDOR"


@pytest.fixture
def catalog(catalog_url: str) -> Catalog:
    store = Catalog(catalog_url)
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
    no_study = _dataset("1.2.826.0.1.3680043.10.1.3.3")
    del no_study.StudyInstanceUID
    _write_part10(no_study, root / "no-study-uid.dcm")
    no_series = _dataset("1.2.826.0.1.3680043.10.1.3.4")
    del no_series.SeriesInstanceUID
    _write_part10(no_series, root / "no-series-uid.dcm")

    _write_part10(_dataset("1.2.826.0.1.3680043.10.1.3.7"), root / "implicit-element.dcm")
    explicit = (root / "implicit-element.dcm").read_bytes()
    # Insert in tag order, before (0010,0010) Patient Name.
    at = explicit.index(b"\x10\x00\x10\x00PN")
    (root / "implicit-element.dcm").write_bytes(explicit[:at] + IMPLICIT_ELEMENT + explicit[at:])

    for name, charset, value, uid in (
        ("name-japanese.dcm", ["", "ISO 2022 IR 87"], JAPANESE_NAME, "8"),
        ("name-cyrillic.dcm", "ISO_IR 144", CYRILLIC_NAME, "10"),
    ):
        named = _dataset(f"1.2.826.0.1.3680043.10.1.3.{uid}")
        named.SpecificCharacterSet = charset
        # A study of its own, so that the study makes a patient record of its own.
        named.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1.6.{uid}"
        named.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.1.6.{uid}.1"
        named.PatientID = f"BAD-CORPUS-{uid}"
        named.PatientName = value
        _write_part10(named, root / name)
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
        "no-study-uid.dcm": "rejected",
        "no-series-uid.dcm": "rejected",
        "implicit-element.dcm": "indexed",
        "name-japanese.dcm": "indexed",
        "name-cyrillic.dcm": "indexed",
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
    assert reasons["no-study-uid.dcm"] == "invalid: missing (0020,000D) StudyInstanceUID"
    assert reasons["no-series-uid.dcm"] == "invalid: missing (0020,000E) SeriesInstanceUID"
    assert reasons["implicit-element.dcm"] == (
        "(0008,0070) encoded in Implicit VR inside an Explicit VR data set; read with the VR "
        "of the data dictionary"
    )
    assert reasons["name-japanese.dcm"] == ""
    assert reasons["name-cyrillic.dcm"] == ""
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

    # Names are stored decoded, from ISO 2022 escape sequences and from ISO 8859-5.
    assert b"\x1b$B" in (root / "name-japanese.dcm").read_bytes()
    assert CYRILLIC_NAME.encode("iso8859_5") in (root / "name-cyrillic.dcm").read_bytes()
    records = {record.patient_id: record for record in catalog.patient_records()}
    assert records["BAD-CORPUS-8"].patient_name == JAPANESE_NAME
    assert records["BAD-CORPUS-10"].patient_name == CYRILLIC_NAME
    (japanese,) = catalog.instances_by_uid("1.2.826.0.1.3680043.10.1.3.8")
    assert japanese.header.patient_name == JAPANESE_NAME
    (implicit,) = catalog.instances_by_uid("1.2.826.0.1.3680043.10.1.3.7")
    assert implicit.header.manufacturer == "VENDOR"


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


def test_duplicate_uid_first_by_location(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import priors.catalog.catalog as catalog_module

    root = tmp_path / "duplicates"
    (root / "a").mkdir(parents=True)
    uid = "1.2.826.0.1.3680043.10.1.5.1"
    # Written in this order, walked as m, z, a/y (files before sub-folders), and
    # first by location a/y.
    _write_part10(_dataset(uid, pixel_value=7), root / "z-written-first.dcm")
    _write_part10(_dataset(uid, pixel_value=9), root / "m-written-second.dcm")
    _write_part10(_dataset(uid, pixel_value=11), root / "a" / "y-written-third.dcm")
    walked = [item.location for item in FolderSource(root).iter_files()]
    assert walked != sorted(walked)

    monkeypatch.setattr(catalog_module, "POOL_MIN_FILES", 1)
    report = catalog.ingest([FolderSource(root)], workers=2)

    outcomes = {Path(item.location).name: item.outcome for item in report.files}
    assert outcomes == {"y-written-third.dcm": "indexed", "m-written-second.dcm": "rejected",
                        "z-written-first.dcm": "rejected"}
    conflicts = catalog.conflicts()
    assert [Path(row.indexed_location).name for row in conflicts] == ["y-written-third.dcm"] * 2
    assert sorted(Path(row.conflicting_location).name for row in conflicts) == [
        "m-written-second.dcm", "z-written-first.dcm"]
    (indexed,) = [row for row in catalog.instances_by_uid(uid) if row.outcome == "indexed"]
    assert indexed.location == str(root / "a" / "y-written-third.dcm")


# Run with dropped privileges: ingest a folder and print each file's outcome and reason.
_INGEST_SCRIPT = """
import json, sys
from pathlib import Path
from priors.catalog import Catalog
from priors.sources import FolderSource
root, url, cache = sys.argv[1:4]
report = Catalog(url).ingest([FolderSource(root, cache_dir=cache)], workers=1)
print(json.dumps({Path(item.location).name: [item.outcome, item.reason]
                  for item in report.files}))
"""
# setpriv (util-linux) options that run a command as the user nobody.
AS_NOBODY = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"]
# setpriv options that keep uid 0 but drop every capability, CAP_DAC_OVERRIDE and
# CAP_DAC_READ_SEARCH included, so that file modes apply to root as to its owner.
WITHOUT_CAPABILITIES = ["--bounding-set=-all", "--inh-caps=-all"]


def _drop_privileges(work: Path) -> list[str]:
    """Return the setpriv command prefix to use, handing ``work`` to nobody if used."""
    import pwd
    import shutil
    import sys

    if shutil.which("setpriv") is None:
        message = "running as root and setpriv (util-linux) is missing to drop privileges"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    # nobody cannot run this interpreter or import priors from a private checkout
    # (under /root, say); root without capabilities can, as the owner.
    probe = subprocess.run(["setpriv", *AS_NOBODY, sys.executable, "-c", "import priors"],
                           capture_output=True, cwd="/", check=False)
    if probe.returncode != 0:
        return ["setpriv", *WITHOUT_CAPABILITIES]
    nobody = pwd.getpwnam("nobody")
    for path in [work, *work.rglob("*")]:
        os.lchown(path, nobody.pw_uid, nobody.pw_gid)
    return ["setpriv", *AS_NOBODY]


def _ingest_unprivileged(work: Path, root: Path, prefix: list[str]) -> dict[str, list[str]]:
    import json
    import sys

    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(work),
           "PRIORS_HOME": str(work / "home")}
    completed = subprocess.run(
        [*prefix, sys.executable, "-c", _INGEST_SCRIPT, str(root),
         f"sqlite:///{work / 'catalog.db'}", str(work / "cache")],
        capture_output=True, text=True, env=env, cwd=work, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_unreadable_file_rejected(tmp_path: Path) -> None:
    import shutil
    import stat
    import tempfile

    as_root = os.geteuid() == 0
    # As root, under /tmp itself, because the user nobody cannot enter pytest's own
    # folder (mode 700).
    work = Path(tempfile.mkdtemp(prefix="priors-unreadable-")) if as_root else tmp_path
    root = work / "bad"
    locked = root / "unreadable.dcm"
    try:
        expected = _bad_corpus(root)
        _write_part10(_dataset("1.2.826.0.1.3680043.10.1.3.11"), locked)
        prefix = _drop_privileges(work) if as_root else []
        locked.chmod(0)

        if as_root:
            outcomes = _ingest_unprivileged(work, root, prefix)
        else:
            store = Catalog(f"sqlite:///{work / 'catalog.db'}")
            report = store.ingest([FolderSource(root, cache_dir=work / "cache")], workers=1)
            store.close()
            outcomes = {Path(item.location).name: [item.outcome, item.reason]
                        for item in report.files}
    finally:
        if as_root:
            shutil.rmtree(work, ignore_errors=True)
        elif locked.exists():
            locked.chmod(stat.S_IRUSR | stat.S_IWUSR)

    assert outcomes["unreadable.dcm"] == ["rejected", "unreadable: Permission denied"]
    # The other files end as they do when everything is readable.
    del outcomes["unreadable.dcm"]
    assert {name: outcome for name, (outcome, _reason) in outcomes.items()} == expected


def test_second_patient_id_in_known_study_recorded(catalog: Catalog, tmp_path: Path) -> None:
    root = tmp_path / "two-ids"
    root.mkdir()
    first = _dataset("1.2.826.0.1.3680043.10.1.7.1")
    _write_part10(first, root / "a.dcm")
    second = _dataset("1.2.826.0.1.3680043.10.1.7.2", pixel_value=3)
    second.PatientID = "BAD-CORPUS-OTHER"
    _write_part10(second, root / "b.dcm")

    catalog.ingest([FolderSource(root, issuer="TEST")], workers=1)

    assert sorted(record.patient_id for record in catalog.patient_records()) == [
        "BAD-CORPUS", "BAD-CORPUS-OTHER"]
