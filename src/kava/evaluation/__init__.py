"""Evaluation: reading the predicted number and scoring it (docs/algorithm.md §1, §2)."""

from kava.evaluation.answer import ANSWER_PREFIX, extract_answer, is_correct
from kava.numbers import parse_number

__all__ = ["ANSWER_PREFIX", "extract_answer", "is_correct", "parse_number"]
