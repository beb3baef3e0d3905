"""A small DICOMweb server on 127.0.0.1 that misbehaves on purpose, for client tests.

It serves one instance file. QIDO-RS ``/studies`` returns that instance's study and
ignores ``limit`` and ``offset``. WADO-RS ``/studies/{uid}`` returns the instance as
single-part ``application/dicom``, the form some servers send instead of
``multipart/related``. Three made-up study UIDs get multipart bodies that are wrong
in one way each: ``empty_study_uid`` no part, ``mixed_study_uid`` a part that is not
DICOM before the instance, and ``cut_study_uid`` the instance without the closing
boundary. The first ``fail_first`` requests get HTTP 503, with ``retry_after`` as their
Retry-After header when it is set. With ``reject_any_syntax``, a request that
accepts ``transfer-syntax=*`` gets HTTP 406. With ``token`` set, a
request without ``Authorization: Bearer <token>`` gets HTTP 401.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom

__all__ = ["FakeDicomweb", "SilentServer"]

BOUNDARY = "fake-boundary"


@dataclass
class FakeDicomweb:
    """The fake server, used as a context manager."""

    instance_path: Path
    token: str = ""
    fail_first: int = 0
    retry_after: str = ""
    reject_any_syntax: bool = False
    empty_study_uid: str = "1.2.3.999"
    mixed_study_uid: str = "1.2.3.998"
    cut_study_uid: str = "1.2.3.997"
    requests: list[tuple[float, str, int]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _failures_sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The DICOMweb root."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/dicom-web"

    def __enter__(self) -> FakeDicomweb:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        status = self._status(handler)
        with self._lock:
            self.requests.append((time.monotonic(), path, status))
        if status != 200:
            headers = {}
            if status == 503 and self.retry_after:
                headers["Retry-After"] = self.retry_after
            self._send(handler, status, b"", "text/plain", headers)
            return

        dataset = pydicom.dcmread(self.instance_path, stop_before_pixels=True)
        parts = path.removeprefix("/dicom-web/").split("/")
        if parts == ["studies"]:
            study = {
                "0020000D": {"vr": "UI", "Value": [dataset.StudyInstanceUID]},
                "00080020": {"vr": "DA", "Value": [dataset.StudyDate]},
                "00080061": {"vr": "CS", "Value": [dataset.Modality]},
            }
            self._send(handler, 200, json.dumps([study]).encode(), "application/dicom+json")
        elif len(parts) >= 2 and parts[0] == "studies" and parts[1] in self._multipart_bodies():
            self._send(handler, 200, self._multipart_bodies()[parts[1]],
                       f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        elif len(parts) >= 2 and parts[0] == "studies" and parts[1] == dataset.StudyInstanceUID:
            self._send(handler, 200, self.instance_path.read_bytes(), "application/dicom")
        else:
            self._send(handler, 404, b"", "text/plain")

    def _multipart_bodies(self) -> dict[str, bytes]:
        instance = self.instance_path.read_bytes()
        head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        tail = f"--{BOUNDARY}--\r\n".encode()
        return {
            self.empty_study_uid: tail,
            self.mixed_study_uid: head + b"not DICOM\r\n" + head + instance + b"\r\n" + tail,
            self.cut_study_uid: head + instance[:-10],
        }

    def _status(self, handler: BaseHTTPRequestHandler) -> int:
        if self.token and handler.headers.get("Authorization") != f"Bearer {self.token}":
            return 401
        if self.reject_any_syntax and "transfer-syntax=*" in handler.headers.get("Accept", ""):
            return 406
        with self._lock:
            if self._failures_sent < self.fail_first:
                self._failures_sent += 1
                return 503
        return 200

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes,
              content_type: str, headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


class SilentServer:
    """A socket that accepts connections (through the kernel backlog) and never responds."""

    def __init__(self) -> None:
        import socket

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)

    @property
    def url(self) -> str:
        """The DICOMweb root it pretends to serve."""
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}/dicom-web"

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._socket.close()
