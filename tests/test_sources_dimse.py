"""DimseSource against a real Orthanc, a pynetdicom mock peer and dcmtk's getscu.

The Orthanc contains a small synthetic cohort (one person, three CT studies of 10 or
11 instances at two sites) and, when the shared data is present, the spine CD b MR
study. Orthanc 1.10 returns 0xC000 for an unknown C-MOVE destination, so the 0xA801
case and the rejected storage role run against a pynetdicom Q/R SCP on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import uid as uids
from pynetdicom import AE, build_context, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from priors.catalog import Catalog
from priors.sources import open_source
from priors.sources.dimse import (
    MAX_PRESENTATION_CONTEXTS,
    DimseRetrieveError,
    DimseSource,
    storage_contexts,
)
from priors.sources.remote import (
    RemoteSource,
    RetrievalCache,
    RetrieveError,
    SourceConnectionError,
    StudyQuery,
)
from priors.synthetic.cohort import write_cohort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orthanc_server import DicomPeer, OrthancServer, free_port, require_orthanc

CALLING_AE = "PRIORS"
# Orthanc rejects C-GET and C-MOVE from this AE title.
NO_RETRIEVE_AE = "PRIORSNOGET"
# Orthanc sends C-MOVE sub-operations for this AE title to a decoy storage SCP.
DECOY_AE = "PRIORSDECOY"
INSTITUTION = "test-site"
THIN_SERIES_SLICES = 6


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Write the synthetic cohort and return its ground truth."""
    root = tmp_path_factory.mktemp("dimse-cohort")
    write_cohort(root, seed=3, n_patients=1, n_timepoints=3, matrix=64,
                 n_slices=THIN_SERIES_SLICES)
    truth = json.loads((root / "ground_truth.json").read_text())
    counts: Counter[str] = Counter()
    for path in root.rglob("*"):
        if path.is_file() and path.name != "DICOMDIR" and path.suffix not in (".json", ".gz"):
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            counts[dataset.StudyInstanceUID] += 1
            counts[dataset.SeriesInstanceUID] += 1
    return {"root": root, "studies": truth["persons"][0]["studies"], "counts": counts}


@dataclass
class DecoyScp:
    """A storage SCP that records the SOP Instance UIDs stored into it."""

    port: int
    received: list[str] = field(default_factory=list)

    def keep(self, event: Any) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


@pytest.fixture(scope="module")
def decoy_scp() -> Iterator[DecoyScp]:
    """Start a storage SCP on 127.0.0.1 for DECOY_AE."""
    decoy = DecoyScp(free_port())

    ae = AE(ae_title=DECOY_AE)
    ae.supported_contexts = [context for context in storage_contexts()
                             if context.abstract_syntax in (CTImageStorage,
                                                            uids.XRayRadiationDoseSRStorage)]
    server = ae.start_server(("127.0.0.1", decoy.port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, decoy.keep)])
    yield decoy
    server.shutdown()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, cohort: dict[str, Any],
         decoy_scp: DecoyScp) -> Iterator[tuple[OrthancServer, int]]:
    """Start Orthanc with the cohort stored; yield it and the C-MOVE storage port."""
    require_orthanc()
    storage_port = free_port()
    peers = [DicomPeer(CALLING_AE, storage_port),
             DicomPeer(NO_RETRIEVE_AE, allow_get=False, allow_move=False),
             DicomPeer(DECOY_AE, decoy_scp.port)]
    server = OrthancServer(tmp_path_factory.mktemp("dimse-orthanc"), peers=peers)
    server.start()
    try:
        server.upload(path for path in sorted(cohort["root"].rglob("*")) if path.is_file())
        yield server, storage_port
    finally:
        server.remove()


@pytest.fixture(scope="module")
def spine_study(pacs: tuple[OrthancServer, int], shared_data: Path) -> Path:
    """Store spine CD b in the Orthanc; return its folder."""
    server, _ = pacs
    folder = shared_data / "spine-cd-b"
    server.upload(path for path in sorted(folder.rglob("*")) if path.is_file())
    return folder


