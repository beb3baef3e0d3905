"""Normalise DICOM person names (PN) and compare them by script.

A PN value has up to three component groups separated by "=": alphabetic,
ideographic and phonetic (PS3.5 section 6.2.1.1). Sites fill them inconsistently: one
writes "FAMILY GIVEN" with a space in the alphabetic group, another puts half-width
katakana in the first group. So names are compared per script (Latin, Han, kana),
whatever group a script was written in. Before splitting, the text goes through NFKC
(half-width katakana to full-width, ideographic space to space), case folding, removal
of accents on Latin letters and a mapping of hiragana to katakana. Within a script the
name is then a list of tokens: components split at "^", each split at white space.
The first token is taken as the family name when the group uses "^", since PN puts the
family name first.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

__all__ = ["NameForm", "NameMatch", "compare_names", "normalise_name"]

# Combining voiced sound marks of kana: NFKD produces them, and they change the syllable.
_KANA_MARKS = {"\u3099", "\u309a"}


@dataclass(frozen=True)
class NameForm:
    """A name in one script, as normalised tokens."""

    script: str
    tokens: tuple[str, ...]
    # True when "^" separated the components, so that tokens[0] is the family name.
    family_known: bool

    @property
    def family(self) -> str | None:
        """Return the family name when the components were delimited, else None."""
        return self.tokens[0] if self.family_known and self.tokens else None


@dataclass(frozen=True)
class NameMatch:
    """Result of comparing two names, per script in common and overall.

    ``kind`` is one of ``same`` (same tokens in any order), ``middle`` (one name adds
    middle names), ``one_char`` (one character inserted, deleted or replaced),
    ``family_changed`` (given names equal, family name different), ``different``,
    or ``no_common_script``.
    """

    kind: str
    scripts: tuple[str, ...]
    detail: tuple[tuple[str, str], ...]


def normalise_name(value: str) -> dict[str, NameForm]:
    """Split a decoded PN value into one normalised form per script.

    Parameters
    ----------
    value
        The decoded (0010,0010) value, with "=" between component groups.

    Returns
    -------
    dict
        ``{"latin" | "han" | "kana": NameForm}``; a script that appears in two groups
        keeps its first group.
    """
    forms: dict[str, NameForm] = {}
    for group in value.split("="):
        text = _fold(group)
        components = [c for c in text.split("^")]
        tokens = tuple(token for component in components for token in component.split())
        if not tokens:
            continue
        script = _script_of("".join(tokens))
        delimited = sum(1 for component in components if component.strip()) > 1
        forms.setdefault(script, NameForm(script, tokens, delimited))
    return forms


def compare_names(first: str, second: str) -> NameMatch:
    """Compare two PN values script by script; the weakest script decides.

    Parameters
    ----------
    first, second
        Decoded PN values.
    """
    forms_a = normalise_name(first)
    forms_b = normalise_name(second)
    common = tuple(sorted(set(forms_a) & set(forms_b)))
    if not common:
        return NameMatch("no_common_script", (), ())
    detail = tuple((script, _compare_form(forms_a[script], forms_b[script])) for script in common)
    kind = max((kind for _, kind in detail), key=_RANK.index)
    return NameMatch(kind, common, detail)


# From strongest to weakest evidence that two names belong to one person.
_RANK = ("same", "middle", "one_char", "family_changed", "different")


def _compare_form(a: NameForm, b: NameForm) -> str:
    if sorted(a.tokens) == sorted(b.tokens):
        return "same"
    shorter, longer = sorted((a.tokens, b.tokens), key=len)
    if len(shorter) >= 2 and _is_sub_multiset(shorter, longer):
        # The first and last tokens must agree, so that only middle names differ.
        if shorter[0] == longer[0] or shorter[-1] == longer[-1]:
            return "middle"
        if _same_family_and_given(a, b):
            return "middle"
    if _edit_distance_at_most_one(" ".join(sorted(a.tokens)), " ".join(sorted(b.tokens))):
        return "one_char"
    if _edit_distance_at_most_one(" ".join(a.tokens), " ".join(b.tokens)):
        return "one_char"
    if _family_changed(a, b):
        return "family_changed"
    return "different"


def _family_changed(a: NameForm, b: NameForm) -> bool:
    """Return True when some reading of each name differs only in the family name.

    The given names must be equal; middle names may be equal or present on one side
    only, since sites drop them. Free text is ambiguous: "anna doe" and "rosa doe" read
    either as one given name with two family names or as sisters. When some reading
    gives both names one family name and different given names, the answer is False,
    so that siblings and twins are never taken for a marriage.
    """
    for family_a, given_a, _ in _readings(a):
        for family_b, given_b, _ in _readings(b):
            if family_a == family_b and given_a != given_b:
                return False
    for family_a, given_a, middle_a in _readings(a):
        for family_b, given_b, middle_b in _readings(b):
            if given_a != given_b or family_a == family_b:
                continue
            if _is_sub_multiset(middle_a, middle_b) or _is_sub_multiset(middle_b, middle_a):
                return True
    return False


def _readings(form: NameForm) -> list[tuple[str, str, tuple[str, ...]]]:
    """Return the possible (family, given, middle names) readings of a name.

    A "^"-delimited name has one reading. Free text such as "john q doe" has two,
    since it may put the given name first ("given middle family") or last
    ("family given middle").
    """
    tokens = form.tokens
    if len(tokens) < 2:
        return []
    if form.family_known:
        return [(tokens[0], tokens[1], tokens[2:])]
    return [(tokens[-1], tokens[0], tokens[1:-1]), (tokens[0], tokens[1], tokens[2:])]


def _same_family_and_given(a: NameForm, b: NameForm) -> bool:
    """Return True when some reading of each name has the same family and given name."""
    for family_a, given_a, _ in _readings(a):
        for family_b, given_b, _ in _readings(b):
            if family_a == family_b and given_a == given_b:
                return True
    return False


def _is_sub_multiset(small: tuple[str, ...], large: tuple[str, ...]) -> bool:
    remaining = list(large)
    for token in small:
        if token not in remaining:
            return False
        remaining.remove(token)
    return True


def _edit_distance_at_most_one(a: str, b: str) -> bool:
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    for i in range(len(a)):
        if a[i] != b[i]:
            if len(a) == len(b):
                return a[i + 1 :] == b[i + 1 :]
            return a[i:] == b[i + 1 :]
    return True


def _fold(text: str) -> str:
    """Apply NFKC, fold case, drop Latin accents and map hiragana to katakana."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn" or ch in _KANA_MARKS)
    folded = unicodedata.normalize("NFKC", kept).casefold()
    return "".join(
        chr(ord(ch) + 0x60) if "\u3041" <= ch <= "\u3096" else ch for ch in folded
    ).replace("\u30fb", " ")


def _script_of(text: str) -> str:
    counts = {"latin": 0, "han": 0, "kana": 0, "other": 0}
    for ch in text:
        if "\u30a0" <= ch <= "\u30ff" or "\u31f0" <= ch <= "\u31ff":
            counts["kana"] += 1
        elif "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or ch == "\u3005":
            counts["han"] += 1
        elif ch.isalpha() and ord(ch) < 0x2000:
            counts["latin"] += 1
        elif ch.isalpha():
            counts["other"] += 1
    return max(counts, key=lambda script: counts[script])
