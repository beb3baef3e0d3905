"""A PACS reached over DICOMweb: QIDO-RS searches and WADO-RS retrieves.

Requests go through one ``requests.Session`` that carries the authentication (HTTP
Basic or a bearer token), a timeout on every request, and urllib3 retries with a
doubling back-off on connection errors, read timeouts and HTTP 429, 502, 503 and 504.

``dicomweb-client`` (0.61) was tried for both transactions and does not fit:

- its query strings encode ``:`` as ``%3A`` (``quote_plus``), and Orthanc 1.10 with
  DICOMweb plugin 1.7 does not decode percent escapes in QIDO-RS values, so an
  Issuer of Patient ID such as ``urn:oid:2.25.4242.7`` never matches. Here a value
  is escaped only where RFC 3986 requires it, and at ``&``, ``+`` and ``=``;
- its retrieve methods return instances already parsed by pydicom, and its
  single-part fallback reads the whole body at once. Here the ``multipart/related``
  body is streamed, and each instance is stored byte for byte as it arrived;
- ``set_http_retry_params`` retries every exception, read timeouts included, but not
  HTTP 502, and when retries run out it raises ``retrying.RetryError``, which loses
  the HTTP status.

Passwords and tokens live only in the session's authentication object; they are
never part of ``source_id``, ``describe()``, ``repr()``, log lines or messages.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from io import BytesIO
from itertools import takewhile
from typing import Any, Self
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

import pydicom
import requests
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth
from urllib3.util.retry import Retry

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

__all__ = ["DicomwebSource", "iter_multipart_parts"]

logger = logging.getLogger(__name__)


class _QueryRedactor(logging.Filter):
    """Remove query strings from urllib3's log records.

    urllib3 logs each retry and each DEBUG request with the URL's query string, and a
    QIDO-RS query carries the Patient ID, so the query is replaced before any handler
    receives the record.
    """

    _QUERY = re.compile(r"\?[^\s'\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        if "?" in message:
            record.msg = self._QUERY.sub("?<query removed>", message)
            record.args = None
        return True


for _name in ("urllib3.connectionpool", "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(_QueryRedactor())

# HTTP statuses worth another try: rate limiting and a gateway or server that is
# briefly unavailable. Other errors (400, 401, 404, 500) would fail the same way again.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Maximum wait between two tries, from the back-off or from a Retry-After header, so
# that a long wait cannot stall a job for hours.
MAX_BACKOFF_S = 60.0
# QIDO-RS page size. Servers may cap the results of one request (Orthanc has the
# LimitFindResults setting), so results are requested page by page.
QIDO_PAGE_SIZE = 500
# Characters sent unescaped in QIDO-RS query values: RFC 3986 allows them in a query,
# DICOM matching uses "*", "?" and ",", and Orthanc 1.10 matches only unescaped values.
QUERY_SAFE = ":/@!$'()*,;?"
# Bytes read from the socket at a time while streaming a WADO-RS response.
STREAM_CHUNK_BYTES = 1 << 20
# Request instances in their stored transfer syntax, because transcoding costs the
# server time and pixel_sha256 is computed after decoding either way.
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
WADO_ACCEPT_DEFAULT = 'multipart/related; type="application/dicom"'
# A UID is digits and dots, at most 64 characters (DICOM PS3.5). It is checked before
# it becomes part of a URL path.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
UID_MAX_LENGTH = 64

STUDY_FIELDS = (
    "StudyInstanceUID", "PatientID", "IssuerOfPatientID", "StudyDate",
    "ModalitiesInStudy", "StudyDescription", "AccessionNumber",
    "NumberOfStudyRelatedInstances",
)
SERIES_FIELDS = (
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)
_HEADER_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# Names of the exceptions requests, urllib3 and socket raise when a wait runs out.
TIMEOUT_ERRORS = frozenset({"ConnectTimeout", "ConnectTimeoutError", "ReadTimeout",
                            "ReadTimeoutError", "TimeoutError", "timeout"})


class DicomwebSource:
    """A DICOMweb service: search with QIDO-RS, retrieve into the cache with WADO-RS.

    Parameters
    ----------
    url
        Service root, for example ``https://pacs.example/dicom-web``. User
        information in the URL (``user:password@``) is taken as HTTP Basic
        credentials and removed from the URL; a query or fragment is rejected.
    institution
        Name of the institution that runs the service; part of ``source_id``.
    issuer
        Issuer of Patient ID to assume for instances that carry none.
    username, password
        HTTP Basic credentials, read from configuration or the environment.
    token
        Bearer token (RFC 6750), read from configuration or the environment. Cannot
        be combined with a username.
    timeout_s
        Seconds to wait for a connection and for each read from the socket.
        NOTE: it bounds each wait, not a whole transfer, so a server that keeps
        sending a few bytes at a time is not cut off.
    retries
        Further tries after a connection error, a read timeout or HTTP 429, 502,
        503 or 504; 0 tries once.
    backoff_s
        Wait before the first retry; each later wait doubles, up to ``MAX_BACKOFF_S``.
        A ``Retry-After`` header from the server takes precedence, up to the same
        maximum.
    cache
        Where retrieved instances are stored; ``<priors home>/cache/pacs`` by default.
    source_id
        Stable identifier; ``"dicomweb:<institution>@<url>"`` by default, with the
        URL's credentials removed.

    Raises
    ------
    ValueError
        When the URL is not http(s), carries a query, or the credentials conflict,
        or ``timeout_s``, ``retries`` or ``backoff_s`` is out of range.
    """

    kind = "dicomweb"

    def __init__(
        self,
        url: str,
        *,
        institution: str,
        issuer: str = "",
        username: str = "",
        password: str = "",
        token: str = "",
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        cache: RetrievalCache | None = None,
        source_id: str | None = None,
    ) -> None:
        self.url, url_username, url_password = _split_credentials(url)
        if url_username or url_password:
            if username or password or token:
                raise ValueError(f"{self.url}: credentials given both in the URL and as "
                                 "options; give them once, as options")
            username, password = url_username, url_password
        _check_options(self.url, username=username, password=password, token=token,
                       timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)

        self.institution = institution
        self.issuer = issuer
        self.source_id = source_id or f"{self.kind}:{institution}@{self.url}"
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.cache = cache if cache is not None else RetrievalCache()
        self.auth_kind = "none"
        if token:
            self.auth_kind = "bearer"
        elif username:
            self.auth_kind = "basic"

        self._session = _make_session(username=username, password=password, token=token,
                                      retries=retries, backoff_s=backoff_s)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source_id={self.source_id!r}, "
                f"auth={self.auth_kind!r}, timeout_s={self.timeout_s}, "
                f"retries={self.retries})")

    def close(self) -> None:
        """Close the HTTP connections."""
        self._session.close()

    def describe(self) -> dict[str, Any]:
        """Return the kind, id, institution, endpoint and authentication kind.

        The authentication kind is ``"none"``, ``"basic"`` or ``"bearer"``. The
        credentials themselves are never included.
        """
        return {"kind": self.kind, "source_id": self.source_id,
                "institution": self.institution, "url": self.url, "root": self.url,
                "issuer": self.issuer, "auth": self.auth_kind, "file_set_id": ""}

    # -- QIDO-RS ----------------------------------------------------------------------

    def echo(self) -> None:
        """Send one small QIDO-RS study search to check that the service responds.

        Raises
        ------
        SourceConnectionError
            When the service cannot be reached, times out, rejects the credentials
            or responds with an HTTP error.
        """
        started = time.perf_counter()
        try:
            self._get_json("studies", {"limit": 1, "includefield": "StudyInstanceUID"})
        except (requests.RequestException, ValueError) as err:
            raise SourceConnectionError(
                f"{self.url}: echo failed: {self._describe_failure(err)}"
            ) from err
        logger.info("%s responded to a QIDO-RS echo in %.2f s", self.source_id,
                    time.perf_counter() - started)

    def find_studies(self, query: StudyQuery) -> list[StudyMatch]:
        """Search the studies matching a query with QIDO-RS ``/studies``.

        Empty query fields are left out of the request, so they match anything. A
        ``study_date`` range open at one end (``"-20210115"``, ``"20210115-"``) is
        sent as it is, as DICOM range matching allows.

        Raises
        ------
        ValueError
            When ``query.study_instance_uid`` is not a valid UID.
        SourceConnectionError
            When the service cannot be reached or responds with an HTTP error.
        """
        if query.study_instance_uid:
            _check_uid(query.study_instance_uid, "StudyInstanceUID")
        filters = {
            keyword: value
            for keyword, value in (
                ("PatientID", query.patient_id),
                ("IssuerOfPatientID", query.issuer_of_patient_id),
                ("StudyDate", query.study_date),
                ("ModalitiesInStudy", query.modality),
                ("StudyInstanceUID", query.study_instance_uid),
            )
            if value
        }
        items = self._search("studies", filters=filters, fields=STUDY_FIELDS,
                             uid_keyword="StudyInstanceUID")
        matches = [self._study_match(item) for item in items]
        matches = [match for match in matches if match.study_instance_uid]
        # Values stay out of the log, because a Patient ID is identifying.
        logger.info("%s: QIDO-RS study search on %s matched %d studies", self.source_id,
                    ", ".join(filters) or "no attributes", len(matches))
        return matches

    def find_series(self, study_instance_uid: str, *, modality: str = "") -> list[SeriesMatch]:
        """Search the series of a study with QIDO-RS ``/studies/{uid}/series``.

        Raises
        ------
        ValueError
            When ``study_instance_uid`` is not a valid UID.
        SourceConnectionError
            When the service cannot be reached or responds with an HTTP error.
        """
        _check_uid(study_instance_uid, "StudyInstanceUID")
        filters = {"Modality": modality} if modality else {}
        items = self._search(f"studies/{study_instance_uid}/series", filters=filters,
                             fields=SERIES_FIELDS, uid_keyword="SeriesInstanceUID")
        matches = [
            SeriesMatch(
                source_id=self.source_id,
                study_instance_uid=study_instance_uid,
                series_instance_uid=_json_text(item, "SeriesInstanceUID"),
                modality=_json_text(item, "Modality"),
                series_number=_json_int(item, "SeriesNumber"),
                series_description=_json_text(item, "SeriesDescription"),
                number_of_instances=_json_int(item, "NumberOfSeriesRelatedInstances"),
            )
            for item in items
        ]
        matches = [match for match in matches if match.series_instance_uid]
        logger.info("%s: QIDO-RS series search of study %s matched %d series",
                    self.source_id, study_instance_uid, len(matches))
        return matches

    def _search(
        self,
        resource: str,
        *,
        filters: Mapping[str, str],
        fields: Sequence[str],
        uid_keyword: str,
    ) -> list[dict[str, Any]]:
        """Run a QIDO-RS search page by page and return every result.

        Paging stops at a short page, or when a page brings no new UID, which is how
        a server that ignores ``offset`` shows itself.
        """
        results: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            try:
                page = self._get_json(resource, {**filters, "includefield": list(fields),
                                                 "limit": QIDO_PAGE_SIZE,
                                                 "offset": len(results)})
            except (requests.RequestException, ValueError) as err:
                # Not chained, because the text of requests' errors repeats the query
                # string, which can contain a Patient ID, and a traceback prints it.
                raise SourceConnectionError(
                    f"{self.url}/{resource}: QIDO-RS search failed: "
                    f"{self._describe_failure(err)}"
                ) from None
            uids = {_json_text(item, uid_keyword) for item in page}
            new = uids - seen
            if page and not new:
                logger.warning("%s/%s: the server sent the same results again for offset "
                               "%d; paging stopped at %d results", self.url, resource,
                               len(results), len(results))
                break
            seen |= uids
            results.extend(page)
            if len(page) != QIDO_PAGE_SIZE:
                break
        return results

    def _get_json(self, resource: str,
                  parameters: Mapping[str, str | int | Sequence[str]]) -> list[dict[str, Any]]:
        """GET a QIDO-RS resource and return its DICOM JSON results (PS3.18 annex F)."""
        query = urlencode(parameters, doseq=True, quote_via=quote, safe=QUERY_SAFE)
        response = self._session.get(f"{self.url}/{resource}?{query}",
                                     headers={"Accept": "application/dicom+json"},
                                     timeout=(self.timeout_s, self.timeout_s))
        response.raise_for_status()
        if response.status_code == 204 or not response.content:
            return []
        results = response.json()
        # Some servers send a lone result as an object instead of an array of one.
        if isinstance(results, dict):
            results = [results]
        if not isinstance(results, list) or not all(isinstance(item, dict)
                                                    for item in results):
            raise ValueError("the response is not a DICOM JSON array of objects")
        return results

    def _study_match(self, item: Mapping[str, Any]) -> StudyMatch:
        return StudyMatch(
            source_id=self.source_id,
            study_instance_uid=_json_text(item, "StudyInstanceUID"),
            patient_id=_json_text(item, "PatientID"),
            issuer_of_patient_id=_json_text(item, "IssuerOfPatientID"),
            study_date=_json_text(item, "StudyDate"),
            modalities=tuple(_json_values(item, "ModalitiesInStudy")),
            study_description=_json_text(item, "StudyDescription"),
            accession_number=_json_text(item, "AccessionNumber"),
            number_of_instances=_json_int(item, "NumberOfStudyRelatedInstances"),
        )

    # -- WADO-RS ----------------------------------------------------------------------

    def retrieve(
        self, study_instance_uid: str, *, series_instance_uid: str = ""
    ) -> RetrieveResult:
        """Fetch a study, or one of its series, with WADO-RS into the cache.

        Each instance is stored as received under the location
        ``<source_id>/studies/<study>/series/<series>/instances/<sop>``, with the
        UIDs read from the instance's own header. The response is streamed and parsed
        part by part. A server that sends one instance as single-part
        ``application/dicom`` instead of ``multipart/related``, which DICOM PS3.18
        requires, is accepted with a warning in the log.

        Returns
        -------
        RetrieveResult
            The cached files; ``completed`` counts the instances stored and
            ``failed`` the parts that held no readable DICOM instance.

        Raises
        ------
        ValueError
            When a UID is not valid.
        SourceConnectionError
            When the service cannot be reached, times out or rejects the credentials.
        RetrieveError
            When the server responds with another HTTP error, the response is not
            DICOM, the body ends before its closing boundary, or no instance arrives.
        """
        _check_uid(study_instance_uid, "StudyInstanceUID")
        resource = f"studies/{study_instance_uid}"
        if series_instance_uid:
            _check_uid(series_instance_uid, "SeriesInstanceUID")
            resource += f"/series/{series_instance_uid}"
        address = f"{self.url}/{resource}"
        result = RetrieveResult(source_id=self.source_id,
                                study_instance_uid=study_instance_uid,
                                series_instance_uid=series_instance_uid)
        started = time.perf_counter()
        logger.info("%s: WADO-RS retrieve of %s started", self.source_id, resource)

        try:
            with self._get_instances(address) as response:
                for number, data in enumerate(_iter_instances(response, address), start=1):
                    self._store_part(data, number=number, address=address,
                                     expected=(study_instance_uid, series_instance_uid),
                                     result=result)
        except requests.RequestException as err:
            # NOTE: urllib3 retries only until the response headers arrive, so a body cut
            # off midway fails the retrieve. The instances stored before the cut stay in
            # the cache, and the cache keeps one copy when a repeated retrieve sends them again.
            raise SourceConnectionError(
                f"{address}: WADO-RS retrieve failed after {result.completed} instances: "
                f"{self._describe_failure(err)}"
            ) from err

        result.seconds = time.perf_counter() - started
        if result.completed == 0:
            raise RetrieveError(
                f"{address}: WADO-RS retrieve returned no instances ({result.failed} "
                "unreadable parts); the server may list the study without holding its "
                "files, or the series may belong to another study"
            )
        logger.info("%s: WADO-RS retrieve of %s finished: %d instances stored, %d failed, "
                    "%.1f s", self.source_id, resource, result.completed, result.failed,
                    result.seconds)
        return result

    def _get_instances(self, address: str) -> requests.Response:
        response = self._request_instances(address, WADO_ACCEPT)
        if response.status_code == 406:
            # Not Acceptable: a server that cannot send the stored transfer syntax as is
            # can still send the default, Explicit VR Little Endian.
            response.close()
            logger.info("%s: the server rejected transfer-syntax=* with HTTP 406, so its "
                        "default transfer syntax is requested", address)
            response = self._request_instances(address, WADO_ACCEPT_DEFAULT)
        if response.status_code in (401, 403):
            response.close()
            raise SourceConnectionError(f"{address}: {self._refusal(response.status_code)}")
        if response.status_code >= 400:
            response.close()
            raise RetrieveError(f"{address}: WADO-RS retrieve failed with HTTP "
                                f"{response.status_code} {response.reason}")
        return response

    def _request_instances(self, address: str, accept: str) -> requests.Response:
        try:
            return self._session.get(address, headers={"Accept": accept}, stream=True,
                                     timeout=(self.timeout_s, self.timeout_s))
        except requests.RequestException as err:
            raise SourceConnectionError(
                f"{address}: WADO-RS retrieve failed: {self._describe_failure(err)}"
            ) from err

    def _store_part(
        self,
        data: bytes,
        *,
        number: int,
        address: str,
        expected: tuple[str, str],
        result: RetrieveResult,
    ) -> None:
        try:
            study, series, sop = _header_uids(data)
        except (InvalidDicomError, ValueError, EOFError, OSError) as err:
            result.failed += 1
            logger.error("%s: part %d (%d bytes) is not a readable DICOM instance: %s",
                         address, number, len(data), err)
            return
        if study != expected[0] or (expected[1] and series != expected[1]):
            logger.warning("%s: part %d is instance %s of study %s, series %s, outside the "
                           "study or series requested; stored under its own UIDs",
                           address, number, sop, study, series)
        location = f"{self.source_id}/studies/{study}/series/{series}/instances/{sop}"
        result.files.append(self.cache.store(self.source_id, location, data))
        result.completed += 1

    # -- as a source ------------------------------------------------------------------

    def iter_files(self) -> Iterator[SourceFile]:
        """Yield every instance retrieved from this source so far, from the cache."""
        return self.cache.iter_files(self.source_id)

    def absent_references(self) -> list[AbsentReference]:
        """Return no records: a PACS has no DICOMDIR."""
        return []

    def _refusal(self, status: int) -> str:
        if self.auth_kind == "none":
            return (f"authentication refused (HTTP {status}); the server requires "
                    "credentials: configure username and password_env, or token_env")
        return (f"authentication refused (HTTP {status}); check the {self.auth_kind} "
                "credentials")

    def _describe_failure(self, err: BaseException) -> str:
        """Say why a request failed, without secrets or the request's query string.

        The text of urllib3's errors is left out, because it repeats the URL with its
        query, and a QIDO-RS query can contain a Patient ID.
        """
        tries = f"{self.retries + 1} tries"
        if isinstance(err, ValueError) and not isinstance(err, requests.RequestException):
            # A body that is not DICOM JSON fails the same way on every try.
            detail = str(err) if "DICOM JSON" in str(err) else "the body is not valid JSON"
            return f"the server's answer is not DICOM JSON: {detail}"
        status = _http_status(err)
        if status in (401, 403):
            return self._refusal(status)
        if status is not None:
            reason = getattr(getattr(err, "response", None), "reason", "") or ""
            return f"HTTP {status} {reason}".rstrip()
        chain = list(_exception_chain(err))
        names = {type(item).__name__ for item in chain}
        if names & TIMEOUT_ERRORS:
            return f"timed out after {self.timeout_s:g} s per request ({tries})"
        if any(isinstance(item, ConnectionRefusedError) for item in chain):
            return f"connection refused ({tries})"
        system_errors = [item for item in chain if isinstance(item, OSError) and item.strerror]
        if system_errors:
            return f"{system_errors[-1].strerror} ({tries})"
        return f"{type(chain[-1]).__name__} ({tries})"


def iter_multipart_parts(chunks: Iterable[bytes], boundary: bytes) -> Iterator[bytes]:
    """Yield the body of each part of a ``multipart/related`` message as it arrives.

    Parameters
    ----------
    chunks
        The message body, in pieces of any size.
    boundary
        The ``boundary`` parameter of the Content-Type, without the leading ``--``.

    Raises
    ------
    RetrieveError
        When the body ends before the closing delimiter (RFC 2046).
    """
    opening = b"--" + boundary
    delimiter = b"\r\n" + opening
    buffer = bytearray()
    scan_from = 0
    opened = False
    for chunk in chunks:
        buffer += chunk
        while True:
            if not opened:
                start = buffer.find(opening)
                if start < 0:
                    break
                del buffer[:start + len(opening)]
                opened = True
                scan_from = 0
            # After a delimiter comes "--" (the last one) or CRLF, headers and a body.
            if buffer[:2] == b"--":
                return
            end = buffer.find(delimiter, scan_from)
            if end < 0:
                # A delimiter may straddle two chunks, so the tail is scanned again.
                scan_from = max(0, len(buffer) - len(delimiter))
                break
            part = bytes(buffer[:end])
            del buffer[:end + len(delimiter)]
            scan_from = 0
            yield _part_body(part)
    raise RetrieveError(f"multipart body ended without its closing boundary "
                        f"--{boundary.decode('ascii', 'replace')}--; the transfer was cut")


def _part_body(part: bytes) -> bytes:
    # Transport padding and CRLF end the delimiter line, and a blank line ends the headers.
    separator = part.find(b"\r\n\r\n")
    if separator < 0:
        raise RetrieveError("multipart part has no blank line after its headers")
    return part[separator + 4:]


def _iter_instances(response: requests.Response, address: str) -> Iterator[bytes]:
    """Yield the bytes of each instance in a WADO-RS response, multipart or single-part."""
    content_type = response.headers.get("Content-Type", "")
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    chunks = response.iter_content(chunk_size=STREAM_CHUNK_BYTES)
    if media_type == "application/dicom":
        logger.warning("%s: the server sent single-part application/dicom instead of "
                       "multipart/related, read as one instance", address)
        data = b"".join(chunks)
        if data:
            yield data
        return
    if media_type != "multipart/related":
        raise RetrieveError(f"{address}: WADO-RS response has Content-Type {content_type!r}, "
                            'expected multipart/related; type="application/dicom"')
    boundary = _boundary(parameters)
    if not boundary:
        raise RetrieveError(f"{address}: WADO-RS response has Content-Type {content_type!r} "
                            "without a boundary parameter")
    try:
        yield from iter_multipart_parts(chunks, boundary.encode("ascii"))
    except RetrieveError as err:
        raise RetrieveError(f"{address}: {err}") from err


def _boundary(parameters: str) -> str:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"')
    return ""


def _header_uids(data: bytes) -> tuple[str, str, str]:
    """Read the Study, Series and SOP Instance UIDs of an instance's bytes."""
    # pydicom's warnings about the encoding are left to ingest, which reads the
    # whole header of the stored file and reports them with its path.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True,
                                  specific_tags=list(_HEADER_UIDS))
    values = tuple(str(dataset.get(keyword, "")).strip() for keyword in _HEADER_UIDS)
    for keyword, value in zip(_HEADER_UIDS, values, strict=True):
        if not value:
            raise ValueError(f"{keyword} is missing")
        _check_uid(value, keyword)
    return values[0], values[1], values[2]


