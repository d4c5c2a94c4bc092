"""Reading a number out of a model's answer, and deciding whether it is right (docs/algorithm.md §1, §2 step 3).

The student decodes `<eot> + P + A` with P the answer prefix `The answer is:`; the number
that follows the prefix is the prediction. Gold answers are floats (GSM8k's `#### 2,125`,
GSM-Hard's `-9867630.0` or `12.333333333333334`, SVAMP's `145.0`).

Numbers are read with the grammar of `kava.numbers` (`parse_number`, `numbers_in`).
"""

from __future__ import annotations

import bisect
import math
import re
from decimal import Decimal, InvalidOperation

from kava.numbers import normalize, numbers_in

ANSWER_PREFIX = "The answer is:"

_GSM8K_MARKER = "####"


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
    text = normalize(text)
    if not isinstance(prefix, str):
        prefix = ""
    starts: list[int] = []
    if prefix.strip(" :"):
        starts = [m.end() for m in _prefix_regex(prefix).finditer(text)]
    if not starts and _GSM8K_MARKER in text:
        starts = [m.end() for m in re.finditer(re.escape(_GSM8K_MARKER), text)]
    numbers = numbers_in(text)
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
