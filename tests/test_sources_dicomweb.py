"""DICOMweb source: QIDO-RS and WADO-RS against a real Orthanc and a misbehaving fake.

The Orthanc here requires HTTP Basic authentication and contains a small synthetic CT
cohort. Tests that need the two spine CDs add them. The fake server of
``dicomweb_fake_server`` covers what Orthanc does not do: bearer tokens, HTTP 503,
single-part and empty responses, cut multipart bodies and a server that ignores
``offset``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomweb_fake_server import FakeDicomweb, SilentServer
from orthanc_server import OrthancServer, free_port, require_orthanc

from priors.catalog import Catalog
from priors.sources import dicomweb as dicomweb_module
from priors.sources import open_source
from priors.sources.dicomweb import DicomwebSource, iter_multipart_parts
from priors.sources.remote import (
    RemoteSource,
    RetrievalCache,
    RetrieveError,
    SourceConnectionError,
    StudyQuery,
)

USERNAME = "priors-test"
# A test-only password, never a real one. The secrets tests look for it in the logs.
PASSWORD = "pw-test-only-7Qx2"
TOKEN = "token-test-only-9Kd4"
# A study date between the earlier and the later studies of the cohort fixture.
DATE_CUT = "20160101"


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from priors.synthetic.cohort import write_cohort

    root = tmp_path_factory.mktemp("dicomweb-cohort") / "cohort"
    write_cohort(root, seed=11, n_patients=2, n_timepoints=2, matrix=64, n_slices=4)
    return root, json.loads((root / "ground_truth.json").read_text())


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory,
         cohort: tuple[Path, dict[str, Any]]) -> Iterator[OrthancServer]:
    require_orthanc()
    server = OrthancServer(tmp_path_factory.mktemp("dicomweb-orthanc"), username=USERNAME,
                           password=PASSWORD)
    server.start()
    try:
        root, _ = cohort
        server.upload(_cohort_instances(root))
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def pacs_with_spine(pacs: OrthancServer, shared_data: Path) -> OrthancServer:
    for name in ("spine-cd-a", "spine-cd-b"):
        pacs.upload(path for path in sorted((shared_data / name).rglob("*")) if path.is_file())
    return pacs


def _cohort_instances(root: Path) -> list[Path]:
    return [path for path in sorted(root.rglob("*"))
            if path.is_file() and path.suffix not in (".json", ".gz")
            and path.name != "DICOMDIR"]


def _source(url: str, tmp_path: Path, **options: Any) -> DicomwebSource:
    settings: dict[str, Any] = {"institution": "test-site", "timeout_s": 10.0,
                                "retries": 1, "backoff_s": 0.05,
                                "cache": RetrievalCache(tmp_path / "cache")}
    settings.update(options)
    return DicomwebSource(url, **settings)


def _orthanc_source(pacs: OrthancServer, tmp_path: Path, **options: Any) -> DicomwebSource:
    return _source(pacs.dicomweb_url, tmp_path, username=USERNAME, password=PASSWORD,
                   **options)


def _synthetic_studies(cohort: tuple[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    return [study for person in cohort[1]["persons"] for study in person["studies"]]


def _first_instance(folder: Path) -> pydicom.Dataset:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "DICOMDIR":
            try:
                return pydicom.dcmread(path, stop_before_pixels=True)
            except pydicom.errors.InvalidDicomError:
                continue
    raise AssertionError(f"no DICOM instance under {folder}")


def _instance_file(cohort: tuple[Path, dict[str, Any]]) -> Path:
    root, _ = cohort
    return sorted((root / "lakeside").rglob("*.dcm"))[0]


# -- construction, identity and secrets ----------------------------------------------------


def test_source_id_strips_credentials(tmp_path: Path) -> None:
    source = _source("http://alice:hidden-pw@127.0.0.1:8042/dicom-web/", tmp_path)
    assert source.source_id == "dicomweb:test-site@http://127.0.0.1:8042/dicom-web"
    assert source.url == "http://127.0.0.1:8042/dicom-web"
    assert source.auth_kind == "basic"
    assert isinstance(source, RemoteSource)
    assert "hidden-pw" not in repr(source)
    assert "hidden-pw" not in json.dumps(source.describe())


def test_describe_names_auth_kind(tmp_path: Path) -> None:
    bearer = _source("https://pacs.example/dicom-web", tmp_path, token=TOKEN)
    description = bearer.describe()
    assert description["kind"] == "dicomweb"
    assert description["auth"] == "bearer"
    assert description["institution"] == "test-site"
    assert description["url"] == "https://pacs.example/dicom-web"
    assert TOKEN not in json.dumps(description)
    assert TOKEN not in repr(bearer)
    assert _source("https://pacs.example/dicom-web", tmp_path).describe()["auth"] == "none"


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("ftp://pacs.example/dicom-web", {}, "expected http"),
        ("http://pacs.example/dicom-web?key=1", {}, "query or fragment"),
        ("http://pacs.example/dicom-web", {"token": "t", "username": "u"}, "not both"),
        ("http://pacs.example/dicom-web", {"password": "p"}, "without a username"),
        ("http://u:p@pacs.example/dicom-web", {"token": "t"}, "both in the URL"),
        ("http://pacs.example/dicom-web", {"timeout_s": 0}, "timeout_s is 0"),
        ("http://pacs.example/dicom-web", {"retries": -1}, "retries is -1"),
    ],
)
def test_invalid_options_rejected(tmp_path: Path, url: str, options: dict[str, Any],
                                  message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _source(url, tmp_path, **options)


def test_invalid_uid_rejected(tmp_path: Path) -> None:
    source = _source("http://127.0.0.1:9/dicom-web", tmp_path)
    with pytest.raises(ValueError, match="is not a valid UID"):
        source.retrieve("1.2.3/../../system")
    with pytest.raises(ValueError, match="is not a valid UID"):
        source.find_series("1.2.x")


# -- multipart parsing ----------------------------------------------------------------------


def _multipart(bodies: list[bytes], boundary: bytes) -> bytes:
    message = b"preamble to ignore\r\n"
    for body in bodies:
        message += b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
        message += body + b"\r\n"
    return message + b"--" + boundary + b"--\r\n"


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_multipart_parts_split_any_chunking(chunk_size: int) -> None:
    boundary = b"b0undary-42"
    # Bodies with CRLFs, a near-boundary and an empty body, as binary DICOM may contain.
    bodies = [b"first\r\n\r\nbody", b"--b0undary-4 almost", b"", bytes(range(256)) * 3]
    message = _multipart(bodies, boundary)
    chunks = [message[start:start + chunk_size]
              for start in range(0, len(message), chunk_size)]
    assert list(iter_multipart_parts(chunks, boundary)) == bodies


def test_multipart_cut_short_raises() -> None:
    message = _multipart([b"one", b"two"], b"edge")
    with pytest.raises(RetrieveError, match="ended without its closing boundary"):
        list(iter_multipart_parts([message[:-12]], b"edge"))


# -- Orthanc: authentication ----------------------------------------------------------------


def test_echo_with_good_credentials(pacs: OrthancServer, tmp_path: Path) -> None:
    _orthanc_source(pacs, tmp_path).echo()


@pytest.mark.parametrize("credentials", [{"username": USERNAME, "password": "wrong"}, {}])
def test_echo_with_bad_credentials(pacs: OrthancServer, tmp_path: Path,
                                   credentials: dict[str, str]) -> None:
    source = _source(pacs.dicomweb_url, tmp_path, **credentials)
    with pytest.raises(SourceConnectionError,
                       match=r"dicom-web: echo failed: authentication refused \(HTTP 401\)"):
        source.echo()


def test_secrets_absent_from_debug_logs(pacs: OrthancServer, tmp_path: Path,
                                        cohort: tuple[Path, dict[str, Any]],
                                        caplog: pytest.LogCaptureFixture) -> None:
    basic = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    caplog.set_level(logging.DEBUG)
    # The command line's logging set-up, run by earlier tests in this process, leaves
    # urllib3's own level at WARNING; this test needs its DEBUG records.
    caplog.set_level(logging.DEBUG, logger="urllib3")
    good = _orthanc_source(pacs, tmp_path)
    good.echo()
    good.retrieve(_synthetic_studies(cohort)[1]["study_instance_uid"])
    bad = _source(pacs.dicomweb_url, tmp_path, username=USERNAME, password=PASSWORD + "x")
    with pytest.raises(SourceConnectionError):
        bad.find_studies(StudyQuery(modality="CT"))
    with pytest.raises(SourceConnectionError):
        bad.retrieve(_synthetic_studies(cohort)[1]["study_instance_uid"])

    assert "WADO-RS retrieve" in caplog.text
    assert any(record.name.startswith("urllib3") for record in caplog.records)
    assert PASSWORD not in caplog.text
    assert basic not in caplog.text


def test_patient_id_absent_from_messages(pacs: OrthancServer, tmp_path: Path,
                                         cohort: tuple[Path, dict[str, Any]],
                                         caplog: pytest.LogCaptureFixture) -> None:
    patient_id = cohort[1]["persons"][0]["records"][0]["patient_id"]
    query = StudyQuery(patient_id=patient_id)
    caplog.set_level(logging.DEBUG, logger="priors.sources.dicomweb")
    assert _orthanc_source(pacs, tmp_path).find_studies(query)
    refused = _source(f"http://127.0.0.1:{free_port()}/dicom-web", tmp_path, retries=1,
                      backoff_s=0.01)
    with pytest.raises(SourceConnectionError) as raised:
        refused.find_studies(query)

    assert "connection refused (2 tries)" in str(raised.value)
    assert patient_id not in str(raised.value)
    assert raised.value.__cause__ is None
    # Only this module's records are checked, because urllib3 logs each request line,
    # query included, at DEBUG.
    own = "\n".join(record.getMessage() for record in caplog.records
                    if record.name == "priors.sources.dicomweb")
    assert "QIDO-RS study search on PatientID matched 1 studies" in own
    assert "try 2 of 2 follows" in own
    assert patient_id not in own


# -- Orthanc: QIDO-RS -----------------------------------------------------------------------


def test_find_by_patient_id_and_issuer(pacs: OrthancServer, tmp_path: Path,
                                       cohort: tuple[Path, dict[str, Any]]) -> None:
    source = _orthanc_source(pacs, tmp_path)
    person = cohort[1]["persons"][1]
    for record in person["records"]:
        expected = {study["study_instance_uid"] for study in person["studies"]
                    if study["issuer"] == record["issuer"]}
        matches = source.find_studies(StudyQuery(patient_id=record["patient_id"],
                                                 issuer_of_patient_id=record["issuer"]))
        assert {match.study_instance_uid for match in matches} == expected
        assert {match.issuer_of_patient_id for match in matches} == {record["issuer"]}
        assert all(match.source_id == source.source_id for match in matches)


@pytest.mark.shared_data
def test_find_spine_cd_by_patient_id(pacs_with_spine: OrthancServer, tmp_path: Path,
                                     shared_data: Path) -> None:
    source = _orthanc_source(pacs_with_spine, tmp_path)
    header = _first_instance(shared_data / "spine-cd-b")
    matches = source.find_studies(StudyQuery(patient_id=header.PatientID))
    assert [match.study_instance_uid for match in matches] == [header.StudyInstanceUID]
    assert matches[0].modalities == ("MR",)
    assert matches[0].number_of_instances == 67


def test_find_by_open_ended_dates(pacs: OrthancServer, tmp_path: Path,
                                  cohort: tuple[Path, dict[str, Any]]) -> None:
    source = _orthanc_source(pacs, tmp_path)
    synthetic = {study["study_instance_uid"]: study["study_date"]
                 for study in _synthetic_studies(cohort)}
    until = source.find_studies(StudyQuery(study_date=f"-{DATE_CUT}"))
    since = source.find_studies(StudyQuery(study_date=f"{DATE_CUT}-"))
    bounded = source.find_studies(StudyQuery(study_date=f"{DATE_CUT}-20161231"))

    until_uids = {match.study_instance_uid for match in until} & synthetic.keys()
    since_uids = {match.study_instance_uid for match in since} & synthetic.keys()
    assert until_uids == {uid for uid, date in synthetic.items() if date <= DATE_CUT}
    assert since_uids == {uid for uid, date in synthetic.items() if date >= DATE_CUT}
    assert until_uids and since_uids
    assert all(match.study_date <= DATE_CUT for match in until)
    assert all(match.study_date >= DATE_CUT for match in since)
    assert all(DATE_CUT <= match.study_date <= "20161231" for match in bounded)
    assert len(bounded) == 1


def test_find_paged_results(pacs: OrthancServer, tmp_path: Path,
                            cohort: tuple[Path, dict[str, Any]],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    source = _orthanc_source(pacs, tmp_path)
    unpaged = {match.study_instance_uid for match in source.find_studies(StudyQuery())}
    monkeypatch.setattr(dicomweb_module, "QIDO_PAGE_SIZE", 2)
    paged = source.find_studies(StudyQuery())
    assert len(paged) == len(unpaged)
    assert {match.study_instance_uid for match in paged} == unpaged
    assert len(unpaged) >= len(_synthetic_studies(cohort))


@pytest.mark.shared_data
def test_find_by_modality(pacs_with_spine: OrthancServer, tmp_path: Path,
                          shared_data: Path, cohort: tuple[Path, dict[str, Any]]) -> None:
    source = _orthanc_source(pacs_with_spine, tmp_path)
    spine_studies = {_first_instance(shared_data / "spine-cd-b").StudyInstanceUID,
                     *(_first_instance(shared_data / "spine-cd-a" / "DICOM" / "04600" /
                                       "P0000001" / folder).StudyInstanceUID
                       for folder in ("S0000006", "S0000008"))}
    synthetic = {study["study_instance_uid"] for study in _synthetic_studies(cohort)}

    mr = source.find_studies(StudyQuery(modality="MR"))
    ct = source.find_studies(StudyQuery(modality="CT"))
    assert {match.study_instance_uid for match in mr} == spine_studies
    assert {match.study_instance_uid for match in ct} == synthetic


def test_find_series_by_modality(pacs: OrthancServer, tmp_path: Path,
                                 cohort: tuple[Path, dict[str, Any]]) -> None:
    source = _orthanc_source(pacs, tmp_path)
    study = _synthetic_studies(cohort)[2]
    every = source.find_series(study["study_instance_uid"])
    dose = source.find_series(study["study_instance_uid"], modality="SR")
    assert {match.series_instance_uid for match in every} == set(study["series"].values())
    assert [match.series_instance_uid for match in dose] == [study["series"]["dose_report"]]
    thin = next(match for match in every
                if match.series_instance_uid == study["series"]["thin"])
    assert thin.modality == "CT"
    assert thin.number_of_instances == 4


# -- Orthanc: WADO-RS -----------------------------------------------------------------------


def test_retrieve_study(pacs: OrthancServer, tmp_path: Path,
                        cohort: tuple[Path, dict[str, Any]]) -> None:
    source = _orthanc_source(pacs, tmp_path)
    study = _synthetic_studies(cohort)[1]
    study_uid = study["study_instance_uid"]
    expected = {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                for path in (cohort[0] / study["path"]).rglob("*.dcm")}

    result = source.retrieve(study_uid)
    assert result.completed == len(expected)
    assert result.failed == 0
    assert result.source_id == source.source_id
    received = {pydicom.dcmread(item.path, stop_before_pixels=True).SOPInstanceUID
                for item in result.files}
    assert received == expected
    for item in result.files:
        header = pydicom.dcmread(item.path, stop_before_pixels=True)
        assert item.location == (f"{source.source_id}/studies/{study_uid}/series/"
                                 f"{header.SeriesInstanceUID}/instances/{header.SOPInstanceUID}")
    assert sorted(item.location for item in source.iter_files()) == sorted(
        item.location for item in result.files)
    assert source.absent_references() == []


def test_retrieve_series(pacs: OrthancServer, tmp_path: Path,
                         cohort: tuple[Path, dict[str, Any]]) -> None:
    source = _orthanc_source(pacs, tmp_path)
    study = _synthetic_studies(cohort)[3]
    thin = study["series"]["thin"]
    result = source.retrieve(study["study_instance_uid"], series_instance_uid=thin)
    assert result.completed == 4
    assert result.series_instance_uid == thin
    assert all(f"/series/{thin}/instances/" in item.location for item in result.files)
    assert result.as_dict()["files"] == [item.location for item in result.files]


def test_retrieve_unknown_study(pacs: OrthancServer, tmp_path: Path) -> None:
    source = _orthanc_source(pacs, tmp_path)
    with pytest.raises(RetrieveError, match=r"studies/1\.2\.3\.4: WADO-RS retrieve failed "
                                            r"with HTTP 404"):
        source.retrieve("1.2.3.4")


def test_retrieved_match_folder_ingest(pacs: OrthancServer, tmp_path: Path,
                                       cohort: tuple[Path, dict[str, Any]],
                                       priors_home: Path) -> None:
    source = _orthanc_source(pacs, tmp_path)
    for study in _synthetic_studies(cohort):
        source.retrieve(study["study_instance_uid"])
    folder = open_source(cohort[0])
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        report = catalog.ingest([source, folder], workers=1)
        remote = {row.sop_instance_uid: row.pixel_sha256
                  for row in catalog.instances_of_sources([source.source_id])}
        local = {row.sop_instance_uid: row.pixel_sha256
                 for row in catalog.instances_of_sources([folder.source_id])}
        conflicts = catalog.conflicts()
    finally:
        catalog.close()

    assert report.counts.get("rejected", 0) == 0
    assert len(remote) == len(_cohort_instances(cohort[0]))
    assert remote == local
    assert sum(digest is not None for digest in remote.values()) >= len(remote) - 4
    assert conflicts == []


@pytest.mark.shared_data
def test_spine_cd_retrieve_matches_media(pacs_with_spine: OrthancServer, tmp_path: Path,
                                         shared_data: Path, priors_home: Path) -> None:
    source = _orthanc_source(pacs_with_spine, tmp_path)
    study_uid = _first_instance(shared_data / "spine-cd-b").StudyInstanceUID
    result = source.retrieve(study_uid)
    assert result.completed == 67
    media = open_source(shared_data / "spine-cd-b")
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        catalog.ingest([source, media], workers=1)
        remote = {row.sop_instance_uid: row.pixel_sha256
                  for row in catalog.instances_of_sources([source.source_id])}
        local = {row.sop_instance_uid: row.pixel_sha256
                 for row in catalog.instances_of_sources([media.source_id])}
    finally:
        catalog.close()
    assert len(remote) == 67
    assert remote == local
    assert all(digest for digest in remote.values())


@pytest.mark.shared_data
def test_retrieve_streams_instances(pacs_with_spine: OrthancServer, tmp_path: Path,
                                    shared_data: Path) -> None:
    import tracemalloc

    study = shared_data / "spine-cd-a" / "DICOM" / "04600" / "P0000001" / "S0000006"
    source = _orthanc_source(pacs_with_spine, tmp_path)
    tracemalloc.start()
    try:
        result = source.retrieve(_first_instance(study).StudyInstanceUID)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    received = sum(item.path.stat().st_size for item in result.files)
    assert result.completed == 54
    assert received > 16 * 2**20
    # About 4 MiB measured: one 1 MiB read, the parsing buffer and one instance.
    assert peak < received / 2


# -- fake server: bearer token, retries, single-part and empty responses ----------------------


def test_bearer_token_and_single_part(tmp_path: Path,
                                      cohort: tuple[Path, dict[str, Any]],
                                      caplog: pytest.LogCaptureFixture) -> None:
    instance = _instance_file(cohort)
    header = pydicom.dcmread(instance, stop_before_pixels=True)
    caplog.set_level(logging.DEBUG)
    with FakeDicomweb(instance, token=TOKEN) as server:
        source = _source(server.url, tmp_path, token=TOKEN)
        source.echo()
        result = source.retrieve(header.StudyInstanceUID)
        with pytest.raises(SourceConnectionError, match=r"authentication refused \(HTTP 401\)"):
            _source(server.url, tmp_path, token=TOKEN + "x").echo()

    assert result.completed == 1
    assert result.files[0].path.read_bytes() == instance.read_bytes()
    assert result.files[0].location.endswith(f"/instances/{header.SOPInstanceUID}")
    assert "single-part application/dicom" in caplog.text
    assert TOKEN not in caplog.text


def test_default_syntax_after_406(tmp_path: Path,
                                  cohort: tuple[Path, dict[str, Any]]) -> None:
    instance = _instance_file(cohort)
    study_uid = pydicom.dcmread(instance, stop_before_pixels=True).StudyInstanceUID
    with FakeDicomweb(instance, reject_any_syntax=True) as server:
        result = _source(server.url, tmp_path).retrieve(study_uid)
        statuses = [status for _, _, status in server.requests]
    assert statuses == [406, 200]
    assert result.completed == 1


def test_retry_backs_off_after_503(tmp_path: Path, cohort: tuple[Path, dict[str, Any]],
                                   caplog: pytest.LogCaptureFixture) -> None:
    instance = _instance_file(cohort)
    study_uid = pydicom.dcmread(instance, stop_before_pixels=True).StudyInstanceUID
    caplog.set_level(logging.WARNING, logger="priors.sources.dicomweb")
    with FakeDicomweb(instance, fail_first=2) as server:
        source = _source(server.url, tmp_path, retries=3, backoff_s=0.2)
        result = source.retrieve(study_uid)
        times = [moment for moment, _, _ in server.requests]
        statuses = [status for _, _, status in server.requests]

    assert result.completed == 1
    assert statuses == [503, 503, 200]
    # The waits are backoff_s and then twice that. The scheduler can only lengthen them.
    assert times[1] - times[0] >= 0.19
    assert times[2] - times[1] >= 0.39
    assert "failed (HTTP 503); try 2 of 4 follows" in caplog.text


def test_retry_after_capped(tmp_path: Path, cohort: tuple[Path, dict[str, Any]],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicomweb_module, "MAX_BACKOFF_S", 0.2)
    with FakeDicomweb(_instance_file(cohort), fail_first=1, retry_after="3600") as server:
        source = _source(server.url, tmp_path, retries=1, backoff_s=0.01)
        source.echo()
        times = [moment for moment, _, _ in server.requests]
    assert len(times) == 2
    assert 0.19 <= times[1] - times[0] < 5.0


def test_retries_exhausted_on_503(tmp_path: Path, cohort: tuple[Path, dict[str, Any]]) -> None:
    with FakeDicomweb(_instance_file(cohort), fail_first=10) as server:
        source = _source(server.url, tmp_path, retries=2, backoff_s=0.01)
        with pytest.raises(SourceConnectionError, match="echo failed: HTTP 503"):
            source.echo()
        assert len(server.requests) == 3


def test_retrieve_of_nothing_raises(tmp_path: Path,
                                    cohort: tuple[Path, dict[str, Any]]) -> None:
    with FakeDicomweb(_instance_file(cohort)) as server:
        source = _source(server.url, tmp_path)
        with pytest.raises(RetrieveError, match="WADO-RS retrieve returned no instances"):
            source.retrieve(server.empty_study_uid)


def test_unreadable_part_counted_failed(tmp_path: Path,
                                        cohort: tuple[Path, dict[str, Any]]) -> None:
    instance = _instance_file(cohort)
    with FakeDicomweb(instance) as server:
        result = _source(server.url, tmp_path).retrieve(server.mixed_study_uid)
    assert result.completed == 1
    assert result.failed == 1
    assert result.files[0].path.read_bytes() == instance.read_bytes()


def test_cut_multipart_raises(tmp_path: Path, cohort: tuple[Path, dict[str, Any]]) -> None:
    with FakeDicomweb(_instance_file(cohort)) as server:
        source = _source(server.url, tmp_path)
        with pytest.raises(RetrieveError, match=r"studies/1\.2\.3\.997: multipart body "
                                                r"ended without its closing boundary"):
            source.retrieve(server.cut_study_uid)


def test_server_ignoring_offset(tmp_path: Path, cohort: tuple[Path, dict[str, Any]],
                                monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(dicomweb_module, "QIDO_PAGE_SIZE", 1)
    with FakeDicomweb(_instance_file(cohort)) as server:
        matches = _source(server.url, tmp_path).find_studies(StudyQuery())
        assert len(server.requests) == 2
    assert len(matches) == 1
    assert "paging stopped at 1 results" in caplog.text


# -- unreachable servers --------------------------------------------------------------------


def test_timeout_on_silent_server(tmp_path: Path) -> None:
    with SilentServer() as server:
        source = _source(server.url, tmp_path, timeout_s=0.3, retries=1, backoff_s=0.05)
        started = time.monotonic()
        with pytest.raises(SourceConnectionError,
                           match=r"echo failed: timed out after 0\.3 s per request \(2 tries\)"):
            source.echo()
        elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 5.0


def test_connection_refused(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    source = _source(url, tmp_path, retries=0)
    with pytest.raises(SourceConnectionError, match=r"echo failed: connection refused"):
        source.echo()
    with pytest.raises(SourceConnectionError, match=r"WADO-RS retrieve failed: connection "
                                                    r"refused"):
        source.retrieve("1.2.3.4")
