"""Keyed pseudonyms for people and patient records.

A pseudonym is HMAC-SHA256 over an (issuer, Patient ID) pair, keyed with the secret
in ``PRIORS_PSEUDONYM_KEY`` or, when that is unset, with a key file created on first
use in the priors home folder with mode 600. The same key always gives the same
pseudonym, so results of different runs can be joined without clear identifiers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

__all__ = ["Pseudonymizer", "load_key"]

KEY_FILE_NAME = "pseudonym.key"
# 16 bytes of the HMAC (32 hex characters) keep collisions negligible for any cohort.
PSEUDONYM_HEX_LENGTH = 32


def load_key(home: str | os.PathLike[str], *, configured: str = "") -> bytes:
    """Return the pseudonym secret, creating ``home/pseudonym.key`` if needed.

    Parameters
    ----------
    home
        The priors home folder.
    configured
        A key from configuration or ``PRIORS_PSEUDONYM_KEY``; used when not empty.
    """
    if configured:
        return configured.encode("utf-8")
    path = Path(home).expanduser() / KEY_FILE_NAME
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode("ascii")
    # O_EXCL: of two processes racing here, one writes and the other reads its key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as stream:
        stream.write(key)
    return key


class Pseudonymizer:
    """Compute keyed pseudonyms; holds the key, never prints it."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("pseudonym key is empty")
        self._key = key

    def __repr__(self) -> str:
        return "Pseudonymizer(key=<redacted>)"

    def record(self, issuer: str, patient_id: str) -> str:
        """Return the pseudonym of one patient record (issuer, Patient ID)."""
        return self._digest(f"record\x00{issuer}\x00{patient_id}")

    def person(self, records: list[tuple[str, str]]) -> str:
        """Return a person's pseudonym, computed from the smallest linked record."""
        if not records:
            raise ValueError("a person needs at least one (issuer, Patient ID) record")
        issuer, patient_id = min(records)
        return "P-" + self._digest(f"person\x00{issuer}\x00{patient_id}")[:16]

    def value(self, text: str) -> str:
        """Return a pseudonym of any identifying value (accession number, name)."""
        return self._digest(f"value\x00{text}")

    def _digest(self, message: str) -> str:
        mac = hmac.new(self._key, message.encode("utf-8"), hashlib.sha256)
        return mac.hexdigest()[:PSEUDONYM_HEX_LENGTH]
