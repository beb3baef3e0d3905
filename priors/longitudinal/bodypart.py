"""Body regions from (0018,0015) Body Part Examined and free-text descriptions.

Descriptions are written in the language of the site, so each region has keywords in
English, German, French, Spanish, Portuguese and Japanese. Latin-script keywords match
whole words, case-insensitively; Japanese keywords match as substrings.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

__all__ = ["DEFAULT_REGION_KEYWORDS", "PARENT_REGIONS", "regions_of", "regions_related"]

# Spine segments come before the chest and the head, so that "thoracic spine" and
# 胸椎 (thoracic vertebrae) are read as the spine, not the chest.
DEFAULT_REGION_KEYWORDS: dict[str, tuple[str, ...]] = {
    "LSPINE": (
        "lspine",
        "l-spine",
        "l spine",
        "lumbar",
        "lumbar spine",
        "ls-spine",
        "lws",
        "lendenwirbelsaule",
        "lombaire",
        "columna lumbar",
        "coluna lombar",
        "腰椎",
    ),
    "CSPINE": (
        "cspine",
        "c-spine",
        "c spine",
        "cervical spine",
        "hws",
        "halswirbelsaule",
        "rachis cervical",
        "columna cervical",
        "coluna cervical",
        "頸椎",
        "頚椎",
    ),
    "TSPINE": (
        "tspine",
        "t-spine",
        "t spine",
        "thoracic spine",
        "dorsal spine",
        "bws",
        "brustwirbelsaule",
        "rachis dorsal",
        "columna dorsal",
        "coluna toracica",
        "胸椎",
    ),
    "SPINE": (
        "spine",
        "wirbelsaule",
        "rachis",
        "colonne",
        "columna",
        "coluna",
        "脊椎",
        "脊柱",
    ),
    "CHEST": (
        "chest",
        "thorax",
        "thx",
        "lung",
        "lungs",
        "pulmonary",
        "torax",
        "brustkorb",
        "lunge",
        "poumon",
        "pulmon",
        "pulmao",
        "胸部",
        "肺",
    ),
    "HEAD": (
        "head",
        "brain",
        "skull",
        "cranial",
        "cerebral",
        "kopf",
        "schadel",
        "gehirn",
        "crane",
        "cerveau",
        "tete",
        "craneo",
        "cabeza",
        "cerebro",
        "cranio",
        "頭部",
        "脳",
        "頭蓋",
    ),
    "ABDOMEN": (
        "abdomen",
        "abd",
        "abdominal",
        "liver",
        "bauch",
        "leber",
        "foie",
        "higado",
        "figado",
        "腹部",
        "肝",
    ),
    "PELVIS": ("pelvis", "pelvic", "becken", "bassin", "pelve", "骨盤"),
    "KNEE": ("knee", "knie", "genou", "rodilla", "joelho", "膝"),
}

# A region that contains others: a study of the whole spine is relevant to a lumbar one.
PARENT_REGIONS: dict[str, str] = {"LSPINE": "SPINE", "CSPINE": "SPINE", "TSPINE": "SPINE"}

# (0018,0015) values that name a region in other words.
_BODY_PART_ALIASES = {
    "LUMBAR": "LSPINE",
    "CERVICAL": "CSPINE",
    "THORACIC": "TSPINE",
    "THORAX": "CHEST",
    "LUNG": "CHEST",
    "BRAIN": "HEAD",
    "SKULL": "HEAD",
}


def regions_of(
    body_parts: Iterable[str],
    descriptions: Iterable[str],
    *,
    keywords: Mapping[str, Iterable[str]] = DEFAULT_REGION_KEYWORDS,
) -> set[str]:
    """Return the regions named by Body Part Examined values and descriptions.

    Parameters
    ----------
    body_parts
        (0018,0015) Body Part Examined values (defined terms such as ``LSPINE``).
    descriptions
        Study and series descriptions in any language.
    keywords
        Region to keywords; :data:`DEFAULT_REGION_KEYWORDS` by default.
    """
    regions: set[str] = set()
    for value in body_parts:
        term = value.strip().upper()
        if term:
            regions.add(_BODY_PART_ALIASES.get(term, term))
    for text in descriptions:
        regions |= _regions_in_text(text, keywords)
    return regions


def regions_related(current: set[str], prior: set[str]) -> set[str]:
    """Return the regions of ``current`` that ``prior`` covers, itself or by a parent."""
    related: set[str] = set()
    for region in current:
        if region in prior or PARENT_REGIONS.get(region) in prior:
            related.add(region)
        elif any(PARENT_REGIONS.get(other) == region for other in prior):
            related.add(region)
    return related


def _regions_in_text(text: str, keywords: Mapping[str, Iterable[str]]) -> set[str]:
    folded = _fold(text)
    if not folded:
        return set()
    found: set[str] = set()
    for region, words in keywords.items():
        for word in words:
            if _contains(folded, _fold(word)):
                found.add(region)
                break
    # A named segment makes the generic spine match redundant.
    if found & {"LSPINE", "CSPINE", "TSPINE"}:
        found.discard("SPINE")
    if "TSPINE" in found and not _has_chest_word(folded, keywords):
        found.discard("CHEST")
    return found


def _has_chest_word(folded: str, keywords: Mapping[str, Iterable[str]]) -> bool:
    chest_words = [_fold(w) for w in keywords.get("CHEST", ())]
    without_spine = folded.replace("thoracic spine", " ")
    return any(_contains(without_spine, word) for word in chest_words)


def _contains(text: str, word: str) -> bool:
    if not word:
        return False
    if word.isascii():
        return re.search(rf"(?<![a-z0-9]){re.escape(word)}(?![a-z0-9])", text) is not None
    return word in text


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    return unicodedata.normalize("NFKC", stripped).casefold().replace("_", " ")