def make_source(pacs: tuple[OrthancServer, int], tmp_path: Path, **options: Any) -> DimseSource:
    server, storage_port = pacs
    options.setdefault("storage_port", storage_port)
    options.setdefault("timeout_s", 20.0)
    return DimseSource("127.0.0.1", server.dicom_port, called_ae=server.ae_title,
                       institution=INSTITUTION, cache=RetrievalCache(tmp_path / "cache"),
                       **options)


def study_at(cohort: dict[str, Any], site: str, index: int = 0) -> dict[str, Any]:
    return [study for study in cohort["studies"] if study["site"] == site][index]


def pixel_hashes(catalog: Catalog, source_id: str) -> dict[str, str | None]:
    return {row.sop_instance_uid: row.pixel_sha256
            for row in catalog.instances_of_sources([source_id])}


# -- construction -----------------------------------------------------------------------


def test_source_id_and_protocol(tmp_path: Path) -> None:
    source = DimseSource("127.0.0.1", 11112, called_ae="PACS", institution="site-a",
                         cache=RetrievalCache(tmp_path))
    assert source.source_id == "dimse:site-a@PACS@127.0.0.1:11112"
    assert isinstance(source, RemoteSource)
    assert source.describe()["called_ae"] == "PACS"


@pytest.mark.parametrize("options, message", [
    ({"method": "fetch"}, "method 'fetch'"),
    ({"calling_ae": "A" * 17}, "calling AE title"),
    ({"move_destination": " "}, "move destination AE title"),
])
def test_invalid_options_raise(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DimseSource("127.0.0.1", 11112, called_ae="PACS", institution="site-a",
                    cache=RetrievalCache(tmp_path), **options)


def test_storage_contexts_fit_one_association() -> None:
    contexts = storage_contexts()
    # One context is left for the C-GET model itself.
    assert len(contexts) < MAX_PRESENTATION_CONTEXTS
    classes = {context.abstract_syntax for context in contexts}
    assert {uids.CTImageStorage, uids.MRImageStorage, uids.EnhancedMRImageStorage,
            uids.SecondaryCaptureImageStorage, uids.XRayRadiationDoseSRStorage} <= classes


# -- C-ECHO and C-FIND ------------------------------------------------------------------


def test_echo_succeeds(pacs: tuple[OrthancServer, int], tmp_path: Path) -> None:
    make_source(pacs, tmp_path).echo()


@pytest.mark.parametrize("tcp_nodelay", [True, False])
def test_socket_nagle_option(pacs: tuple[OrthancServer, int], tmp_path: Path,
                             tcp_nodelay: bool) -> None:
    source = make_source(pacs, tmp_path, tcp_nodelay=tcp_nodelay)
    assoc = source._associate([build_context(Verification)], purpose="C-ECHO")
    try:
        connection = assoc.dul.socket.socket
        value = connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        assoc.release()
    assert bool(value) is tcp_nodelay


def test_echo_unknown_ae_rejected(pacs: tuple[OrthancServer, int], tmp_path: Path) -> None:
    source = make_source(pacs, tmp_path, calling_ae="STRANGER")
    with pytest.raises(SourceConnectionError, match="calling AE STRANGER"):
        source.echo()


def test_echo_nothing_listening(tmp_path: Path) -> None:
    source = DimseSource("127.0.0.1", free_port(), called_ae="PACS", institution="none",
                         cache=RetrievalCache(tmp_path), timeout_s=5.0)
    with pytest.raises(SourceConnectionError, match="no association for C-ECHO"):
        source.echo()


def test_find_patients_by_issuer(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                 cohort: dict[str, Any]) -> None:
    source = make_source(pacs, tmp_path)
    expected = study_at(cohort, "riverside")
    found = source.find_patients(issuer=expected["issuer"])
    assert [match.patient_id for match in found] == [expected["patient_id"]]
    assert found[0].number_of_studies == 2


def test_find_studies_by_patient(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                 cohort: dict[str, Any]) -> None:
    source = make_source(pacs, tmp_path)
    expected = study_at(cohort, "northgate")
    found = source.find_studies(StudyQuery(patient_id=expected["patient_id"],
                                           issuer_of_patient_id=expected["issuer"]))
    assert [match.study_instance_uid for match in found] == [expected["study_instance_uid"]]
    assert found[0].study_date == expected["study_date"]
    assert found[0].modalities == ("CT", "SR")
    assert found[0].number_of_instances == cohort["counts"][expected["study_instance_uid"]]
    assert found[0].source_id == source.source_id


def test_find_studies_date_ranges(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                  cohort: dict[str, Any]) -> None:
    source = make_source(pacs, tmp_path)
    dates = sorted(study["study_date"] for study in cohort["studies"])
    assert len(set(dates)) == 3
    first, middle, last = dates
    cases = {
        middle: {middle},
        f"{first}-{middle}": {first, middle},
        f"-{middle}": {first, middle},
        f"{middle}-": {middle, last},
        f"{last}-": {last},
    }
    for date_range, expected in cases.items():
        found = source.find_studies(StudyQuery(study_date=date_range))
        assert {match.study_date for match in found} == expected, date_range


def test_find_studies_fallback_issuer(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                      cohort: dict[str, Any]) -> None:
    # A configured issuer is used only where the PACS reports none. The cohort's
    # studies all carry one, so a query for the fallback matches nothing.
    source = make_source(pacs, tmp_path, issuer="FALLBACK")
    assert source.find_studies(StudyQuery(issuer_of_patient_id="FALLBACK")) == []
    issuers = {match.issuer_of_patient_id for match in source.find_studies(StudyQuery())}
    assert issuers == {study["issuer"] for study in cohort["studies"]}


def test_find_series_by_modality(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                 cohort: dict[str, Any]) -> None:
    source = make_source(pacs, tmp_path)
    study = study_at(cohort, "riverside")
    every = source.find_series(study["study_instance_uid"])
    assert {match.series_instance_uid for match in every} == set(study["series"].values())
    reports = source.find_series(study["study_instance_uid"], modality="SR")
    assert [match.series_instance_uid for match in reports] == [study["series"]["dose_report"]]
    thin = next(match for match in every
                if match.series_instance_uid == study["series"]["thin"])
    assert thin.number_of_instances == THIN_SERIES_SLICES
    assert thin.modality == "CT"


# -- C-GET and C-MOVE -------------------------------------------------------------------


def test_get_study(pacs: tuple[OrthancServer, int], tmp_path: Path,
                   cohort: dict[str, Any]) -> None:
    source = make_source(pacs, tmp_path)
    study = study_at(cohort, "riverside")
    expected = cohort["counts"][study["study_instance_uid"]]
    result = source.retrieve(study["study_instance_uid"])
    assert result.completed == expected
    assert (result.failed, result.warning, result.remaining) == (0, 0, 0)
    assert len(result.files) == expected

    prefix = f"{source.source_id}/studies/{study['study_instance_uid']}/series/"
    for item in result.files:
        assert item.location.startswith(prefix)
        dataset = pydicom.dcmread(item.path)
        assert item.location.endswith(f"/instances/{dataset.SOPInstanceUID}")
        assert dataset.file_meta.TransferSyntaxUID == uids.ExplicitVRLittleEndian
        assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
        assert dataset.file_meta.SourceApplicationEntityTitle == pacs[0].ae_title
    assert sorted(item.location for item in source.iter_files()) == sorted(
        item.location for item in result.files)


def test_get_series(pacs: tuple[OrthancServer, int], tmp_path: Path,
                    cohort: dict[str, Any]) -> None:
    source = make_source(pacs, tmp_path)
    study = study_at(cohort, "riverside", 1)
    thin_uid = study["series"]["thin"]
    result = source.retrieve(study["study_instance_uid"], series_instance_uid=thin_uid)
    assert result.completed == THIN_SERIES_SLICES
    assert {pydicom.dcmread(item.path).SeriesInstanceUID for item in result.files} == {
        thin_uid}


@pytest.mark.parametrize("method", ["get", "move"])
def test_series_of_other_study_refused(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                       cohort: dict[str, Any], method: str) -> None:
    # Orthanc sends a series by its UID whatever study the identifier names. Instances
    # of a study other than the requested one must not enter the cache.
    source = make_source(pacs, tmp_path, method=method)
    requested = study_at(cohort, "riverside", 1)
    other = study_at(cohort, "riverside", 0)
    with pytest.raises(DimseRetrieveError, match="was not requested") as caught:
        source.retrieve(requested["study_instance_uid"],
                        series_instance_uid=other["series"]["thin"])
    assert caught.value.result.files == []
    assert list(source.iter_files()) == []


@pytest.mark.parametrize("series", ["", "thin"])
def test_move_local_scp(pacs: tuple[OrthancServer, int], tmp_path: Path,
                        cohort: dict[str, Any], series: str) -> None:
    source = make_source(pacs, tmp_path, method="move")
    study = study_at(cohort, "northgate")
    series_uid = study["series"][series] if series else ""
    expected = cohort["counts"][series_uid or study["study_instance_uid"]]
    result = source.retrieve(study["study_instance_uid"], series_instance_uid=series_uid)
    assert result.completed == expected
    assert len(result.files) == expected
    received = [pydicom.dcmread(item.path) for item in result.files]
    assert {dataset.StudyInstanceUID for dataset in received} == {study["study_instance_uid"]}
    if series_uid:
        assert {dataset.SeriesInstanceUID for dataset in received} == {series_uid}


# -- failures ---------------------------------------------------------------------------


def test_get_unknown_study_fails(pacs: tuple[OrthancServer, int], tmp_path: Path) -> None:
    source = make_source(pacs, tmp_path)
    with pytest.raises(DimseRetrieveError, match=r"PRIORSTESTPACS .*calling AE PRIORS.*"
                       r"0xC000") as caught:
        source.retrieve("1.2.826.0.1.3680043.2.1125.999.1")
    assert caught.value.result.completed == 0


def test_get_not_allowed_aborts(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                cohort: dict[str, Any]) -> None:
    source = make_source(pacs, tmp_path, calling_ae=NO_RETRIEVE_AE)
    with pytest.raises(SourceConnectionError, match=f"aborted.*calling AE {NO_RETRIEVE_AE}"):
        source.retrieve(study_at(cohort, "riverside")["study_instance_uid"])


def test_get_missing_storage_context(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                     cohort: dict[str, Any]) -> None:
    # Proposing CT only leaves the dose report without a storage context.
    source = make_source(pacs, tmp_path, storage_sop_classes=[CTImageStorage])
    study = study_at(cohort, "riverside")
    with pytest.raises(DimseRetrieveError,
                       match=r"X-Ray Radiation Dose SR Storage .*not among the storage SOP "
                             r"classes proposed") as caught:
        source.retrieve(study["study_instance_uid"])
    assert caught.value.result.failed >= 1
    assert isinstance(caught.value, RetrieveError)


def test_move_success_without_instances(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                        cohort: dict[str, Any],
                                        decoy_scp: DecoyScp) -> None:
    # Orthanc sends the sub-operations to where it believes DECOY_AE listens, so the
    # move succeeds while this source's storage SCP receives nothing.
    source = make_source(pacs, tmp_path, method="move", move_destination=DECOY_AE,
                         storage_port=free_port())
    study = study_at(cohort, "riverside")
    with pytest.raises(DimseRetrieveError,
                       match=rf"0x0000 .*delivered no instances .*{DECOY_AE}") as caught:
        source.retrieve(study["study_instance_uid"])
    expected = cohort["counts"][study["study_instance_uid"]]
    assert caught.value.result.completed == expected
    assert len(decoy_scp.received) == expected


def test_move_orthanc_unknown_destination(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                          cohort: dict[str, Any]) -> None:
    source = make_source(pacs, tmp_path, method="move", move_destination="NOWHERE")
    with pytest.raises(DimseRetrieveError, match=r"0xC000 .*move destination NOWHERE"):
        source.retrieve(study_at(cohort, "riverside")["study_instance_uid"])


@pytest.fixture
def mock_pacs() -> Iterator[int]:
    """Start a Q/R SCP that rejects storage roles and returns 0xA801 to every C-MOVE."""
    ae = AE(ae_title="MOCKPACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    for context in storage_contexts():
        ae.add_supported_context(context.abstract_syntax, context.transfer_syntax,
                                 scu_role=False, scp_role=False)

    def unknown_destination(event: Any) -> Iterator[Any]:
        yield None, None

    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_MOVE, unknown_destination)])
    yield port
    server.shutdown()


