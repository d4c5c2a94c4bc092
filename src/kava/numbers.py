"""Numbers in text: one grammar for gold answers, training answers and model outputs.

What counts as a number (`parse_number`, and every number `numbers_in` finds in text;
`kava.evaluation.answer.extract_answer` reads predictions with it):
- ASCII digits with an optional sign `-`/`+` (the unicode minus `−` counts as `-`);
  a sign glued to a preceding letter or digit is an operator, not a sign (`5-3` is 5 and 3);
- thousands commas in groups of exactly three (`1,234,567`; `12,34` is two numbers);
- decimals `3.5`, `.5`, `3.` and scientific notation `1.5e6`, `2E-3`;
- a period followed by a non-digit ends a sentence, not a number (`72.` is 72);
- a currency symbol before the number (`$18`, `€5`, `-$5`, `$-5`);
- a percent sign after it counts as the number itself (`25%` is 25, as in GSM8k's gold answers);
- fractions `3/4` (0.75) and mixed numbers `1 1/2` (1.5); a fraction over zero is no number;
- a number glued to a preceding letter, digit or period is not read (`x2`, `COVID19`, and
  the `.2` in the version `3.5.2`); values that overflow to infinity are not numbers.
European decimal commas (`3,5`) and space-separated thousands (`1 234`) are not supported.
"""

from __future__ import annotations

import math
import re

# One-to-one character replacements, applied before matching (so offsets do not move).
_CHAR_MAP = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-", "\u00a0": " ", "\u202f": " "})

_NUMBER_RE = re.compile(
    r"""
    (?<![A-Za-z0-9_.])                       # not glued to a word, a digit or a decimal point
    (?P<sign>[-+])?
    (?:[$€£¥₹]\s?)?                          # currency symbol
    (?P<sign2>[-+])?                         # "$-5"
    (?:
        (?P<whole>[0-9]+)\ (?P<mnum>[0-9]+)/(?P<mden>[0-9]+)(?![0-9/])   # mixed number 1 1/2
      | (?P<fnum>[0-9]+)/(?P<fden>[0-9]+)(?![0-9/])                       # fraction 3/4
      | (?P<dec>
            [0-9]{1,3}(?:,[0-9]{3})+(?![0-9])(?:\.[0-9]+)?               # 1,234,567.5
          | [0-9]+(?:\.[0-9]*)?                                          # 3, 3.5, 3.
          | \.[0-9]+                                                     # .5
        )
        (?P<exp>[eE][-+]?[0-9]+)?
    )
    (?:\s?%)?
    """,
    re.VERBOSE,
)


def _value(m: re.Match) -> float | None:
    """The value of one number match; None where it is no finite number (x/0, overflow)."""
    negative = "-" in ((m.group("sign") or "") + (m.group("sign2") or ""))
    if m.group("dec") is not None:
        value = float(m.group("dec").replace(",", "") + (m.group("exp") or ""))
    elif m.group("fnum") is not None:
        den = int(m.group("fden"))
        if den == 0:
            return None
        value = int(m.group("fnum")) / den
    else:
        den = int(m.group("mden"))
        if den == 0:
            return None
        value = int(m.group("whole")) + int(m.group("mnum")) / den
    if not math.isfinite(value):
        return None
    return -value if negative else value


def normalize(text: str) -> str:
    """`text` with the unicode minus signs as `-` and non-breaking spaces as spaces (one character
    for one, so offsets do not move)."""
    return text.translate(_CHAR_MAP)


def numbers_in(text: str) -> list[tuple[int, float]]:
    """Every number in `text` as (start offset, value), in order (`text` as `normalize` leaves it:
    the replacements are one character for one, so the offsets hold in either)."""
    out = []
    for m in _NUMBER_RE.finditer(normalize(text)):
        try:
            v = _value(m)
        except (ValueError, OverflowError):
            v = None
        if v is not None:
            out.append((m.start(), v))
    return out


def parse_number(s) -> float | None:
    """The number that the whole of `s` denotes, or None.

    `s` may be an int or float (returned as a float when finite; bools are not numbers) or a
    string that is exactly one number in the grammar of this module, with surrounding
    whitespace and one trailing period allowed: `"1,234"` → 1234.0, `"$18"` → 18.0,
    `"25%"` → 25.0, `"-3"` / `"−3"` → -3.0, `"3/4"` → 0.75, `"72."` → 72.0. Text around the
    number makes it no number: `"72 apples"` → None (`numbers_in` reads free text).
    """
    if isinstance(s, bool):
        return None
    if isinstance(s, (int, float)):
        try:
            v = float(s)
        except OverflowError:
            return None
        return v if math.isfinite(v) else None
    if not isinstance(s, str):
        return None
    t = normalize(s).strip()
    if t.endswith(".") and not t.endswith(".."):
        stripped = t[:-1].rstrip()
        # "3." is a number by itself; only drop the period when what is left still parses.
        if stripped and _NUMBER_RE.fullmatch(stripped):
            t = stripped
    m = _NUMBER_RE.fullmatch(t)
    if m is None:
        return None
    try:
        return _value(m)
    except (ValueError, OverflowError):
        return None
