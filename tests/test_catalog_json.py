"""JSON columns of the catalog: the orjson serializer and the non-finite number check."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from priors.catalog.models import CatalogJSON, _finite, dump_json

# Values orjson rejects, which the standard encoder writes.
FALLBACK_VALUES = [
    {1: "integer key"},
    {"count": 2**70},
    {"text": "lone surrogate \ud800"},
    {"score": np.float64(0.25)},
]
# Values orjson writes; the text may differ from the standard encoder's (UTF-8 in
# place of \u escapes, no spaces) but must read back the same.
ORJSON_VALUES = [
    {"name": "H\u00f4pital", "nul": "a\x00b", "empty": ""},
    {"position": (1.5, -2.0, 1e-05), "spacing": [0.5, 0.5], "flag": True, "none": None},
    [["issuer", "id"], []],
    {"nested": {"deeper": [1, 2.5, "x"]}},
]


@pytest.mark.parametrize("value", FALLBACK_VALUES + ORJSON_VALUES)
def test_dump_json_reads_back_as_standard(value: object) -> None:
    assert json.loads(dump_json(value)) == json.loads(json.dumps(value))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"thickness": math.nan, "rows": 4}, {"thickness": None, "rows": 4}),
        ({"position": (math.inf, 0.0, 0.0)}, {"position": None}),
        ({"position": [1.0, 2.0, 3.0]}, {"position": [1.0, 2.0, 3.0]}),
        ({"outer": {"inner": [0.0, -math.inf]}}, {"outer": {"inner": None}}),
        ([[1.0, math.nan], [2.0]], [None, [2.0]]),
        ({"score": np.float64(math.inf)}, {"score": None}),
        (math.nan, None),
        ("NaN", "NaN"),
    ],
)
def test_finite_replaces_non_finite(value: object, expected: object) -> None:
    assert _finite(value) == expected


def test_finite_values_pass_unchanged() -> None:
    # The check returns a finite value as it is, without copying it.
    value = {"position": (1.0, 2.0, 3.0), "name": "x", "count": 3, "flag": False}

    assert _finite(value) is value


def test_json_column_stores_nan_as_null() -> None:
    column = CatalogJSON()

    assert column.process_bind_param({"a": [math.nan, 1.0], "b": math.inf}, None) == {
        "a": None, "b": None
    }
