"""A PACS reached over DIMSE: C-ECHO, C-FIND, and C-GET or C-MOVE into the cache.

``DimseSource`` queries with the Patient Root model at patient level and the Study
Root model at study, series and image level (PS3.4 Annex C), and retrieves a study or
one series with Study Root C-GET or C-MOVE. Each instance received is stored as
DICOM Part 10 bytes, in the transfer syntax it arrived in, through
``RetrievalCache``, so ingest reads retrieved instances as it reads a folder.

A retrieve that fails, or that the peer reports as a success although no instance
arrived, raises ``DimseRetrieveError`` with the AE titles, the SOP classes involved
and the peer's sub-operation counts.

pynetdicom logs whole query identifiers, Patient IDs and names included, at INFO by
default. Importing this module turns that off through ``pynetdicom._config``, and
the setting applies to every user of pynetdicom in the process.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from pydicom import uid as uids
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import time
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.status import (
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from priors.sources.base import AbsentReference, SourceFile
from priors.sources.remote import (
    RetrievalCache,
    RetrieveError,
    RetrieveResult,
    SeriesMatch,
    SourceConnectionError,
    StudyMatch,
    StudyQuery,
)

__all__ = [
    "COMPRESSED_STORAGE_SOP_CLASSES",
    "STORAGE_SOP_CLASSES",
    "DimseRetrieveError",
    "DimseSource",
    "PatientMatch",
    "storage_contexts",
]

logger = logging.getLogger(__name__)

# Query identifiers hold Patient IDs and names, which must not reach logs.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

METHODS = ("get", "move")
# An AE title is at most 16 characters (PS3.5 Table 6.2-1, VR AE).
MAX_AE_TITLE_LENGTH = 16
# An A-ASSOCIATE-RQ carries at most 128 presentation contexts, because their IDs are
# the odd numbers 1 to 255. One of them is the C-GET context itself.
MAX_PRESENTATION_CONTEXTS = 128
# Error messages list this many store failures, then a count of the rest.
MAX_LISTED_ERRORS = 5

STATUS_SUCCESS = 0x0000
STATUS_MOVE_DESTINATION_UNKNOWN = 0xA801
# C-STORE statuses that the storage SCP of this source returns on failure.
STORE_OUT_OF_RESOURCES = 0xA700
STORE_CANNOT_UNDERSTAND = 0xC210

# Storage SOP classes proposed for C-GET, each with the storage SCP role.
STORAGE_SOP_CLASSES: tuple[str, ...] = (
    uids.CTImageStorage, uids.EnhancedCTImageStorage,
    uids.LegacyConvertedEnhancedCTImageStorage,
    uids.MRImageStorage, uids.EnhancedMRImageStorage, uids.EnhancedMRColorImageStorage,
    uids.LegacyConvertedEnhancedMRImageStorage, uids.MRSpectroscopyStorage,
    uids.ComputedRadiographyImageStorage, uids.DigitalXRayImageStorageForPresentation,
    uids.DigitalXRayImageStorageForProcessing,
    uids.DigitalMammographyXRayImageStorageForPresentation,
    uids.DigitalMammographyXRayImageStorageForProcessing,
    uids.BreastTomosynthesisImageStorage,
    uids.XRayAngiographicImageStorage, uids.EnhancedXAImageStorage,
    uids.XRayRadiofluoroscopicImageStorage, uids.EnhancedXRFImageStorage,
    uids.XRay3DAngiographicImageStorage, uids.XRay3DCraniofacialImageStorage,
    uids.UltrasoundImageStorage, uids.UltrasoundMultiFrameImageStorage,
    uids.EnhancedUSVolumeStorage,
    uids.NuclearMedicineImageStorage, uids.PositronEmissionTomographyImageStorage,
    uids.EnhancedPETImageStorage, uids.LegacyConvertedEnhancedPETImageStorage,
    uids.SecondaryCaptureImageStorage, uids.MultiFrameSingleBitSecondaryCaptureImageStorage,
    uids.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uids.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uids.MultiFrameTrueColorSecondaryCaptureImageStorage, uids.VLPhotographicImageStorage,
    uids.SegmentationStorage, uids.SurfaceSegmentationStorage, uids.ParametricMapStorage,
    uids.SpatialRegistrationStorage, uids.DeformableSpatialRegistrationStorage,
    uids.SpatialFiducialsStorage, uids.RealWorldValueMappingStorage,
    uids.GrayscaleSoftcopyPresentationStateStorage,
    uids.ColorSoftcopyPresentationStateStorage, uids.KeyObjectSelectionDocumentStorage,
    uids.BasicTextSRStorage, uids.EnhancedSRStorage, uids.ComprehensiveSRStorage,
    uids.Comprehensive3DSRStorage, uids.ExtensibleSRStorage,
    uids.XRayRadiationDoseSRStorage, uids.RadiopharmaceuticalRadiationDoseSRStorage,
    uids.PatientRadiationDoseSRStorage, uids.MammographyCADSRStorage,
    uids.ChestCADSRStorage, uids.EncapsulatedPDFStorage, uids.RawDataStorage,
    uids.RTImageStorage, uids.RTDoseStorage, uids.RTStructureSetStorage,
    uids.RTPlanStorage, uids.RTIonPlanStorage,
)

# Image classes that archives often keep compressed. Each gets one extra context per
# lossless syntax, because an acceptor picks one transfer syntax per context and the
# PACS has to transcode anything else. The other classes get the uncompressed context
# only, so the proposal stays within MAX_PRESENTATION_CONTEXTS.
COMPRESSED_STORAGE_SOP_CLASSES: tuple[str, ...] = (
    uids.CTImageStorage, uids.EnhancedCTImageStorage, uids.MRImageStorage,
    uids.EnhancedMRImageStorage, uids.ComputedRadiographyImageStorage,
    uids.DigitalXRayImageStorageForPresentation,
    uids.DigitalMammographyXRayImageStorageForPresentation,
    uids.XRayAngiographicImageStorage, uids.UltrasoundImageStorage,
    uids.SecondaryCaptureImageStorage,
)
UNCOMPRESSED_SYNTAXES = (uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian)
LOSSLESS_SYNTAXES = (uids.JPEGLosslessSV1, uids.JPEGLSLossless, uids.JPEG2000Lossless,
                     uids.RLELossless)
# Transfer syntaxes the C-MOVE storage SCP accepts. The sender proposes, and pynetdicom
# accepts the first proposed syntax in this list.
SCP_SYNTAXES = (*UNCOMPRESSED_SYNTAXES, uids.DeflatedExplicitVRLittleEndian,
                uids.ExplicitVRBigEndian, *LOSSLESS_SYNTAXES, uids.JPEGLossless,
                uids.JPEGBaseline8Bit, uids.JPEGExtended12Bit, uids.JPEGLSNearLossless,
                uids.JPEG2000)


class DimseRetrieveError(RetrieveError):
    """A C-GET or C-MOVE that failed, with what it delivered before failing.

    ``result`` contains the peer's sub-operation counts and the files received, which
    stay in the cache.
    """

    def __init__(self, message: str, result: RetrieveResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class PatientMatch:
    """One patient a DIMSE peer reported for a patient-level C-FIND."""

    source_id: str
    patient_id: str
    issuer_of_patient_id: str = ""
    number_of_studies: int | None = None


def storage_contexts() -> list[PresentationContext]:
    """Build the storage presentation contexts a C-GET proposes.

    Returns
    -------
    list of PresentationContext
        One uncompressed context per class of ``STORAGE_SOP_CLASSES``, plus one per
        lossless syntax for each class of ``COMPRESSED_STORAGE_SOP_CLASSES``.
    """
    contexts = [build_context(sop_class, list(UNCOMPRESSED_SYNTAXES))
                for sop_class in STORAGE_SOP_CLASSES]
    for sop_class in COMPRESSED_STORAGE_SOP_CLASSES:
        contexts.extend(build_context(sop_class, syntax) for syntax in LOSSLESS_SYNTAXES)
    return contexts


def _disable_nagle(event: Event) -> None:
    # pynetdicom 3.0 leaves Nagle's algorithm on, so the identifier that follows each
    # C-FIND, C-GET or C-MOVE request waits for the peer's delayed acknowledgement.
    # Against Orthanc 1.10 on loopback (a shared 2-core machine) a C-FIND took 64 ms
    # with Nagle and 17 ms without. A 422-instance C-GET took 1.5 to 2.3 s either way.
    connection = event.assoc.dul.socket
    if connection is not None and connection.socket is not None:
        connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _check_ae_title(value: str, name: str) -> str:
    if not value.strip() or len(value) > MAX_AE_TITLE_LENGTH:
        raise ValueError(f"{name} {value!r}: expected 1 to {MAX_AE_TITLE_LENGTH} characters")
    return value


def _class_name(sop_class_uid: str) -> str:
    name = uids.UID(sop_class_uid).name
    return name if name != sop_class_uid else f"SOP class {sop_class_uid}"


def _optional_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _failed_list_text(outcome: _Outcome) -> str:
    if not outcome.failed_instances:
        return ""
    listed = ", ".join(outcome.failed_instances[:MAX_LISTED_ERRORS])
    return (f" The PACS listed {len(outcome.failed_instances)} failed instances in "
            f"(0008,0058) Failed SOP Instance UID List: {listed}.")


def _status_text(code: int, table: dict[int, tuple[str, str]]) -> str:
    category, description = table.get(code, (code_to_category(code), "unknown status"))
    return f"0x{code:04X} ({category}: {description})"


class _StoreCollector:
    """Store every C-STORE request received during one retrieve in the cache."""

    def __init__(self, cache: RetrievalCache, source_id: str, sender_ae: str, *,
                 study_instance_uid: str = "", series_instance_uid: str = "") -> None:
        self.cache = cache
        self.source_id = source_id
        self.sender_ae = sender_ae
        # What the retrieve asked for: an instance of another study or series is refused,
        # so a stray or forged C-STORE never enters the cache under this source.
        self.study_instance_uid = study_instance_uid
        self.series_instance_uid = series_instance_uid
        self.files: list[SourceFile] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def handle_store(self, event: Event) -> int:
        """Store one instance as Part 10 bytes; return the C-STORE status."""
        request = cast(C_STORE, event.request)
        sop_instance_uid = str(request.AffectedSOPInstanceUID)
        try:
            dataset = event.dataset
            study_uid = str(dataset.get("StudyInstanceUID", ""))
            series_uid = str(dataset.get("SeriesInstanceUID", ""))
        except Exception as err:  # pydicom raises many types for a malformed data set
            return self._fail(STORE_CANNOT_UNDERSTAND,
                              f"instance {sop_instance_uid}: data set not decodable: {err}")
        if not study_uid or not series_uid:
            return self._fail(STORE_CANNOT_UNDERSTAND,
                              f"instance {sop_instance_uid}: (0020,000D) Study Instance UID "
                              "or (0020,000E) Series Instance UID missing")
        if self.study_instance_uid and study_uid != self.study_instance_uid:
            return self._fail(STORE_CANNOT_UNDERSTAND,
                              f"instance {sop_instance_uid}: study {study_uid} was not "
                              f"requested (expected {self.study_instance_uid}); refused")
        if self.series_instance_uid and series_uid != self.series_instance_uid:
            return self._fail(STORE_CANNOT_UNDERSTAND,
                              f"instance {sop_instance_uid}: series {series_uid} was not "
                              f"requested (expected {self.series_instance_uid}); refused")

        # The data set keeps the bytes and transfer syntax it arrived in; only the File
        # Meta Information is written here, naming the sender.
        file_meta = event.file_meta
        file_meta.SourceApplicationEntityTitle = self.sender_ae
        part10 = b"".join((b"\x00" * 128, b"DICM", encode_file_meta(file_meta),
                           event.encoded_dataset(include_meta=False)))
        location = (f"{self.source_id}/studies/{study_uid}/series/{series_uid}"
                    f"/instances/{sop_instance_uid}")
        try:
            stored = self.cache.store(self.source_id, location, part10)
        except OSError as err:
            return self._fail(STORE_OUT_OF_RESOURCES,
                              f"instance {sop_instance_uid}: cache write failed: {err}")
        with self._lock:
            self.files.append(stored)
        return STATUS_SUCCESS

    def _fail(self, status: int, message: str) -> int:
        logger.error("%s: C-STORE failed: %s", self.source_id, message)
        with self._lock:
            self.errors.append(message)
        return status

    def error_summary(self) -> str:
        if not self.errors:
            return ""
        listed = "; ".join(self.errors[:MAX_LISTED_ERRORS])
        more = len(self.errors) - MAX_LISTED_ERRORS
        return f" Storing failed for {listed}" + (f" and {more} more." if more > 0 else ".")


@dataclass
class _Outcome:
    """The final response of a C-GET or C-MOVE, or its absence."""

    status: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0
    failed_instances: tuple[str, ...] = ()
    error_comment: str = ""


class DimseSource:
    """A PACS queried with C-FIND and retrieved from with C-GET or C-MOVE.

    Parameters
    ----------
    host, port
        Where the PACS listens for associations.
    called_ae
        The PACS's AE title.
    institution
        Who runs the PACS; part of ``source_id``.
    calling_ae
        This client's AE title, as registered in the PACS.
    issuer
        Issuer of Patient ID to assume for patients the PACS reports without one.
    method
        ``"get"`` for C-GET on the query association, or ``"move"`` for C-MOVE to
        ``move_destination``, received by a storage SCP this source starts.
    move_destination
        AE title of the C-MOVE destination; ``calling_ae`` when empty. The PACS must
        map it to this machine's address and ``storage_port``.
    storage_port
        Port of the C-MOVE storage SCP; 0 picks a free port, which only works with a
        PACS that does not need the port configured in advance.
    storage_host
        Address the C-MOVE storage SCP listens on: 127.0.0.1 (a PACS on this machine)
        by default, this machine's address on the PACS's network otherwise. Only the
        PACS's AE title may store into it, and only while a retrieve runs.
    timeout_s
        Seconds to wait for a connection, an association reply or a DIMSE message.
    cache
        Where retrieved instances go; ``RetrievalCache()`` under the priors home
        folder by default.
    source_id
        Stable identifier; ``"dimse:<institution>@<called_ae>@<host>:<port>"`` by
        default.
    storage_sop_classes
        Storage SOP classes a C-GET proposes to receive; ``STORAGE_SOP_CLASSES`` by
        default.
    tcp_nodelay
        Turn Nagle's algorithm off on this source's sockets.
    """

    kind = "dimse"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        called_ae: str,
        institution: str,
        calling_ae: str = "PRIORS",
        issuer: str = "",
        method: str = "get",
        move_destination: str = "",
        storage_port: int = 0,
        timeout_s: float = 30.0,
        cache: RetrievalCache | None = None,
        source_id: str | None = None,
        storage_sop_classes: Iterable[str] | None = None,
        tcp_nodelay: bool = True,
        storage_host: str = "127.0.0.1",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
        if not 0 < port < 65536:
            raise ValueError(f"port {port}: expected 1 to 65535")
        if not 0 <= storage_port < 65536:
            raise ValueError(f"storage port {storage_port}: expected 0 (any free port) "
                             "to 65535")
        self.storage_host = storage_host
        self.host = host
        self.port = port
        self.called_ae = _check_ae_title(called_ae, "called AE title")
        self.calling_ae = _check_ae_title(calling_ae, "calling AE title")
        self.move_destination = _check_ae_title(move_destination or calling_ae,
                                                "move destination AE title")
        self.institution = institution
        self.issuer = issuer
        self.method = method
        self.storage_port = storage_port
        # The port the C-MOVE storage SCP listened on last, for messages.
        self._scp_port = storage_port
        self.timeout_s = timeout_s
        self.cache = cache if cache is not None else RetrievalCache()
        self.source_id = source_id or f"dimse:{institution}@{called_ae}@{host}:{port}"
        self.storage_sop_classes = tuple(storage_sop_classes or STORAGE_SOP_CLASSES)
        self.tcp_nodelay = tcp_nodelay

    def describe(self) -> dict[str, Any]:
        """Return the kind, id, institution and endpoint of the source, for provenance."""
        return {"kind": self.kind, "source_id": self.source_id,
                "institution": self.institution, "host": self.host, "port": self.port,
                "called_ae": self.called_ae, "calling_ae": self.calling_ae,
                "method": self.method, "issuer": self.issuer,
                "move_destination": self.move_destination if self.method == "move" else ""}

    # -- C-ECHO -------------------------------------------------------------------------

    def echo(self) -> None:
        """Send a C-ECHO.

        Raises
        ------
        SourceConnectionError
            When the association fails or the peer returns a status other than
            success.
        """
        assoc = self._associate([build_context(Verification)], purpose="C-ECHO")
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        code = status.get("Status") if status else None
        if code != STATUS_SUCCESS:
            found = "no response" if code is None else f"status 0x{code:04X}"
            raise SourceConnectionError(f"{self._peer()}: C-ECHO failed with {found}")

    # -- C-FIND -------------------------------------------------------------------------

    def find_patients(self, *, patient_id: str = "", issuer: str = "") -> list[PatientMatch]:
        """Find patients with a Patient Root C-FIND at PATIENT level.

        Parameters
        ----------
        patient_id
            Patient ID to match, with DICOM wildcards; empty matches every patient.
        issuer
            Issuer of Patient ID to match (see ``find_studies``).

        Returns
        -------
        list of PatientMatch
        """
        identifier = self._identifier("PATIENT", PatientID=patient_id,
                                      IssuerOfPatientID=self._issuer_key(issuer),
                                      NumberOfPatientRelatedStudies="")
        matches = [
            PatientMatch(source_id=self.source_id, patient_id=str(found.get("PatientID", "")),
                         issuer_of_patient_id=self._effective_issuer(found),
                         number_of_studies=_optional_int(
                             found.get("NumberOfPatientRelatedStudies")))
            for found in self._find(identifier, PatientRootQueryRetrieveInformationModelFind)
        ]
        return [match for match in matches
                if not issuer or match.issuer_of_patient_id == issuer]

    def find_studies(self, query: StudyQuery) -> list[StudyMatch]:
        """Find studies with a Study Root C-FIND at STUDY level.

        ``query.study_date`` is sent as a DICOM range, open-ended ranges included,
        and ``query.modality`` as (0008,0061) Modalities in Study. A study reported
        without (0010,0021) Issuer of Patient ID takes this source's ``issuer``.
        When the query's issuer is that same fallback, the PACS is not asked to
        match it, because its instances may carry no issuer at all. The matches are
        filtered here instead.
        """
        identifier = self._identifier(
            "STUDY", StudyInstanceUID=query.study_instance_uid, PatientID=query.patient_id,
            IssuerOfPatientID=self._issuer_key(query.issuer_of_patient_id),
            StudyDate=query.study_date, ModalitiesInStudy=query.modality,
            StudyDescription="", AccessionNumber="", NumberOfStudyRelatedInstances="")
        matches = [self._study_match(found) for found in
                   self._find(identifier, StudyRootQueryRetrieveInformationModelFind)]
        requested_issuer = query.issuer_of_patient_id
        return [match for match in matches
                if not requested_issuer or match.issuer_of_patient_id == requested_issuer]

    def find_series(self, study_instance_uid: str, *, modality: str = "") -> list[SeriesMatch]:
        """Find the series of one study with a Study Root C-FIND at SERIES level."""
        if not study_instance_uid:
            raise ValueError("find_series needs a Study Instance UID")
        identifier = self._identifier(
            "SERIES", StudyInstanceUID=study_instance_uid, SeriesInstanceUID="",
            Modality=modality, SeriesNumber="", SeriesDescription="",
            NumberOfSeriesRelatedInstances="")
        return [
            SeriesMatch(
                source_id=self.source_id,
                study_instance_uid=str(found.get("StudyInstanceUID", study_instance_uid)),
                series_instance_uid=str(found.get("SeriesInstanceUID", "")),
                modality=str(found.get("Modality", "")),
                series_number=_optional_int(found.get("SeriesNumber")),
                series_description=str(found.get("SeriesDescription", "")),
                number_of_instances=_optional_int(found.get("NumberOfSeriesRelatedInstances")),
            )
            for found in self._find(identifier, StudyRootQueryRetrieveInformationModelFind)
        ]

    def find_instance_classes(
        self, study_instance_uid: str, *, series_instance_uid: str = ""
    ) -> dict[str, str]:
        """Return the SOP Class UID of every instance of a study or series, by SOP Instance UID.

        A Study Root C-FIND at IMAGE level; ``retrieve`` uses it to name the SOP
        classes of instances that did not arrive.
        """
        identifier = self._identifier(
            "IMAGE", StudyInstanceUID=study_instance_uid,
            SeriesInstanceUID=series_instance_uid, SOPInstanceUID="", SOPClassUID="")
        return {str(found.get("SOPInstanceUID", "")): str(found.get("SOPClassUID", ""))
                for found in self._find(identifier, StudyRootQueryRetrieveInformationModelFind)}

    # -- C-GET and C-MOVE ----------------------------------------------------------------

    def retrieve(
        self, study_instance_uid: str, *, series_instance_uid: str = ""
    ) -> RetrieveResult:
        """Retrieve a study, or one of its series, into the cache.

        The identifier contains (0020,000D) Study Instance UID at STUDY level, plus
        (0020,000E) Series Instance UID at SERIES level. Study Instance UID is the
        unique key of a study-level C-MOVE, so it is always sent.

        Returns
        -------
        RetrieveResult
            The files received and the sub-operation counts of the final response.

        Raises
        ------
        SourceConnectionError
            When the association is rejected or aborted, or times out.
        DimseRetrieveError
            When the peer rejects the storage role for every SOP class, reports a
            failure (0xA801 names an unknown move destination), reports failed
            sub-operations, or reports success although no instance arrived.
        """
        if not study_instance_uid:
            raise ValueError("retrieve needs a Study Instance UID")
        level = "SERIES" if series_instance_uid else "STUDY"
        identifier = self._identifier(level, StudyInstanceUID=study_instance_uid,
                                      SeriesInstanceUID=series_instance_uid)
        collector = _StoreCollector(self.cache, self.source_id, self.called_ae,
                                    study_instance_uid=study_instance_uid,
                                    series_instance_uid=series_instance_uid)
        result = RetrieveResult(source_id=self.source_id,
                                study_instance_uid=study_instance_uid,
                                series_instance_uid=series_instance_uid)
        target = f"{level.lower()} {series_instance_uid or study_instance_uid}"
        logger.info("%s: C-%s of %s started", self.source_id, self.method.upper(), target)
        started = time.perf_counter()
        if self.method == "get":
            outcome = self._get(identifier, collector, result, target)
        else:
            outcome = self._move(identifier, collector, result, target)
        result.files = list(collector.files)
        result.completed, result.failed = outcome.completed, outcome.failed
        result.warning, result.remaining = outcome.warning, outcome.remaining
        result.seconds = time.perf_counter() - started

        self._check_outcome(outcome, collector, result, target)
        logger.info("%s: C-%s of %s finished: %d instances in %.1f s", self.source_id,
                    self.method.upper(), target, len(result.files), result.seconds)
        return result

    def iter_files(self) -> Iterator[SourceFile]:
        """Yield every instance retrieved from this source so far."""
        return self.cache.iter_files(self.source_id)

    def absent_references(self) -> list[AbsentReference]:
        """Return no records: a PACS has no DICOMDIR."""
        return []

    # -- associations -------------------------------------------------------------------

    def _peer(self) -> str:
        return (f"PACS {self.called_ae} at {self.host}:{self.port} "
                f"(calling AE {self.calling_ae})")

    def _application_entity(self, ae_title: str) -> AE:
        ae = AE(ae_title=ae_title)
        ae.acse_timeout = self.timeout_s
        ae.dimse_timeout = self.timeout_s
        ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        return ae

    def _handlers(self, *extra: tuple[Any, Any]) -> list[Any]:
        handlers: list[Any] = list(extra)
        if self.tcp_nodelay:
            handlers.append((evt.EVT_CONN_OPEN, _disable_nagle))
        return handlers

    def _associate(
        self,
        contexts: list[PresentationContext],
        *,
        purpose: str,
        ext_neg: list[Any] | None = None,
        handlers: list[tuple[Any, Any]] | None = None,
    ) -> Association:
        """Open an association whose first context, the service's own, is accepted."""
        ae = self._application_entity(self.calling_ae)
        ae.requested_contexts = contexts
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae,
                             ext_neg=ext_neg or None,
                             evt_handlers=self._handlers(*(handlers or [])))
        if assoc.is_rejected:
            reply = assoc.acceptor.primitive
            reason = (f"{reply.result_str}, source {reply.source_str}, reason {reply.reason_str}"
                      if reply is not None else "no reason given")
            raise SourceConnectionError(f"{self._peer()} rejected the association for "
                                        f"{purpose}: {reason}")
        service = str(contexts[0].abstract_syntax)
        service_rejected = any(context.abstract_syntax == service
                               for context in assoc.rejected_contexts)
        if not assoc.is_established and not service_rejected:
            if assoc.acceptor.primitive is None:
                raise SourceConnectionError(
                    f"{self._peer()}: no association for {purpose}: connection refused or "
                    f"no reply within {self.timeout_s:g} s; check the host, port and AE titles")
            raise SourceConnectionError(f"{self._peer()} aborted the association for "
                                        f"{purpose}")

        # pynetdicom aborts by itself when the peer accepts no context at all.
        if service_rejected:
            if assoc.is_established:
                assoc.release()
            raise SourceConnectionError(
                f"{self._peer()} rejected the presentation context of {_class_name(service)} "
                f"({service}), so it does not support {purpose}")
        return assoc

    def _identifier(self, level: str, **keys: str) -> Dataset:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(identifier, keyword, value)
        return identifier

    def _find(self, identifier: Dataset, model: str) -> list[Dataset]:
        level = identifier.QueryRetrieveLevel
        purpose = f"C-FIND at {level} level ({_class_name(model)})"
        assoc = self._associate([build_context(model)], purpose=purpose)
        found: list[Dataset] = []
        final: int | None = None
        try:
            for status, response in assoc.send_c_find(identifier, model):
                code = status.get("Status") if status else None
                if code is not None and code_to_category(code) == "Pending":
                    if response is not None:
                        found.append(response)
                    continue
                final = code
        finally:
            if assoc.is_established:
                assoc.release()
        if final is None:
            raise SourceConnectionError(f"{self._peer()}: {purpose} got no final response "
                                        f"within {self.timeout_s:g} s, or was aborted")
        if final != STATUS_SUCCESS:
            raise SourceConnectionError(
                f"{self._peer()}: {purpose} failed with status "
                f"{_status_text(final, QR_FIND_SERVICE_CLASS_STATUS)}")
        logger.debug("%s: %s returned %d matches", self.source_id, purpose, len(found))
        return found

    def _issuer_key(self, issuer: str) -> str:
        # Instances without an issuer take the source's issuer, so matching that value
        # at the PACS would drop them; it is matched in _effective_issuer instead.
        return "" if issuer and issuer == self.issuer else issuer

    def _effective_issuer(self, found: Dataset) -> str:
        return str(found.get("IssuerOfPatientID", "") or "") or self.issuer

    def _study_match(self, found: Dataset) -> StudyMatch:
        modalities = found.get("ModalitiesInStudy", "")
        if isinstance(modalities, str):
            modalities = [modalities] if modalities else []
        return StudyMatch(
            source_id=self.source_id,
            study_instance_uid=str(found.get("StudyInstanceUID", "")),
            patient_id=str(found.get("PatientID", "")),
            issuer_of_patient_id=self._effective_issuer(found),
            study_date=str(found.get("StudyDate", "")),
            modalities=tuple(str(item) for item in modalities),
            study_description=str(found.get("StudyDescription", "")),
            accession_number=str(found.get("AccessionNumber", "")),
            number_of_instances=_optional_int(found.get("NumberOfStudyRelatedInstances")),
        )

    # -- retrieve internals -------------------------------------------------------------

    def _get(self, identifier: Dataset, collector: _StoreCollector,
             result: RetrieveResult, target: str) -> _Outcome:
        model = StudyRootQueryRetrieveInformationModelGet
        contexts = [build_context(model), *self._get_storage_contexts()]
        roles = [build_role(sop_class, scp_role=True) for sop_class in self.storage_sop_classes]
        assoc = self._associate(contexts, purpose=f"C-GET of {target}", ext_neg=roles,
                                handlers=[(evt.EVT_C_STORE, collector.handle_store)])
        try:
            self._check_storage_roles(assoc, result)
            return self._collect(assoc.send_c_get(identifier, model), assoc,
                                 f"C-GET of {target}")
        finally:
            if assoc.is_established:
                assoc.release()

    def _get_storage_contexts(self) -> list[PresentationContext]:
        if self.storage_sop_classes == STORAGE_SOP_CLASSES:
            return storage_contexts()
        return [build_context(sop_class, list(UNCOMPRESSED_SYNTAXES))
                for sop_class in self.storage_sop_classes]

    def _check_storage_roles(self, assoc: Association, result: RetrieveResult) -> None:
        accepted = {context.abstract_syntax for context in assoc.accepted_contexts
                    if context.as_scp}
        rejected = [sop_class for sop_class in self.storage_sop_classes
                    if sop_class not in accepted]
        if not accepted:
            names = ", ".join(_class_name(sop_class) for sop_class in rejected[:3])
            more = f" and {len(rejected) - 3} more" if len(rejected) > 3 else ""
            raise DimseRetrieveError(
                f"{self._peer()} rejected the storage SCP role for all "
                f"{len(rejected)} storage SOP classes proposed ({names}{more}), so C-GET "
                "cannot deliver any instance; use method 'move' or allow SCP/SCU role "
                "selection at the PACS", result)
        if rejected:
            logger.info("%s: storage SCP role rejected for %d of %d SOP classes: %s",
                        self.source_id, len(rejected), len(self.storage_sop_classes),
                        ", ".join(_class_name(sop_class) for sop_class in rejected))

    def _move(self, identifier: Dataset, collector: _StoreCollector,
              result: RetrieveResult, target: str) -> _Outcome:
        model = StudyRootQueryRetrieveInformationModelMove
        scp = self._application_entity(self.move_destination)
        scp.supported_contexts = [build_context(str(context.abstract_syntax),
                                                list(SCP_SYNTAXES))
                                  for context in AllStoragePresentationContexts]
        # Only the PACS may store into this SCP.
        # NOTE: a PACS that sends C-STORE under an AE title other than its called AE title
        # is rejected here. No option widens the list yet.
        scp.require_calling_aet = [self.called_ae]
        try:
            server = scp.start_server((self.storage_host, self.storage_port), block=False,
                                      evt_handlers=self._handlers(
                                          (evt.EVT_C_STORE, collector.handle_store)))
        except OSError as err:
            raise SourceConnectionError(
                f"{self.source_id}: cannot start the C-MOVE storage SCP on "
                f"{self.storage_host}:{self.storage_port}: {err.strerror or err}; choose "
                "a free storage_port") from err
        assert server is not None, "a non-blocking start_server returns its server"
        self._scp_port = int(server.server_address[1])
        try:
            assoc = self._associate([build_context(model)], purpose=f"C-MOVE of {target}")
            try:
                return self._collect(
                    assoc.send_c_move(identifier, self.move_destination, model), assoc,
                    f"C-MOVE of {target} to {self.move_destination}")
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            server.shutdown()

    def _collect(self, responses: Iterable[tuple[Dataset, Dataset | None]],
                 assoc: Association, purpose: str) -> _Outcome:
        outcome = _Outcome()
        started = time.monotonic()
        for status, identifier in responses:
            if not status:
                break
            code = int(status.Status)
            outcome.completed = int(status.get("NumberOfCompletedSuboperations") or 0)
            outcome.failed = int(status.get("NumberOfFailedSuboperations") or 0)
            outcome.warning = int(status.get("NumberOfWarningSuboperations") or 0)
            outcome.remaining = int(status.get("NumberOfRemainingSuboperations") or 0)
            if code_to_category(code) == "Pending":
                continue
            outcome.status = code
            outcome.error_comment = str(status.get("ErrorComment", "") or "")
            if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
                failed_list = identifier.FailedSOPInstanceUIDList
                outcome.failed_instances = tuple(
                    str(item) for item in ([failed_list] if isinstance(failed_list, str)
                                           else failed_list))
        if outcome.status is None:
            # pynetdicom may mark the association aborted only after the empty status
            # comes back, so the elapsed time separates an abort from a timeout.
            timed_out = time.monotonic() - started >= self.timeout_s and not assoc.is_aborted
            ended = (f"not answered within {self.timeout_s:g} s" if timed_out
                     else "aborted by the PACS")
            raise SourceConnectionError(
                f"{self._peer()}: {purpose} {ended} before its final response; the PACS "
                f"may not allow C-GET or C-MOVE for calling AE {self.calling_ae}")
        return outcome

    def _check_outcome(self, outcome: _Outcome, collector: _StoreCollector,
                       result: RetrieveResult, target: str) -> None:
        operation = f"C-{self.method.upper()} of {target}"
        counts = (f"sub-operations: {outcome.completed} completed, {outcome.failed} failed, "
                  f"{outcome.warning} warning, {outcome.remaining} remaining")
        table = (QR_GET_SERVICE_CLASS_STATUS if self.method == "get"
                 else QR_MOVE_SERVICE_CLASS_STATUS)
        status = _status_text(outcome.status or 0, table)
        comment = f" ({outcome.error_comment})" if outcome.error_comment else ""
        where = self._destination_text()

        if outcome.status == STATUS_MOVE_DESTINATION_UNKNOWN:
            raise DimseRetrieveError(
                f"{self._peer()}: {operation} failed with status {status}: the PACS does "
                f"not know move destination {self.move_destination}; register that AE "
                f"title there{where}", result)
        category = code_to_category(outcome.status or 0)
        if category in ("Failure", "Cancel"):
            raise DimseRetrieveError(
                f"{self._peer()}: {operation} failed with status {status}{comment}; "
                f"{counts}.{_failed_list_text(outcome)}{self._missing_classes(collector, result)}"
                f"{collector.error_summary()}{self._move_hint()}", result)
        if not collector.files:
            raise DimseRetrieveError(
                f"{self._peer()}: {operation} reported status {status} but delivered no "
                f"instances{where}; {counts}.{self._move_hint()}", result)
        if outcome.failed or collector.errors:
            raise DimseRetrieveError(
                f"{self._peer()}: {operation} delivered {len(collector.files)} instances "
                f"but some failed, status {status}{comment}; {counts}."
                f"{_failed_list_text(outcome)}{self._missing_classes(collector, result)}"
                f"{collector.error_summary()}", result)
        if outcome.completed != len(collector.files):
            logger.warning("%s: %s reported %d completed sub-operations but %d instances "
                           "arrived", self.source_id, operation, outcome.completed,
                           len(collector.files))

    def _destination_text(self) -> str:
        if self.method != "move":
            return ""
        return (f" (storage SCP {self.move_destination} listening on "
                f"{self.storage_host}:{self._scp_port})")

    def _move_hint(self) -> str:
        if self.method != "move":
            return ""
        # Orthanc 1.10 returns 0xC000, not 0xA801, for an unknown destination.
        return (f" Check that the PACS maps move destination {self.move_destination} to "
                f"{self.storage_host}:{self._scp_port}.")

    def _missing_classes(self, collector: _StoreCollector, result: RetrieveResult) -> str:
        """Name the SOP classes of the instances that did not arrive."""
        try:
            classes = self.find_instance_classes(
                result.study_instance_uid, series_instance_uid=result.series_instance_uid)
        except SourceConnectionError as err:
            logger.warning("%s: listing the instances not received failed: %s",
                           self.source_id, err)
            return ""
        received = {item.location.rsplit("/", 1)[-1] for item in collector.files}
        missing = Counter(sop_class for sop_instance, sop_class in classes.items()
                          if sop_instance not in received)
        if not missing:
            return ""
        parts = []
        for sop_class, count in sorted(missing.items()):
            proposed = sop_class in self.storage_sop_classes or self.method == "move"
            note = "" if proposed else ", not among the storage SOP classes proposed"
            parts.append(f"{count} of {_class_name(sop_class)} ({sop_class}{note})")
        return " Not received: " + "; ".join(parts) + "."
