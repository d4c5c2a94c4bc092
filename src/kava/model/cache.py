"""All access to transformers' KV caches lives here (SPEC.md §8: keep cache access in one place).

transformers 5.x stores a `DynamicCache` as a list of layers, each holding `keys` and
`values` of shape [B, H_kv, S, D] (after RoPE). The rest of kava only sees plain
per-layer (keys, values) tuples and these few functions, so a change in the cache
classes touches this file alone.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

KV = list[tuple[torch.Tensor, torch.Tensor]]


def new_cache(config) -> DynamicCache:
    return DynamicCache(config=config)


def cache_from_kv(kv: KV, config) -> DynamicCache:
    """A fresh cache holding the given per-layer (keys, values); the tensors are shared, not copied."""
    return DynamicCache(ddp_cache_data=list(kv), config=config)


def kv_of(cache: DynamicCache) -> KV:
    """Per-layer (keys, values), each [B, H_kv, S, D]."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def slice_kv(kv: KV, start: int, end: int | None = None) -> KV:
    """Positions [start:end) of every layer."""
    return [(k[:, :, start:end], v[:, :, start:end]) for k, v in kv]


def seq_length(cache: DynamicCache) -> int:
    return cache.get_seq_length()


def select_batch(cache: DynamicCache, indices: torch.Tensor) -> None:
    """Keep only the examples `indices` (in place); used to stop decoding finished examples."""
    for layer in cache.layers:
        layer.batch_select_indices(indices)
