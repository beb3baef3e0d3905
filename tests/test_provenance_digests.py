"""Series digests, MLflow digests and pair keys."""

from __future__ import annotations

import hashlib

import pytest

from priors.provenance.digests import (
    MLFLOW_DIGEST_LENGTH,
    canonical_json,
    mlflow_digest,
    pair_key,
    series_digest,
)

HASH_A = hashlib.sha256(b"pixels of A").hexdigest()
HASH_B = hashlib.sha256(b"pixels of B").hexdigest()
HASH_C = hashlib.sha256(b"pixels of C").hexdigest()


def test_series_digest_byte_encoding() -> None:
    # The documented input: hex hashes in SOP Instance UID order joined by "\n".
    expected = hashlib.sha256(f"{HASH_A}\n{HASH_B}".encode("ascii")).hexdigest()

    assert series_digest({"1.2.4": HASH_B, "1.2.3": HASH_A}) == expected


def test_series_digest_ignores_mapping_order_and_case() -> None:
    forward = series_digest({"1.2.3": HASH_A, "1.2.4": HASH_B})
    backward = series_digest({"1.2.4": HASH_B.upper(), "1.2.3": HASH_A})

    assert forward == backward


def test_series_digest_changes_with_content() -> None:
    base = series_digest({"1.2.3": HASH_A, "1.2.4": HASH_B})

    assert series_digest({"1.2.3": HASH_A, "1.2.4": HASH_C}) != base
    assert series_digest({"1.2.3": HASH_B, "1.2.4": HASH_A}) != base
    assert series_digest({"1.2.3": HASH_A}) != base


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({}, "zero instances"),
        ({"1.2.3": None}, r"instance 1\.2\.3: pixel_sha256 is None"),
        ({"1.2.3": "abc"}, "expected 64 hexadecimal characters"),
    ],
)
def test_series_digest_rejects_bad_input(mapping: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        series_digest(mapping)


def test_mlflow_digest_is_prefix() -> None:
    digest = series_digest({"1.2.3": HASH_A})

    short = mlflow_digest(digest)

    assert len(short) == MLFLOW_DIGEST_LENGTH
    assert digest.startswith(short)


def test_pair_key_stable_under_reordering() -> None:
    current = series_digest({"1.2.3": HASH_A})
    prior = series_digest({"1.2.4": HASH_B})

    first = pair_key(
        current, prior, registration_config={"seed": 7, "levels": (4, 2, 1)}, model_version="1.0"
    )
    second = pair_key(
        current, prior, registration_config={"levels": [4, 2, 1], "seed": 7}, model_version="1.0"
    )

    assert first == second
    assert len(first) == 64


def test_pair_key_depends_on_every_input() -> None:
    current = series_digest({"1.2.3": HASH_A})
    prior = series_digest({"1.2.4": HASH_B})
    config = {"seed": 7}
    base = pair_key(current, prior, registration_config=config, model_version="1.0")

    assert pair_key(prior, current, registration_config=config, model_version="1.0") != base
    assert pair_key(current, prior, registration_config={"seed": 8}, model_version="1.0") != base
    assert pair_key(current, prior, registration_config=config, model_version="1.1") != base


def test_canonical_json_rejects_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
