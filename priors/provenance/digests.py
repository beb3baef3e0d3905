"""Series digests, pair keys and the canonical JSON they are computed from.

A series digest identifies the pixel content of a series independently of how its
instances were encoded or where they were fetched from. Its exact input is the
UTF-8 encoding of the instances' lower-case hexadecimal ``pixel_sha256`` values,
ordered by SOP Instance UID (plain string order), joined by a single ``"\\n"``
(0x0A) with no trailing newline. For two instances A (UID ``1.2.3``) and B (UID
``1.2.4``) the hashed bytes are ``b"<pixel_sha256 of A>\\n<pixel_sha256 of B>"``.

A pair key is the SHA-256 of the canonical JSON (sorted keys, no spaces, ASCII
only) of the two series digests, the registration configuration and the model
version, so the same work gets the same key on any machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

__all__ = [
    "MLFLOW_DIGEST_LENGTH",
    "PAIR_KEY_VERSION",
    "canonical_json",
    "file_sha256",
    "is_finite_number",
    "jsonable",
    "mlflow_digest",
    "pair_key",
    "series_digest",
]

# MLflow rejects dataset digests longer than 36 characters; 32 hex characters
# (128 bits) keep accidental collisions negligible and fit with room to spare.
MLFLOW_DIGEST_LENGTH = 32

# Bumped when the content of the pair key changes, so old and new keys never match.
PAIR_KEY_VERSION = 1

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK_BYTES = 1 << 20


def series_digest(pixel_sha256_by_sop: Mapping[str, str]) -> str:
    """Compute the digest of a series from its instances' pixel hashes.

    Parameters
    ----------
    pixel_sha256_by_sop
        SOP Instance UID -> ``pixel_sha256`` (64 hexadecimal characters, either case)
        of every instance of the series.

    Returns
    -------
    str
        The SHA-256, as 64 lower-case hexadecimal characters, of the hashes joined by
        ``"\\n"`` in SOP Instance UID order (see the module docstring).

    Raises
    ------
    ValueError
        When the mapping is empty or a value is missing or not a SHA-256 hex string,
        for example an instance whose compressed pixel data was never decoded.
    """
    if not pixel_sha256_by_sop:
        raise ValueError("cannot compute a series digest of zero instances")

    hashes = []
    for sop_instance_uid in sorted(pixel_sha256_by_sop):
        value = pixel_sha256_by_sop[sop_instance_uid]
        normalized = value.lower() if isinstance(value, str) else ""
        if not _SHA256_HEX.match(normalized):
            raise ValueError(
                f"instance {sop_instance_uid}: pixel_sha256 is {value!r}, "
                "expected 64 hexadecimal characters. Decode the instance first."
            )
        hashes.append(normalized)

    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


def mlflow_digest(series_digest: str) -> str:
    """Return the first 32 hexadecimal characters of a series digest, for MLflow.

    Raises
    ------
    ValueError
        When ``series_digest`` is not a SHA-256 hex string.
    """
    if not _SHA256_HEX.match(series_digest.lower()):
        raise ValueError(f"series digest is {series_digest!r}, expected 64 hexadecimal characters")
    return series_digest.lower()[:MLFLOW_DIGEST_LENGTH]


def pair_key(
    current_digest: str,
    prior_digest: str,
    *,
    registration_config: Mapping[str, Any],
    model_version: str,
) -> str:
    """Compute the stable key of one current-prior pair.

    Parameters
    ----------
    current_digest, prior_digest
        Series digests of the current and the prior series.
    registration_config
        The registration settings that shape the result (seed, metric, levels ...).
        Tuples and lists are equivalent; mapping key order does not matter.
    model_version
        The change model's version, or the baseline's name and version when no
        model applies.

    Returns
    -------
    str
        SHA-256 of the canonical JSON of the inputs, 64 hexadecimal characters.
    """
    for role, digest in (("current", current_digest), ("prior", prior_digest)):
        if not _SHA256_HEX.match(digest.lower()):
            raise ValueError(
                f"{role} series digest is {digest!r}, expected 64 hexadecimal characters"
            )

    document = {
        "key_version": PAIR_KEY_VERSION,
        "current_series_digest": current_digest.lower(),
        "prior_series_digest": prior_digest.lower(),
        "registration_config": registration_config,
        "model_version": str(model_version),
    }
    return hashlib.sha256(canonical_json(document).encode("ascii")).hexdigest()


def canonical_json(value: Any) -> str:
    """Serialize ``value`` as canonical JSON: sorted keys, no spaces, ASCII only.

    Raises
    ------
    TypeError
        When a value has no JSON form (see ``jsonable``).
    ValueError
        When a float is NaN or infinite, which JSON cannot carry.
    """
    return json.dumps(
        jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def jsonable(value: Any) -> Any:
    """Convert ``value`` to plain JSON types.

    Mappings become dicts with string keys, tuples, lists and sets become lists
    (sets sorted), paths become strings, and numpy scalars and arrays become
    Python numbers and nested lists. Non-finite floats are kept for the caller's
    encoder to accept or reject.

    Raises
    ------
    TypeError
        When a value is none of these, naming its type.
    """
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted(jsonable(item) for item in value)
    if isinstance(value, PurePath):
        return str(value)

    # numpy values, detected without importing numpy.
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and type(value).__module__ == "numpy":
        return jsonable(tolist())

    raise TypeError(f"value of type {type(value).__name__} has no JSON form: {value!r:.80}")


def is_finite_number(value: Any) -> bool:
    """Return True for an int or a finite float (bools excluded)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Compute the SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for chunk in iter(lambda: stream.read(_READ_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