# -- DICOM JSON (PS3.18 annex F) ------------------------------------------------------


def _json_values(item: Mapping[str, Any], keyword: str) -> list[Any]:
    element = item.get(f"{tag_for_keyword(keyword):08X}", {})
    values = element.get("Value", []) if isinstance(element, Mapping) else []
    return [value for value in values if value is not None]


def _json_text(item: Mapping[str, Any], keyword: str) -> str:
    values = _json_values(item, keyword)
    if not values:
        return ""
    first = values[0]
    if isinstance(first, Mapping):
        # A person name is an object, so its alphabetic component group is taken.
        return str(first.get("Alphabetic", ""))
    return str(first).strip()


def _json_int(item: Mapping[str, Any], keyword: str) -> int | None:
    text = _json_text(item, keyword)
    try:
        return int(text) if text else None
    except ValueError:
        return None


# -- HTTP -------------------------------------------------------------------------------


class _BearerAuth(AuthBase):
    """An ``Authorization: Bearer`` header (RFC 6750) whose repr hides the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(<redacted>)"


class _LoggedRetry(Retry):
    """urllib3's ``Retry`` that logs each retry and waits from the first retry on.

    urllib3 2.x retries the first time at once and starts doubling only from the
    second retry. Here the waits are ``backoff_factor`` times 1, 2, 4 and so on.
    """

    def get_backoff_time(self) -> float:
        consecutive = len(list(takewhile(lambda item: item.redirect_location is None,
                                         reversed(self.history))))
        if consecutive == 0:
            return 0.0
        return float(min(self.backoff_max, self.backoff_factor * 2 ** (consecutive - 1)))

    def parse_retry_after(self, retry_after: str) -> float:
        # A Retry-After of hours would stall a job, so it is capped like the back-off.
        return min(super().parse_retry_after(retry_after), MAX_BACKOFF_S)

    def increment(self, method: str | None = None, url: str | None = None,
                  *args: Any, **kwargs: Any) -> Self:
        retry = super().increment(method, url, *args, **kwargs)
        last = retry.history[-1]
        cause = f"HTTP {last.status}" if last.status is not None else type(last.error).__name__
        # Only the path is logged, because a QIDO-RS query string can contain a Patient ID.
        path = (url or "").split("?", 1)[0]
        attempt = len(retry.history) + 1
        logger.warning("GET %s failed (%s); try %d of %d follows", path, cause, attempt,
                       attempt + (retry.total or 0))
        return retry


def _make_session(*, username: str, password: str, token: str, retries: int,
                  backoff_s: float) -> requests.Session:
    session = requests.Session()
    if token:
        session.auth = _BearerAuth(token)
    elif username:
        session.auth = HTTPBasicAuth(username, password)
    retry = _LoggedRetry(
        total=retries, connect=retries, read=retries, status=retries, other=0,
        allowed_methods=frozenset({"GET"}), status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_s, backoff_max=MAX_BACKOFF_S, raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _split_credentials(url: str) -> tuple[str, str, str]:
    """Return the URL without user information, and the user name and password in it."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"DICOMweb URL {_redact_url(url)!r}: expected "
                         "http(s)://host[:port]/path")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    if parts.query or parts.fragment:
        raise ValueError(f"DICOMweb URL {clean!r} has a query or fragment; give the "
                         "service root only, and credentials as options")
    return clean, unquote(parts.username or ""), unquote(parts.password or "")


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"<redacted>@{host}", parts.path, "", ""))


