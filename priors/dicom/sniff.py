"""Recognise DICOM files from their first bytes.

A DICOM file either has the Part 10 layout (a 128-byte preamble followed by ``DICM``,
PS3.10 section 7.1) or is a bare data set, as some old scanners and archives write
it. A bare data set starts with an element of group 0002 (File Meta Information) or
0008 (Identifying) in Implicit or Explicit VR Little Endian. Only ``SNIFF_BYTES`` are
read, so large non-DICOM or zero-filled files are passed over quickly.
"""

from __future__ import annotations

import os
import struct

__all__ = [
    "DICOM_PART10",
    "DICOM_RAW",
    "NOT_DICOM",
    "SNIFF_BYTES",
    "sniff",
    "sniff_bytes",
]

DICOM_PART10 = "dicom-part10"
DICOM_RAW = "dicom-raw"
NOT_DICOM = "not-dicom"

# Preamble plus prefix plus one element header is all the decision needs.
SNIFF_BYTES = 144
PREAMBLE_LENGTH = 128
PREFIX = b"DICM"

# Groups that start a bare data set: File Meta Information or Identifying.
FIRST_GROUPS = frozenset({0x0002, 0x0008})
# A first element of group 0002 or 0008 with a higher element number is not plausible:
# group 0008 begins with (0008,0000) to (0008,0018) in files written in tag order.
MAX_FIRST_ELEMENT = 0x0100
# An implicit VR first element is a group length, a code string or a UID, all short.
MAX_FIRST_IMPLICIT_LENGTH = 1024

_EXPLICIT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC "
    b"UI UL UN UR US UT UV".split()
)


def sniff(path: str | os.PathLike[str]) -> str:
    """Classify a file as Part 10 DICOM, a bare DICOM data set or not DICOM.

    Parameters
    ----------
    path
        File to inspect; only its first ``SNIFF_BYTES`` bytes are read.

    Returns
    -------
    str
        ``"dicom-part10"`` when ``DICM`` follows the 128-byte preamble,
        ``"dicom-raw"`` when the file starts with a plausible element of group 0002
        or 0008 in Implicit or Explicit VR Little Endian, else ``"not-dicom"``.

    Raises
    ------
    OSError
        When the file cannot be opened or read.
    """
    with open(path, "rb") as stream:
        head = stream.read(SNIFF_BYTES)
    return sniff_bytes(head)


def sniff_bytes(head: bytes) -> str:
    """Classify the first bytes of a file, as ``sniff`` does."""
    if head[PREAMBLE_LENGTH : PREAMBLE_LENGTH + len(PREFIX)] == PREFIX:
        return DICOM_PART10
    if _starts_bare_dataset(head):
        return DICOM_RAW
    return NOT_DICOM


def _starts_bare_dataset(head: bytes) -> bool:
    if len(head) < 8:
        return False
    group, element = struct.unpack_from("<HH", head, 0)
    if group not in FIRST_GROUPS or element > MAX_FIRST_ELEMENT:
        return False

    # Explicit VR: two upper-case letters naming a VR follow the tag.
    if head[4:6] in _EXPLICIT_VRS:
        return True

    # Implicit VR: a 4-byte length follows the tag.
    (length,) = struct.unpack_from("<I", head, 4)
    return 0 < length <= MAX_FIRST_IMPLICIT_LENGTH
