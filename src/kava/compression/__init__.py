"""Compression of the teacher's CoT key/value cache (docs/algorithm.md §4)."""

from kava.compression.rkv import (
    COMPRESSION_METHODS,
    RKVSelection,
    importance_from_attn,
    redundancy_scores,
    rkv_scores,
    rkv_select,
    select_from_scores,
)

__all__ = [
    "COMPRESSION_METHODS",
    "RKVSelection",
    "importance_from_attn",
    "redundancy_scores",
    "rkv_scores",
    "rkv_select",
    "select_from_scores",
]
