"""Command-line number types of the jobs."""

from __future__ import annotations

import argparse

import pytest

from priors.argtypes import non_negative_int, positive_float, positive_int


@pytest.mark.parametrize(("parse", "text", "expected"), [
    (positive_int, "3", 3),
    (non_negative_int, "0", 0),
    (positive_float, "0.25", 0.25),
])
def test_accepts_valid_numbers(parse, text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(("parse", "text", "message"), [
    (positive_int, "0", "not a positive whole number"),
    (positive_int, "2.5", "invalid whole number"),
    (non_negative_int, "-1", "is negative"),
    (positive_float, "-0.5", "not a positive finite number"),
    (positive_float, "nan", "not a positive finite number"),
    (positive_float, "inf", "not a positive finite number"),
    (positive_float, "ten", "invalid number"),
])
def test_rejects_invalid_numbers(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)
