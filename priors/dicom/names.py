"""Person Name (PN) decoding through the Specific Character Set.

A PN value has up to three component groups separated by ``=``: alphabetic,
ideographic and phonetic (PS3.5 section 6.2.1). Japanese files switch character sets
inside one value with ISO 2022 escape sequences (for example ISO 2022 IR 87 for kanji
and ISO 2022 IR 13 for half-width katakana, PS3.5 Annex H), so a value must be
decoded group by group with the data set's character sets. pydicom implements these
rules; this module gives them one entry point and never raises on bad bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

__all__ = [
    "PN_GROUP_SEPARATOR",
    "decode_person_name",
    "person_name_groups",
    "person_name_text",
]

logger = logging.getLogger(__name__)

PN_GROUP_SEPARATOR = "="
# The default repertoire when (0008,0005) Specific Character Set is absent.
DEFAULT_CHARACTER_SET = "ISO_IR 6"


def decode_person_name(raw: bytes, character_sets: Sequence[str] | str | None) -> str:
    """Decode an encoded PN value into text with its groups joined by ``=``.

    Parameters
    ----------
    raw
        The value bytes as stored in the file.
    character_sets
        The values of (0008,0005) Specific Character Set in effect.

    Returns
    -------
    str
        The decoded name. Bytes that the character sets cannot decode are replaced
        by pydicom's fallback (it warns and decodes as ISO 2022 or Latin-1) rather
        than raising.
    """
    encodings = _python_encodings(character_sets)
    name = PersonName(raw, encodings=encodings)
    return str(name).rstrip(" \x00")


def person_name_text(ds: Dataset, keyword: str = "PatientName") -> str:
    """Return the decoded text of a PN attribute of a data set, ``""`` when absent.

    The data set's own (0008,0005) Specific Character Set decides the decoding.
    """
    element = ds.get(keyword)
    if element is None:
        return ""
    if isinstance(element, bytes):
        return decode_person_name(element, ds.get("SpecificCharacterSet"))
    return str(element).rstrip(" \x00")


def person_name_groups(name: str) -> tuple[str, str, str]:
    """Split a decoded PN into its alphabetic, ideographic and phonetic groups.

    Missing groups are ``""``, so ``"Yamada^Tarou"`` gives ``("Yamada^Tarou", "", "")``.
    """
    groups = name.split(PN_GROUP_SEPARATOR)[:3]
    groups += [""] * (3 - len(groups))
    return groups[0], groups[1], groups[2]


def _python_encodings(character_sets: Sequence[str] | str | None) -> list[str]:
    if character_sets is None or character_sets == "":
        values = [DEFAULT_CHARACTER_SET]
    elif isinstance(character_sets, str):
        values = [character_sets]
    else:
        # An empty first value means the default repertoire; pydicom handles it.
        values = list(character_sets) or [DEFAULT_CHARACTER_SET]
    return convert_encodings(values)