def _check_options(url: str, *, username: str, password: str, token: str,
                   timeout_s: float, retries: int, backoff_s: float) -> None:
    if token and (username or password):
        raise ValueError(f"{url}: give either a bearer token or a username and password, "
                         "not both")
    if password and not username:
        raise ValueError(f"{url}: a password was given without a username")
    if not timeout_s > 0:
        raise ValueError(f"{url}: timeout_s is {timeout_s}, expected more than 0 seconds")
    if retries < 0:
        raise ValueError(f"{url}: retries is {retries}, expected 0 or more")
    if backoff_s < 0:
        raise ValueError(f"{url}: backoff_s is {backoff_s}, expected 0 or more seconds")


def _check_uid(value: str, keyword: str) -> None:
    if len(value) > UID_MAX_LENGTH or not UID_PATTERN.match(value):
        raise ValueError(f"{keyword} {value!r} is not a valid UID: expected digits and "
                         f"dots, at most {UID_MAX_LENGTH} characters")


def _http_status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _exception_chain(err: BaseException) -> Iterator[BaseException]:
    """Yield an error, its causes, and the ``reason`` urllib3 wraps inside them."""
    seen: set[int] = set()
    pending: list[BaseException] = [err]
    while pending:
        item = pending.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        for linked in (item.__cause__, item.__context__, getattr(item, "reason", None),
                       *[arg for arg in item.args if isinstance(arg, BaseException)]):
            if isinstance(linked, BaseException):
                pending.append(linked)