def test_get_storage_role_rejected(mock_pacs: int, tmp_path: Path) -> None:
    source = DimseSource("127.0.0.1", mock_pacs, called_ae="MOCKPACS", institution="mock",
                         cache=RetrievalCache(tmp_path), timeout_s=10.0)
    with pytest.raises(DimseRetrieveError,
                       match=r"MOCKPACS .*rejected the storage SCP role .*CT Image Storage"):
        source.retrieve("1.2.826.0.1.3680043.2.1125.999.2")


def test_find_unsupported_model(mock_pacs: int, tmp_path: Path) -> None:
    source = DimseSource("127.0.0.1", mock_pacs, called_ae="MOCKPACS", institution="mock",
                         cache=RetrievalCache(tmp_path), timeout_s=10.0)
    with pytest.raises(SourceConnectionError,
                       match=r"MOCKPACS .*rejected the presentation context of Study Root "
                             r"Query/Retrieve Information Model - FIND"):
        source.find_series("1.2.826.0.1.3680043.2.1125.999.4")


def test_get_success_without_instances(tmp_path: Path) -> None:
    ae = AE(ae_title="EMPTYPACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    for context in storage_contexts():
        ae.add_supported_context(context.abstract_syntax, context.transfer_syntax,
                                 scu_role=False, scp_role=True)

    def no_matches(event: Any) -> Iterator[int]:
        yield 0

    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_GET, no_matches)])
    try:
        source = DimseSource("127.0.0.1", port, called_ae="EMPTYPACS", institution="mock",
                             cache=RetrievalCache(tmp_path), timeout_s=10.0)
        with pytest.raises(DimseRetrieveError,
                           match=r"EMPTYPACS .*C-GET of study .* reported status 0x0000 "
                                 r"\(Success.*delivered no instances"):
            source.retrieve("1.2.826.0.1.3680043.2.1125.999.5")
    finally:
        server.shutdown()


