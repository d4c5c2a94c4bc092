"""Reading a number out of a model's answer, and deciding whether it is right (docs/algorithm.md §1, §2 step 3).

The student decodes `<eot> + P + A` with P the answer prefix `The answer is:`; the number
that follows the prefix is the prediction. Gold answers are floats (GSM8k's `#### 2,125`,
GSM-Hard's `-9867630.0` or `12.333333333333334`, SVAMP's `145.0`).

What counts as a number (`parse_number`, and every number `extract_answer` finds in text):
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

import bisect
import math
import re
from decimal import Decimal, InvalidOperation

ANSWER_PREFIX = "The answer is:"

_GSM8K_MARKER = "####"

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


def _numbers(text: str) -> list[tuple[int, float]]:
    """Every number in `text` as (start offset, value), in order."""
    out = []
    for m in _NUMBER_RE.finditer(text):
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
    number makes it no number: `"72 apples"` → None (use `extract_answer` for free text).
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
    t = s.translate(_CHAR_MAP).strip()
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


def _prefix_regex(prefix: str) -> re.Pattern:
    """Case-insensitive, any run of whitespace for a space, and a trailing colon optional."""
    core = prefix.strip()
    colon = core.endswith(":")
    core = core.rstrip(":").strip()
    pattern = r"\s+".join(re.escape(w) for w in core.split())
    if colon:
        pattern += r"\s*:?"
    return re.compile(pattern, re.IGNORECASE)


def extract_answer(text: str, prefix: str = ANSWER_PREFIX) -> float | None:
    """The predicted number in a model's output, or None when there is none.

    Rules, in order:
    1. Where `prefix` occurs (case-insensitive, any whitespace, its trailing colon optional,
       so `The answer is 72` counts), the answer is the first number after its LAST
       occurrence: a model that repeats the prefix has restated or corrected its answer.
       If no number follows the last occurrence, the first number after the latest
       occurrence that has one is used (`The answer is: 5 The answer is:` → 5). Numbers
       before every occurrence are working, not the answer: none after any occurrence → None.
    2. Otherwise, where GSM8k's `####` occurs, the first number after its last occurrence.
    3. Otherwise the last number in the text.
    `text` that is not a string gives None; no input raises.
    """
    if not isinstance(text, str):
        return None
    text = text.translate(_CHAR_MAP)
    if not isinstance(prefix, str):
        prefix = ""
    starts: list[int] = []
    if prefix.strip(" :"):
        starts = [m.end() for m in _prefix_regex(prefix).finditer(text)]
    if not starts and _GSM8K_MARKER in text:
        starts = [m.end() for m in re.finditer(re.escape(_GSM8K_MARKER), text)]
    numbers = _numbers(text)
    if starts:
        offsets = [offset for offset, _ in numbers]
        for start in reversed(starts):
            k = bisect.bisect_left(offsets, start)
            if k < len(numbers):
                return numbers[k][1]
        return None
    return numbers[-1][1] if numbers else None


def _decimals(x: float) -> int:
    """Digits after the decimal point in the shortest representation of `x` (12.33 → 2)."""
    try:
        exponent = Decimal(repr(x)).normalize().as_tuple().exponent
    except InvalidOperation:
        return 0
    return max(0, -exponent) if isinstance(exponent, int) else 0


def is_correct(
    pred: float | None,
    gold: float,
    rel_tol: float = 1e-14,
    abs_tol: float = 1e-9,
    *,
    min_rounded_decimals: int | None = 2,
) -> bool:
    """Whether the predicted number answers a question whose gold answer is `gold`.

    - None, NaN and infinities are never correct.
    - Equal values are correct.
    - When gold and prediction are both integers they must be equal: no tolerance. GSM-Hard
      has 664 integer answers of 10,000 or more (up to 9.3e12), where a relative tolerance
      of 1e-4 would accept an answer that is off by one (or by millions).
    - Otherwise `math.isclose(pred, gold, rel_tol, abs_tol)`. The defaults only absorb
      floating-point noise in golds computed by Python (3244047.0999999996 vs 3244047.1,
      55938720.00000001 vs 55938720: GSM-Hard's noisy golds are one float64 ulp, ~2e-16,
      off; 1e-14 is ~50 ulps yet still rejects 9284017268534 for 9284017268534.4). The
      absolute tolerance is small because GSM-Hard has answers as small as 3.5e-07, where
      an absolute tolerance of 1e-6 would accept 0.
    - A rounded prediction of a non-integer gold is correct when it is the gold correctly
      rounded (either way on a tie) to the decimals the prediction has, it has at least
      `min_rounded_decimals` of them (None turns this rule off), and it is within 1% of
      gold: 12.33 (and 12.333) for 12.333333333333334, but not 12.3 or 12; 3.5e-07 for
      3.509e-07, but not 0.0 or 0.002 for 0.0016791648.
    """
    if pred is None or isinstance(pred, bool):
        return False
    try:
        pred = float(pred)
        gold = float(gold)
    except (TypeError, ValueError, OverflowError):
        return False
    if not (math.isfinite(pred) and math.isfinite(gold)):
        return False
    if pred == gold:
        return True
    if pred.is_integer() and gold.is_integer():
        return False
    if math.isclose(pred, gold, rel_tol=rel_tol, abs_tol=abs_tol):
        return True
    if min_rounded_decimals is None or gold.is_integer():
        return False
    k = _decimals(pred)
    if k < min_rounded_decimals:
        return False
    err = abs(pred - gold)
    half_unit = 0.5 * 10.0 ** (-k)
    return err <= half_unit * (1 + 1e-9) + 1e-12 * abs(gold) and err <= 0.01 * abs(gold)
