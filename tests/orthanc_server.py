"""A real Orthanc PACS started by a test, reachable only from this machine.

Debian's Orthanc 1.10 has no bind-address option and listens on every interface, so
the configuration closes it instead: ``RemoteAccessAllowed`` false keeps HTTP to
loopback clients, and DIMSE accepts only the peers registered here, at 127.0.0.1,
under test-only AE titles (``DicomCheckModalityHost``, no blanket echo or store).
``TCP_NODELAY=1`` turns Nagle's algorithm off in Orthanc's DIMSE sockets; without it
each transfer waits on delayed acknowledgements and runs many times slower.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "ORTHANC_BINARY",
    "DicomPeer",
    "OrthancServer",
    "free_port",
    "orthanc_available",
    "require_orthanc",
]

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# Orthanc opens its database and plugins in about a second; allow for a loaded machine.
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0


def orthanc_available() -> bool:
    """Tell whether Orthanc and its DICOMweb plugin are installed."""
    return Path(ORTHANC_BINARY).is_file() and DICOMWEB_PLUGIN.is_file()


def require_orthanc() -> None:
    """Skip the calling test when Orthanc is missing; fail instead under ``CI=true``.

    ``make test`` installs Orthanc when it runs as root, so CI always has it.
    """
    if orthanc_available():
        return
    message = (f"Orthanc is not installed ({ORTHANC_BINARY}, {DICOMWEB_PLUGIN}); "
               "install the Debian packages orthanc and orthanc-dicomweb")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class DicomPeer:
    """A DIMSE peer Orthanc accepts: its AE title, and where it listens (for C-MOVE).

    ``port`` 0 means the peer has no storage SCP of its own; it can still find and
    get. The ``allow_*`` flags become the peer's permissions in Orthanc.
    """

    ae_title: str
    port: int = 0
    allow_move: bool = True
    allow_get: bool = True
    allow_store: bool = True


@dataclass
class OrthancServer:
    """One Orthanc process with its own folder, ports and configuration.

    Use as a context manager, or call ``start`` and ``stop``.
    """

    workdir: Path
    name: str = "priors-test"
    ae_title: str = "PRIORSTESTPACS"
    peers: list[DicomPeer] = field(default_factory=list)
    username: str = ""
    password: str = ""
    http_port: int = 0
    dicom_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()

    # -- life cycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The REST root, on loopback."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root of the plugin."""
        return f"{self.url}/dicom-web"

    def configuration(self) -> dict[str, Any]:
        """Return the JSON configuration this server starts with."""
        modalities = {
            peer.ae_title.lower(): {
                "AET": peer.ae_title,
                "Host": "127.0.0.1",
                "Port": peer.port or 104,
                "AllowEcho": True,
                "AllowFind": True,
                "AllowGet": peer.allow_get,
                "AllowMove": peer.allow_move,
                "AllowStore": peer.allow_store,
            }
            for peer in self.peers
        }
        config: dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "UnknownSopClassAccepted": True,
            "DicomModalities": modalities,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
            "HttpsVerifyPeers": False,
            "StableAge": 1,
            "SaveJobs": False,
            "ConcurrentJobs": 1,
        }
        if self.username:
            config["AuthenticationEnabled"] = True
            config["RegisteredUsers"] = {self.username: self.password}
        else:
            config["AuthenticationEnabled"] = False
        return config

    def start(self) -> OrthancServer:
        """Write the configuration, start Orthanc and wait until it responds."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.configuration(), indent=2))
        env = dict(os.environ, TCP_NODELAY="1")
        log_path = self.workdir / "orthanc.log"
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [ORTHANC_BINARY, str(config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with status {self.process.returncode}; its log:\n"
                    + log_path.read_text(errors="replace")[-4000:]
                )
            try:
                self.get_json("/system")
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} in "
                           f"{START_TIMEOUT_SECONDS:.0f} s")

    def stop(self) -> None:
        """Stop the process and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- REST ---------------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/octet-stream") -> bytes:
        """Send one REST request with the server's credentials; return the body."""
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", content_type)
        if self.username:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()

    def get_json(self, path: str) -> Any:
        """GET a REST path and decode the JSON response."""
        return json.loads(self.request("GET", path))

    def upload(self, paths: Iterable[Path]) -> list[str]:
        """Store files through REST; return the Orthanc ids of the instances stored.

        Files Orthanc refuses (not DICOM, a DICOMDIR) are passed over.
        """
        stored = []
        for path in paths:
            try:
                answer = json.loads(self.request("POST", "/instances", path.read_bytes(),
                                                 "application/dicom"))
            except urllib.error.HTTPError as err:
                # Orthanc 1.10 returns 400 for a file it cannot parse and 404 for a
                # DICOMDIR or a data set without the four identifying UIDs.
                if err.code in (400, 404):
                    continue
                raise
            stored.append(answer["ID"])
        return stored

    def instance_count(self) -> int:
        """Return how many instances the server stores."""
        return int(self.get_json("/statistics")["CountInstances"])