def test_move_unknown_destination_a801(mock_pacs: int, tmp_path: Path) -> None:
    source = DimseSource("127.0.0.1", mock_pacs, called_ae="MOCKPACS", institution="mock",
                         cache=RetrievalCache(tmp_path), method="move",
                         move_destination="ELSEWHERE", timeout_s=10.0)
    with pytest.raises(DimseRetrieveError,
                       match=r"0xA801 .*does not know move destination ELSEWHERE"):
        source.retrieve("1.2.826.0.1.3680043.2.1125.999.3")


# -- same instances as a folder ---------------------------------------------------------


def test_retrieved_cohort_matches_folder(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                         cohort: dict[str, Any], priors_home: Path) -> None:
    source = make_source(pacs, tmp_path)
    study = study_at(cohort, "riverside", 1)
    source.retrieve(study["study_instance_uid"])
    folder = open_source(cohort["root"] / "riverside")
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        catalog.ingest([folder, source], workers=1)
        retrieved = pixel_hashes(catalog, source.source_id)
        on_disk = pixel_hashes(catalog, folder.source_id)
        without_pixels = {row.series_instance_uid
                          for row in catalog.instances_of_sources([source.source_id])
                          if row.pixel_sha256 is None}
    finally:
        catalog.close()
    assert len(retrieved) == cohort["counts"][study["study_instance_uid"]]
    # Only the dose report, which has no Pixel Data, lacks a pixel hash.
    assert without_pixels == {study["series"]["dose_report"]}
    assert retrieved == {uid: on_disk[uid] for uid in retrieved}


