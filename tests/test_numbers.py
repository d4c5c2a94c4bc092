"""kava.numbers: the one number grammar (gold answers, training answers, model outputs)."""

from __future__ import annotations

import pytest

from kava.numbers import normalize, numbers_in, parse_number

PARSE_CASES = [
    ("1,234", 1234.0),
    ("1,234,567", 1234567.0),
    ("$18", 18.0),
    ("€5", 5.0),
    ("25%", 25.0),
    ("-3", -3.0),
    ("\u22123", -3.0),
    (".5", 0.5),
    ("3.", 3.0),
    ("72.", 72.0),
    ("1.5e6", 1.5e6),
    ("2E-3", 0.002),
    ("3/4", 0.75),
    ("  12.5  ", 12.5),
    (145.0, 145.0),
    (39, 39.0),
    ("72 apples", None),
    ("9 (apples)", None),
    ("3:4", None),
    ("", None),
    ("nan", None),
    ("inf", None),
    (float("nan"), None),
    (float("inf"), None),
    (True, None),
    (None, None),
    ([1], None),
]


@pytest.mark.parametrize("value, expected", PARSE_CASES)
def test_parse_number(value, expected):
    assert parse_number(value) == expected


NUMBERS_IN_CASES = [
    ("She has 3 apples and 1,250 pears.", [(8, 3.0), (21, 1250.0)]),
    ("5-3 is 2.", [(0, 5.0), (2, 3.0), (7, 2.0)]),  # a sign glued to a digit is an operator
    ("x2 COVID19 3.5.2", [(11, 3.5)]),  # glued to a letter, a digit or a period: not read
    ("\u22124 and 1 1/2", [(0, -4.0), (7, 1.5)]),  # unicode minus; a mixed number
    ("12,34 and 7/0", [(0, 12.0), (3, 34.0)]),  # commas group three digits; x/0 is no number
    ("1e999 or 25%", [(9, 25.0)]),  # overflow is no number
    ("no digits", []),
]


@pytest.mark.parametrize("text, expected", NUMBERS_IN_CASES)
def test_numbers_in(text, expected):
    assert numbers_in(text) == expected


def test_normalize_keeps_offsets():
    text = "a\u2212b\u00a0c\ufe63d\uff0de\u202ff"
    assert normalize(text) == "a-b c-d-e f" and len(normalize(text)) == len(text)