def test_retrieved_spine_matches_folder(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                        spine_study: Path, priors_home: Path) -> None:
    folder = open_source(spine_study)
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        catalog.ingest([folder], workers=1)
        on_disk = pixel_hashes(catalog, folder.source_id)
        study_uids = {row.study_instance_uid
                      for row in catalog.instances_of_sources([folder.source_id])}
        assert len(study_uids) == 1
        source = make_source(pacs, tmp_path)
        result = source.retrieve(study_uids.pop())
        catalog.ingest([source], workers=1)
        retrieved = pixel_hashes(catalog, source.source_id)
    finally:
        catalog.close()
    assert result.completed == len(on_disk) == 67
    assert retrieved == on_disk


# -- dcmtk ------------------------------------------------------------------------------


def test_getscu_agrees(pacs: tuple[OrthancServer, int], tmp_path: Path,
                       cohort: dict[str, Any]) -> None:
    if shutil.which("getscu") is None:
        message = "dcmtk's getscu is not installed (Debian package dcmtk)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server, _ = pacs
    study = study_at(cohort, "riverside")
    thick_uid = study["series"]["thick"]
    out_dir = tmp_path / "getscu"
    out_dir.mkdir()
    command = ["getscu", "-S", "-aet", CALLING_AE, "-aec", server.ae_title,
               "-k", "QueryRetrieveLevel=SERIES",
               "-k", f"StudyInstanceUID={study['study_instance_uid']}",
               "-k", f"SeriesInstanceUID={thick_uid}",
               "-od", str(out_dir), "127.0.0.1", str(server.dicom_port)]
    subprocess.run(command, check=True, capture_output=True, timeout=60,
                   env=dict(os.environ, TCP_NODELAY="1"))

    def pixel_digest(path: Path) -> tuple[str, str]:
        dataset = pydicom.dcmread(path)
        return dataset.SOPInstanceUID, hashlib.sha256(dataset.PixelData).hexdigest()

    by_getscu = dict(pixel_digest(path) for path in out_dir.iterdir())
    result = make_source(pacs, tmp_path).retrieve(study["study_instance_uid"],
                                                  series_instance_uid=thick_uid)
    by_source = dict(pixel_digest(item.path) for item in result.files)
    assert len(by_getscu) == 3
    assert by_source == by_getscu


# -- transfer syntaxes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compressed_files(pacs: tuple[OrthancServer, int], shared_data: Path) -> list[Path]:
    """Store a JPEG-LS lossless CT image and a JPEG 2000 lossless MR image in the Orthanc."""
    server, _ = pacs
    paths = [shared_data / "codecs" / "WG04" / "JLSL" / "CT1_JLSL",
             shared_data / "codecs" / "WG04" / "J2KR" / "MR1_J2KR"]
    assert len(server.upload(paths)) == len(paths)
    return paths


@pytest.mark.parametrize("method", ["get", "move"])
def test_compressed_syntax_kept(pacs: tuple[OrthancServer, int], tmp_path: Path,
                                compressed_files: list[Path], method: str) -> None:
    source = make_source(pacs, tmp_path, method=method)
    for path in compressed_files:
        original = pydicom.dcmread(path)
        result = source.retrieve(original.StudyInstanceUID,
                                 series_instance_uid=original.SeriesInstanceUID)
        assert len(result.files) == 1
        received = pydicom.dcmread(result.files[0].path)
        assert received.SOPInstanceUID == original.SOPInstanceUID
        assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert received.PixelData == original.PixelData
